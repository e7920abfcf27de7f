"""Detection metrics of Section 4.3 on hand-made tensors (no model needed)."""
from __future__ import annotations

import math

import pytest
import torch

from lit_caps.detection import (AttackRates, SuccessRate, UndetectedRate, attack_outcomes, dedupe_by_index,
                                detection_rates, mcnemar_exact, roc_auc, threshold_at_fpr, undetected_vs_fpr,
                                wilson_interval)


def test_targeted_rates_count_only_target_hits_over_all_n():
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    t = torch.tensor([1, 2, 3, 4, 5, 6])
    # 0: hit target, close; 1: hit target, far; 2: misclassified but not as target, close;
    # 3: correct; 4: hit target, d == threshold; 5: hit target, far
    pred = torch.tensor([1, 2, 7, 3, 5, 6])
    dist = torch.tensor([0.1, 5.0, 0.1, 0.1, 1.0, 3.0])
    r = detection_rates(pred, y, dist, threshold=1.0, target=t)
    assert r["n"] == 6
    assert r["success_rate"] == pytest.approx(4 / 6)  # examples 0, 1, 4, 5
    assert r["undetected_rate"] == pytest.approx(2 / 6)  # 0 and 4 (d == theta is not flagged)
    s, u = attack_outcomes(pred, y, dist, 1.0, t)
    assert s.tolist() == [True, True, False, False, True, True]
    assert u.tolist() == [True, False, False, False, True, False]


def test_untargeted_rates_and_undetected_requires_success():
    y = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 2, 2, 9])  # success: 1 and 3
    dist = torch.tensor([0.0, 0.5, 0.0, 2.0])  # 0 and 2 are close but not successful
    r = detection_rates(pred, y, dist, threshold=1.0)
    assert r["success_rate"] == pytest.approx(0.5)
    assert r["undetected_rate"] == pytest.approx(0.25)  # only example 1
    s, u = attack_outcomes(pred, y, dist, 1.0)
    assert not (u & ~s).any()


def test_threshold_equality_in_float64():
    """A float32 distance equal to a float64 threshold value it came from counts as undetected."""
    val = torch.tensor([0.1, 0.2, 0.3, 0.7], dtype=torch.float32)
    thr = threshold_at_fpr(val, 0.0)  # the max, exactly representable as float32
    r = detection_rates(torch.tensor([1]), torch.tensor([0]), torch.tensor([0.7], dtype=torch.float32), thr)
    assert r["undetected_rate"] == 1.0


def test_empty_rates_are_nan():
    e = torch.zeros(0, dtype=torch.long)
    r = detection_rates(e, e, torch.zeros(0), 1.0)
    assert r["n"] == 0 and math.isnan(r["success_rate"]) and math.isnan(r["undetected_rate"])


def test_fpr_curve_endpoints_and_monotone():
    g = torch.Generator().manual_seed(0)
    val = torch.rand(200, generator=g) + 1.0  # in [1, 2)
    adv = torch.cat([torch.rand(300, generator=g) * 3, val.min().view(1), torch.tensor([0.5])])
    success = torch.ones_like(adv, dtype=torch.bool)
    success[:50] = False
    fprs, rates = undetected_vs_fpr(val, adv, success)
    assert fprs.numel() == 101 and fprs[0] == 0 and fprs[-1] == 1
    n = adv.numel()
    # FPR 0: threshold = max validation distance
    assert rates[0] == pytest.approx(float((success & (adv.double() <= float(val.max()))).sum()) / n)
    # FPR 100%: threshold = min validation distance; only distances <= it (incl. the tie) pass
    expect = float((success & (adv.double() <= float(val.min()))).sum()) / n
    assert rates[-1] == pytest.approx(expect)
    tie_only = torch.zeros_like(success)
    tie_only[-2] = True  # the adversarial distance equal to min(val)
    assert undetected_vs_fpr(val, adv, tie_only, [1.0])[1].item() == pytest.approx(1 / n)
    assert undetected_vs_fpr(val, torch.tensor([float(val.min()) + 1e-3]), torch.tensor([True]), [1.0])[1].item() == 0
    # monotone non-increasing in FPR, and matches detection_rates at 5%
    assert (rates[1:] <= rates[:-1] + 1e-12).all()
    thr5 = threshold_at_fpr(val, 0.05)
    r5 = float((success & (adv.double() <= thr5)).sum()) / n
    assert rates[5] == pytest.approx(r5)
    # the validation set itself passes at rate 1 - FPR (up to interpolation)
    _, vr = undetected_vs_fpr(val, val, torch.ones(200, dtype=torch.bool), [0.0, 0.5, 1.0])
    assert vr.tolist() == pytest.approx([1.0, 0.5, 1 / 200], abs=0.01)


