"""Fig. 3 (lit_caps.experiments.fig3): CIFAR-10 variants at the smoke scale."""
from __future__ import annotations

from pathlib import Path

import pytest


def test_fig3_cifar10_smoke(data_root, tmp_path):
    """CIFAR-10 from the PNG test split (8k/2k split), three variants + a seed-1 source, smoke scale."""
    import torch

    from lit_caps.experiments.fig3 import fig3

    if not (Path(data_root) / "CIFAR10_png").exists() and not (Path(data_root) / "cifar-10-batches-py").exists():
        pytest.skip("no CIFAR-10 under the data root")
    torch.set_num_threads(1)
    df = fig3("smoke", runs_root=tmp_path / "runs", out_dir=tmp_path / "results", report_dir=tmp_path / "reports",
              data_root=str(data_root), wandb_log=False,
              train_overrides=("logger.wandb=false", "progress_bar=false", "train.limit_train_batches=2",
                               "arch.conv_channels=16", "arch.primary_types=2", "arch.decoder_hidden=[64,64]"))
    assert set(df["variant"]) == {"capsnet", "capsnet_all", "capsnet_winner"}
    # smoke searches beta over the grid {0, 1} then one bisection level around the worst: three betas per
    # (box, variant), the third at 0.5, and exactly one worst row each
    for (box, v), g in df.groupby(["box", "variant"]):
        assert sorted(g["beta"]) == [0.0, 0.5, 1.0], (box, v)
        assert g["worst"].sum() == 1
        w = g[g["worst"]].iloc[0]
        assert w["undetected_pct"] == g["undetected_pct"].max()
    assert set(df[df["box"] == "black"]["variant"]) == {"capsnet"}
    assert (df["n"] == 10).all() and df["success_pct"].notna().all()
    assert (df["test_size"] == 2000).all()
    assert (tmp_path / "reports" / "figures" / "fig3_cifar10_smoke.png").stat().st_size > 3000
    md = (tmp_path / "reports" / "fig3_cifar10_smoke.md").read_text()
    assert "92.2%" in md and "white-box CapsNet: " in md and "+- 0.5" in md
