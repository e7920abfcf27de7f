"""What a Table 3 run costs: its cells at a scale, and their time from measured attack throughput.

A Table 3 cell is one (dataset, model, targeting, beta) R-PGD attack of N test images for the
dataset's iterations (Appendix C: 1000 / 500 / 200 on MNIST / Fashion-MNIST / SVHN). Its cost is
N x iterations image-iterations; at a throughput of r image-iterations per second (measured by
``make bench`` or in a cell's wall time) it takes N x iterations / r seconds. The betas per
(dataset, model, targeting) are the scale's grid plus up to two per refinement level (Table 3's
search, :mod:`lit_caps.experiments.search`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .attacks import ITERATIONS
from .config import scale_section

MODELS = ("capsnet", "cnn_cr", "cnn_r")


@dataclass(frozen=True)
class CellGroup:
    """The cells of one (dataset, model, targeting): ``betas`` attacks of ``n`` images x ``steps``."""

    dataset: str
    model: str
    targeted: bool
    betas: int
    n: int
    steps: int

    @property
    def image_iterations(self) -> int:
        return self.betas * self.n * self.steps


def table3_groups(scale: str = "paper", datasets=("mnist", "fashion_mnist", "svhn"), *, n: int | None = None,
                  steps: int | None = None, betas: int | None = None, models=MODELS) -> list[CellGroup]:
    """Table 3's cells at ``scale`` (``n``, ``steps`` (MNIST's; the others scaled as Appendix C) and
    ``betas`` per group replace the scale's when given)."""
    sc = scale_section(scale, "table3")
    n_betas = betas if betas is not None else len(sc["betas"]) + 2 * int(sc.get("refine", 0))
    out = []
    for d in datasets:
        full = ITERATIONS[d]
        it = full if sc.get("steps") is None else min(int(sc["steps"]), full)
        if steps is not None:  # the same fraction of Appendix C's count on every dataset
            it = max(1, round(full * steps / ITERATIONS["mnist"]))
        for m in models:
            for t in (True, False):
                out.append(CellGroup(d, m, t, n_betas, n if n is not None else int(sc["n"]), it))
    return out


def projected_seconds(groups: list[CellGroup], rate: Callable[[str, str], float], devices: int = 1) -> float:
    """Seconds for ``groups`` at ``rate(dataset, model)`` image-iterations/s per device, the cells'
    chunks dealt evenly to ``devices`` (evaluation's rank split, or one sweep agent per GPU)."""
    return sum(g.image_iterations / rate(g.dataset, g.model) for g in groups) / devices