def test_roc_auc():
    clean = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert roc_auc(clean, torch.tensor([1.0, 2.0, 3.0])) == 1.0
    assert roc_auc(clean, torch.tensor([0.0, 0.05])) == 0.0
    assert roc_auc(clean, clean.clone()) == pytest.approx(0.5)
    assert roc_auc(torch.ones(7), torch.ones(5)) == pytest.approx(0.5)  # all ties count half
    # hand count: pairs (adv > clean) + 0.5 ties
    adv = torch.tensor([0.2, 0.35])
    # 0.2: > 0.1, tie with 0.2 -> 1.5; 0.35: > 0.1, 0.2, 0.3 -> 3 ; total 4.5 / 8
    assert roc_auc(clean, adv) == pytest.approx(4.5 / 8)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, generator=g), torch.randn(400, generator=g)
    brute = ((b[:, None] > a[None]).double() + 0.5 * (b[:, None] == a[None]).double()).mean()
    assert roc_auc(a, b) == pytest.approx(float(brute))
    assert math.isnan(roc_auc(clean, torch.zeros(0)))


def test_mcnemar_exact():
    """Counts the discordant pairs each way; p is the two-sided exact binomial tail (McNemar 1947)."""
    a = [True] * 10 + [False] * 6 + [True] * 2
    b = [True] * 10 + [True] * 6 + [False] * 2
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (2, 6)
    assert p == pytest.approx(2 * sum(math.comb(8, k) for k in range(3)) / 2 ** 8)  # 0.289
    assert mcnemar_exact(a, a) == (0, 0, 1.0)
    assert mcnemar_exact([False] * 7, [True] * 7)[2] == pytest.approx(2 / 2 ** 7)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-3)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and 0 < hi < 0.05
    lo, hi = wilson_interval(100, 100)
    assert hi == 1.0 and 0.95 < lo < 1
    assert wilson_interval(0, 0) == (0.0, 1.0)
    w1 = wilson_interval(10, 100)
    w2 = wilson_interval(100, 1000)
    assert w2[1] - w2[0] < w1[1] - w1[0]
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_attack_rates_metric_drops_ddp_duplicates():
    """Two 'ranks' of a DistributedSampler over 5 examples pad to 6: index 0 appears twice."""
    y = torch.tensor([0, 1, 2, 3, 4])
    pred = torch.tensor([1, 1, 0, 0, 4])  # success (untargeted): 0, 2, 3
    dist = torch.tensor([0.5, 0.1, 2.0, 0.3, 0.2])  # undetected: 0, 3
    rank0 = [0, 2, 4]
    rank1 = [1, 3, 0]  # padded with index 0 again
    m = AttackRates(threshold=1.0)
    for part in (rank0, rank1):
        i = torch.tensor(part)
        m.update(i, pred[i], y[i], dist[i])
    out = m.compute()
    assert int(out["n"]) == 5
    assert float(out["success_rate"]) == pytest.approx(3 / 5)
    assert float(out["undetected_rate"]) == pytest.approx(2 / 5)
    # without dedupe it would be 4/6 and 3/6
    sr, ur = SuccessRate(1.0), UndetectedRate(1.0)
    for part in (rank0, rank1):
        i = torch.tensor(part)
        sr.update(i, pred[i], y[i], dist[i])
        ur.update(i, pred[i], y[i], dist[i])
    assert float(sr.compute()) == pytest.approx(3 / 5) and float(ur.compute()) == pytest.approx(2 / 5)
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert int(m.compute()["n"]) == 0


