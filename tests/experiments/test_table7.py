"""Table 7 (lit_caps.experiments.table7): black box from a seed-1 substitute, at the smoke scale."""
from __future__ import annotations

import pytest

from lit_caps.experiments.table7 import table7
from lit_caps.reporting.paper import paper_table
from lit_caps.runs import RunNotFoundError, find_run

from .conftest import MODEL


def test_table7_black_box(runs, dirs):
    from lit_caps.evaluation import load_result

    out, rep = dirs
    df = table7("mnist", "smoke", runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,))
    assert (rep / "table7_mnist_smoke.md").is_file() and (rep / "table7_mnist_smoke.csv").is_file()
    cells = df[df["row_kind"] == "cell"]
    assert len(cells) == 4 and (cells["status"] == "complete").all()  # PGD, R-PGD beta 0.5; targeted or not
    src = find_run(runs, "mnist", MODEL, seed=1)
    paper = paper_table("table7_blackbox_mnist").set_index(["model", "attack", "targeted"])
    for r in df[df["row_kind"] != "cell"].to_dict("records"):
        ref = paper.loc[(MODEL, r["attack"], r["targeted"])]
        assert (r["paper_success_pct"], r["paper_undetected_pct"]) == (ref["success_rate"], ref["undetected_rate"])
        assert r["source_checkpoint"] == src["checkpoint"] and r["source_seed"] == 1
        res = load_result(r["result"])
        assert res["name"].endswith("-bb" + r["source_model_hash"][:8])
        assert res["settings"]["source_model_hash"] == r["source_model_hash"] != res["settings"]["model_hash"]
        assert res["settings"]["checkpoint"] == find_run(runs, "mnist", MODEL)["checkpoint"]
    with pytest.raises(RunNotFoundError, match="lit-caps fit --model cnn_cr --data mnist --seed 7"):
        table7("mnist", "smoke", runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,), source_seed=7)
