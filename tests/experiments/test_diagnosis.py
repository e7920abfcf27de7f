"""Fig. 4 (lit_caps.experiments.fig4) and the galleries (lit_caps.experiments.galleries) at the smoke scale."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .conftest import worst_rows


def test_class_pairs_and_galleries_smoke(table):
    from lit_caps.experiments.fig4 import class_pairs
    from lit_caps.experiments.galleries import galleries

    df, kw = table
    common = dict(runs_root=kw["runs_root"], out_dir=kw["out_dir"], report_dir=kw["report_dir"],
                  data_root=kw["data_root"], wandb_log=False)
    f4 = class_pairs("mnist", "smoke", **common)
    assert list(f4["model"]) == ["capsnet", "cnn_cr", "cnn_r"] and (f4["pairs"] == 90).all()
    for r in f4.itertuples():  # a rank correlation, undefined only when a smoke model's pair rates do not vary
        rates = set(json.loads(r.pairs_table).values())
        assert -1 <= r.spearman_success_vs_confusion <= 1 or (np.isnan(r.spearman_success_vs_confusion) and len(rates) == 1)
    # the worst-case beta comes from Table 3's smoke results of the same model
    w = worst_rows(df)
    for r in f4.itertuples():
        assert r.beta == w[(w["dataset"] == "mnist") & (w["model"] == r.model) & w["targeted"]]["beta"].iloc[0]
    res = Path(f4["result"].iloc[0])
    before = res.stat().st_mtime_ns
    f4b = class_pairs("mnist", "smoke", **common)  # reused, same numbers
    assert res.stat().st_mtime_ns == before and f4b["pairs_table"].tolist() == f4["pairs_table"].tolist()
    g = galleries("mnist", "smoke", **common)
    assert (g["candidates"] == 20).all() and (g["shown"] <= g["success_and_undetected"]).all()
    for name in ("fig4_class_pairs_mnist_smoke.png", "fig5_gallery_mnist_smoke.png",
                 "fig10_reconstructions_mnist_smoke.png"):
        assert (Path(kw["report_dir"]) / "figures" / name).stat().st_size > 3000