def test_attack_rates_targeted_and_matches_detection_rates():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 10, (64,), generator=g)
    t = (y + torch.randint(1, 10, (64,), generator=g)) % 10
    pred = torch.where(torch.rand(64, generator=g) < 0.6, t, y)
    dist = torch.rand(64, generator=g)
    m = AttackRates(threshold=0.5)
    for s in range(0, 64, 16):
        m.update(torch.arange(s, s + 16), pred[s:s + 16], y[s:s + 16], dist[s:s + 16], t[s:s + 16])
    out, ref = m.compute(), detection_rates(pred, y, dist, 0.5, t)
    assert float(out["success_rate"]) == pytest.approx(ref["success_rate"])
    assert float(out["undetected_rate"]) == pytest.approx(ref["undetected_rate"])


def test_dedupe_by_index_keeps_first_sorted():
    idx, v = dedupe_by_index(torch.tensor([3, 1, 3, 2]), torch.tensor([10, 11, 12, 13]))
    assert idx.tolist() == [1, 2, 3] and v.tolist() == [11, 13, 10]


def test_plots(tmp_path):
    from lit_caps.reporting.plots import plot_distance_histograms, plot_undetected_vs_fpr

    val = torch.rand(100) + 1
    fprs, rates = undetected_vs_fpr(val, torch.rand(50) * 3, torch.ones(50, dtype=torch.bool))
    p = plot_undetected_vs_fpr({"CapsNet": (fprs, rates), "CNN+R": (fprs, rates * 0.5)}, tmp_path / "f2.png", "MNIST")
    assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
    p = plot_distance_histograms(val, {"PGD": torch.rand(50) * 3}, threshold_at_fpr(val), tmp_path / "h" / "f1b.png",
                                 "hist")
    assert p.is_file() and p.stat().st_size > 1000


def test_plot_rates_vs_beta_panels(tmp_path, monkeypatch):
    """Both panels get their axes (labels, limits); best-iterate lines go dashed into (b) in their model's colour."""
    from lit_caps.reporting import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, **kw: (figs.append(fig), save(fig, path, **kw))[1])
    b = [0.3, 0.5, 0.7]
    succ = {"CapsNet": (b, [0.2, 0.5, 0.9], [0.1, 0.4, 0.8], [0.3, 0.6, 1.0]), "CNN+R": (b, [0.1, 0.4, 1.0])}
    und = {"CapsNet": (b, [0.2, 0.45, 0.1]), "CNN+R": (b, [0.1, 0.4, 0.3])}
    best = {"CapsNet": (b, [0.3, 0.5, 0.6])}
    p = plots.plot_rates_vs_beta(succ, und, tmp_path / "f9.png", "t", best_undetected=best)
    assert p.stat().st_size > 1000
    a, bx = figs[0].axes
    assert a.get_ylabel() == "Success Rate (%)" and bx.get_ylabel() == "Undetected Rate (%)"
    assert a.get_xlim() == bx.get_xlim() == (0, 1) and a.get_ylim() == bx.get_ylim() == (0, 100)
    dashed = [ln for ln in bx.get_lines() if ln.get_linestyle() == "--"]
    assert [ln.get_label() for ln in dashed] == ["CapsNet, best iterate"] and not a.get_lines()[0].get_linestyle() == "--"
    solid = {ln.get_label(): ln.get_color() for ln in bx.get_lines() if ln.get_linestyle() == "-"}
    assert dashed[0].get_color() == solid["CapsNet"] != solid["CNN+R"]
    assert list(dashed[0].get_ydata()) == [30, 50, 60]
