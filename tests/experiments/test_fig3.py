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
    assert "**Partial.**" not in md and "## The paper's claims, measured" in md
    assert f"**Compute** (device: cpu): {len(df)} cells, " in md and "training the 4 models: " in md
    # only_report computes nothing: the same rows from the stored cells; a missing cell makes its search
    # partial (its pending beta named) instead of being recomputed
    kw = dict(runs_root=tmp_path / "runs", out_dir=tmp_path / "results", data_root=str(data_root), wandb_log=False,
              train_overrides=("logger.wandb=false", "progress_bar=false", "train.limit_train_batches=2",
                               "arch.conv_channels=16", "arch.primary_types=2", "arch.decoder_hidden=[64,64]"))
    again = fig3("smoke", report_dir=tmp_path / "again", only_report=True, **kw)
    key = ["box", "variant", "beta", "undetected_pct", "success_pct", "worst"]
    assert again[key].equals(df[key])
    gone = df[(df["variant"] == "capsnet_all") & (df["beta"] == 0.0)].iloc[0]
    Path(gone["result"]).unlink()
    part = fig3("smoke", report_dir=tmp_path / "part", only_report=True, **kw)
    assert len(part) == len(df) - 1 and not Path(gone["result"]).exists()
    assert not part[part["variant"] == "capsnet_all"]["search_complete"].any()
    md = (tmp_path / "part" / "fig3_cifar10_smoke.md").read_text()
    assert "white-box CapsNet All (pending grid beta 0, then 1 refinement level(s))" in md


def _row(box, variant, beta, success, undetected, *, worst=False, auc=0.8, complete=True, half=3.0):
    """A fig3 report row with Wilson-like intervals of +- ``half`` points."""
    return {"box": box, "variant": variant, "beta": beta, "worst": worst, "search_complete": complete,
            "roc_auc": auc, "success_pct": success, "success_ci_lo": success - half, "success_ci_hi": success + half,
            "undetected_pct": undetected, "undetected_ci_lo": undetected - half,
            "undetected_ci_hi": undetected + half, "status": "complete"}


def test_fig3_claims_verdicts_follow_the_numbers():
    """Each claim's verdict is computed from the rows: disjoint CIs decide, overlapping ones do not."""
    from lit_caps.experiments.fig3 import claims

    rows = [_row("white", "capsnet", 1.0, 95, 40, auc=0.95), _row("white", "capsnet", 0.5, 80, 60, worst=True),
            _row("white", "capsnet_all", 1.0, 95, 50, auc=0.92), _row("white", "capsnet_all", 0.5, 85, 80, worst=True),
            _row("white", "capsnet_winner", 1.0, 95, 45, auc=0.91),
            _row("white", "capsnet_winner", 0.5, 85, 70, worst=True, complete=False),
            _row("black", "capsnet", 0.5, 20, 10, worst=True)]
    text = "\n".join(claims(rows))
    assert "clean from adversarial CIFAR-10 inputs* (ROC-AUC" in text and "): holds." in text
    assert "black box 10.0 [7.0, 13.0] (beta 0.5) vs white box 60.0 [57.0, 63.0]" in text and "-50.0 points" in text
    assert "less undetected than white-box on CapsNet*: holds" in text
    assert "CapsNet 60.0 [57.0, 63.0] < DeepCaps-style 70.0 [67.0, 73.0] (search partial) < CapsNet All 80.0" in text
    assert "Paper's order reproduced: yes" in text
    assert "success 80.0 [77.0, 83.0] vs 95.0 [92.0, 98.0], lower: holds; undetected 60.0 [57.0, 63.0] vs " \
           "40.0 [37.0, 43.0], higher: holds" in text
    # the reverse, and an overlap
    rows = [_row("white", "capsnet", 1.0, 95, 40, auc=0.55), _row("white", "capsnet", 0.5, 80, 60, worst=True),
            _row("white", "capsnet_all", 1.0, 95, 50, auc=0.95), _row("white", "capsnet_all", 0.5, 85, 58, worst=True),
            _row("white", "capsnet_winner", 1.0, 95, 45), _row("white", "capsnet_winner", 0.5, 85, 50, worst=True),
            _row("black", "capsnet", 0.5, 80, 70, worst=True)]
    text = "\n".join(claims(rows))
    assert "): does not hold (AUC < 0.7 for some variant)." in text
    assert "on CapsNet*: does not hold (the reverse, outside the 95% CIs)" in text
    assert "CapsNet below CapsNet All: not resolved (95% CIs overlap; the point estimates disagree)." in text
    assert "CapsNet below DeepCaps-style: does not hold (the reverse, outside the 95% CIs)." in text
    assert "paired test" not in text  # no per-example outcomes given
    assert "Paper's order reproduced: no" in text
    # nothing measured yet: every claim says pending
    assert all("pending" in line for line in claims([]))


def test_fig3_claims_paired_test_on_the_same_images():
    """With the cells' per-example outcomes, each comparison adds the exact McNemar test: it resolves
    a difference the overlapping intervals cannot, and refuses cells of different images or targets."""
    from lit_caps.experiments.fig3 import claims

    rows = [_row("white", "capsnet", 1.0, 95, 40), _row("white", "capsnet", 0.5, 80, 50, worst=True),
            _row("white", "capsnet_all", 1.0, 95, 50), _row("white", "capsnet_all", 0.5, 85, 55, worst=True),
            _row("white", "capsnet_winner", 1.0, 95, 45), _row("white", "capsnet_winner", 0.5, 85, 51, worst=True),
            _row("black", "capsnet", 0.5, 20, 10, worst=True)]

    def ex(n_undetected, targets=None):
        return {"index": list(range(100)), "target": targets or [i % 10 for i in range(100)],
                "undetected": [i < n_undetected for i in range(100)], "success": [i < 80 for i in range(100)]}

    outcomes = {("white", "capsnet", 0.5): ex(50), ("white", "capsnet_all", 0.5): ex(62),
                ("white", "capsnet_winner", 0.5): ex(51, [0] * 100)}
    text = "\n".join(claims(rows, outcomes=outcomes))
    # 12 images undetected only under CapsNet All, none only under CapsNet: p = 2 / 2**12
    assert ("CapsNet below CapsNet All: not resolved (95% CIs overlap; the point estimates agree); paired test (the "
            "same 100 images, exact McNemar): undetected under CapsNet All only 12, under CapsNet only 0, "
            "p = 0.00049: holds.") in text
    assert ("CapsNet below DeepCaps-style: not resolved (95% CIs overlap; the point estimates agree); paired test: "
            "not applicable (different images or targets).") in text
    # cells without outcomes (the black box, beta 1) keep only the intervals' verdict
    assert "-40.0 points." in text and text.count("paired test") == 2
