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
            assert list(sub.attack) == [label for label, _, _ in MEMBERS] + ["APGD joint (2 iterations)",
                                                                              "Ensemble (per-example worst case)"]
            ens = sub.iloc[-1]
            assert ens.undetected_pct >= sub.undetected_pct.iloc[:-1].max()
            assert ens.success_pct >= sub.success_pct.iloc[:-1].max()
            assert sub.iloc[0].beta == worst_beta(kw["report_dir"], "smoke", "mnist", m, t)
    text = (kw["report_dir"] / "adaptive_mnist_smoke.md").read_text()
    assert "**Does CapsNet keep the lowest undetected rate?** targeted: " in text and "not answered" not in text
    # and the paired test of CapsNet against the lowest other model, on the ensembles' per-example outcomes
    n = int(df[df.attack.str.startswith("Ensemble")].n.iloc[0])
    assert text.count(f"paired test (the same {n} images, exact McNemar): undetected (best iterate) under CNN+") == 2
    assert (kw["report_dir"] / "figures" / "adaptive_mnist_targeted_smoke.png").is_file()
    # the loss of every new attack is part of its result's identity (and name, when not the paper's)
    assert sum(1 for p in (out / "smoke" / "mnist" / "capsnet").glob("apgd_joint-*-cw.json")) == 2
    # APGD's other budgets are variants: they never supersede the scale's own APGD result
    assert sum(1 for p in (out / "smoke" / "variants" / "steps2" / "mnist" / "capsnet").glob("apgd_joint-*.json")) == 2
    assert not list((out / "smoke" / "mnist" / "capsnet").glob("superseded/apgd_joint-*"))
    # the rate against the iterations: one run read at each k (R-PGD 3, Selective / Orthogonal 4
    # iterations at the smoke scale), APGD one run per budget; its end is the member's reported rate
    it = pd.read_csv(kw["report_dir"] / "adaptive_mnist_smoke_iterations.csv")
    for (m, t, a), g in it.groupby(["model", "targeted", "attack"]):
        if a != "APGD joint":  # one run read at each k: can only grow
            assert g.undetected_pct.is_monotonic_increasing, (m, t, a)
        end = g[g.iterations == g.budget.max()].undetected_pct.iloc[0]
        assert end == df[(df.model == m) & (df.targeted == t) & (df.attack == a)].undetected_pct.iloc[0], (m, t, a)
    assert set(it[it.attack == "Selective PGD"].budget) == {4} and set(it[it.attack == "APGD joint"].budget) == {2, 3}
    assert "## Undetected rate against the iterations" in text
    assert (kw["report_dir"] / "figures" / "adaptive_mnist_iterations_smoke.png").is_file()
    again = adaptive(("mnist",), "smoke", runs_root=kw["runs_root"], out_dir=out, report_dir=kw["report_dir"],
                     data_root=str(data_root), only_report=True)["mnist"]
    pd.testing.assert_frame_equal(again.drop(columns=["wall_time_s"]), df.drop(columns=["wall_time_s"]))
    # a run for one model or one targeting rewrites the report with every row (the others read, not computed)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    for narrow in (dict(models=("cnn_cr",)), dict(targeted=(True,))):
        one = adaptive(("mnist",), "smoke", runs_root=kw["runs_root"], out_dir=out, report_dir=kw["report_dir"],
                       data_root=str(data_root), **narrow)["mnist"]
        pd.testing.assert_frame_equal(one.drop(columns=["wall_time_s"]), df.drop(columns=["wall_time_s"]))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == mtimes
    # APGD's other budgets are ensemble members: removing one leaves its row pending, the rest computed
    gone = next((out / "smoke" / "variants" / "steps2" / "mnist" / "cnn_r").glob("apgd_joint-targeted-*.json"))
    gone.unlink()
    less = adaptive(("mnist",), "smoke", runs_root=kw["runs_root"], out_dir=out, report_dir=kw["report_dir"],
                    data_root=str(data_root), only_report=True)["mnist"]
    row = less[(less.model == "cnn_r") & less.targeted & (less.attack == "APGD joint (2 iterations)")].iloc[0]
    assert row.status == "pending" and not gone.exists()
    ens = less[(less.model == "cnn_r") & less.targeted & less.attack.str.startswith("Ensemble")].iloc[0]
    assert ens.status == "complete" and ens.undetected_pct <= df[(df.model == "cnn_r") & df.targeted
                                                                 & df.attack.str.startswith("Ensemble")].undetected_pct.iloc[0]
