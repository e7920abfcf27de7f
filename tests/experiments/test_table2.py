"""Table 2 (lit_caps.experiments.table2): corrupted MNIST at the smoke scale, on Table 3's smoke models."""
from __future__ import annotations

from pathlib import Path


def test_table2_smoke(table):
    from lit_caps.data.corruptions import PAPER_CORRUPTIONS, PUBLIC_CORRUPTIONS
    from lit_caps.experiments.table2 import table2

    df, kw = table
    t2 = table2("smoke", runs_root=kw["runs_root"], report_dir=kw["report_dir"], data_root=kw["data_root"],
                wandb_log=False)
    cs = {"clean"} | set(PAPER_CORRUPTIONS) | set(PUBLIC_CORRUPTIONS)
    assert set(t2["corruption"]) == cs and len(t2) == 3 * len(cs) and (t2["n"] == 100).all()
    assert (t2["undetected_pct"] <= t2["error_pct"]).all() and t2["flagged_pct"].between(0, 100).all()
    clean = t2[(t2["corruption"] == "clean") & (t2["model"] == "capsnet")].iloc[0]
    assert (clean["paper_error_pct"], clean["paper_undetected_pct"]) == (0.6, 0.2)
    assert t2[t2["corruption"] == "stripe"]["paper_error_pct"].isna().all()  # public-only: no paper value
    md = (Path(kw["report_dir"]) / "table2_smoke.md").read_text()
    assert "The paper's 17 corruptions" in md and "public MNIST-C 15" in md
    for which in ("paper17", "public15"):
        assert (Path(kw["report_dir"]) / "figures" / f"fig7_mnist_c_{which}_smoke.png").stat().st_size > 5000
