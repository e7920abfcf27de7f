"""The adaptive report at the smoke scale on the three smoke models of the ``table`` fixture: every
member and the ensemble for each model and targeting, R-PGD at Table 3's worst beta, the ensemble at
least every member on the same images, the answer sentence, and a rewrite from the result files."""
import pandas as pd

from lit_caps.experiments.adaptive import MEMBERS, adaptive, worst_beta


def test_adaptive_report_at_smoke_scale(table, data_root, tmp_path):
    _, kw = table
    out = tmp_path / "results"
    frames = adaptive(("mnist",), "smoke", runs_root=kw["runs_root"], out_dir=out, report_dir=kw["report_dir"],
                      data_root=str(data_root))
    df = frames["mnist"]
    assert set(df["status"]) == {"complete"}
    for m in ("capsnet", "cnn_cr", "cnn_r"):
        for t in (True, False):
            sub = df[(df.model == m) & (df.targeted == t)]
            assert list(sub.attack) == [label for label, _, _ in MEMBERS] + ["Ensemble (per-example worst case)"]
            ens = sub.iloc[-1]
            assert ens.undetected_pct >= sub.undetected_pct.iloc[:-1].max()
            assert ens.success_pct >= sub.success_pct.iloc[:-1].max()
            assert sub.iloc[0].beta == worst_beta(kw["report_dir"], "smoke", "mnist", m, t)
    text = (kw["report_dir"] / "adaptive_mnist_smoke.md").read_text()
    assert "**Does CapsNet keep the lowest undetected rate?** targeted: " in text and "not answered" not in text
    assert (kw["report_dir"] / "figures" / "adaptive_mnist_targeted_smoke.png").is_file()
    # the loss of every new attack is part of its result's identity (and name, when not the paper's)
    assert sum(1 for p in (out / "smoke" / "mnist" / "capsnet").glob("apgd_joint-*-cw.json")) == 2
    again = adaptive(("mnist",), "smoke", runs_root=kw["runs_root"], out_dir=out, report_dir=kw["report_dir"],
                     data_root=str(data_root), only_report=True)["mnist"]
    pd.testing.assert_frame_equal(again.drop(columns=["wall_time_s"]), df.drop(columns=["wall_time_s"]))
