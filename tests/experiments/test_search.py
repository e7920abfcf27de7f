"""The beta search of Table 3 (lit_caps.experiments.search)."""
from __future__ import annotations

import pytest

from lit_caps.experiments.cells import Cell
from lit_caps.experiments.search import Search, grid_step


def test_search_resolution_and_refinement_order():
    s = Search("mnist", "capsnet", "r_pgd", True)
    for b, u in ((0.4, 0.2), (0.5, 0.6), (0.6, 0.3), (0.55, 0.5)):
        c = Cell("capsnet", "r_pgd", True, b)
        c.result = {"status": "complete", "summary": {"undetected_rate": u, "success_rate": u, "best_undetected_rate": u}}
        s.cells[b] = c
    assert s.worst.beta == 0.5 and s.resolution() == pytest.approx(0.1)
    assert grid_step((0, 0.1, 0.2)) == pytest.approx(0.1)
