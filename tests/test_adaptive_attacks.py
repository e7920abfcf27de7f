"""The adaptive attacks (issue 17): the classifier losses, Selective / Orthogonal PGD and the APGD joint
attack against the reconstruction detector, and the per-example ensemble. The sanity checks of
Carlini et al. 2019 for each new attack, on the briefly trained models of ``conftest.trained_models``
(small batches, few iterations: the properties, not reportable numbers)."""
from __future__ import annotations

import pytest
import torch

from lit_caps.attacks import ADAPTIVE, PGD, build_attack, random_targets, success_mask
from lit_caps.attacks.apgd import checkpoints
from lit_caps.attacks.losses import dlr, log_odds, margin, objective
from lit_caps.evaluation import ensemble


def _batch(mnist_test, n):
    x, y = mnist_test
    return x[:n], y[:n]


@torch.no_grad()
def _measure(model, x, y, t, threshold):
    out = model(x)
    pred = out.logits.argmax(1)
    d = model.distance(x, out=out)
    s = success_mask(pred, y, t)
    return s, s & (d <= threshold)


# -- losses ----------------------------------------------------------------------------------------
def test_losses_by_hand():
    z = torch.tensor([[0.1, 0.7, 0.2, 0.05, 0.3]])
    y, t = torch.tensor([1]), torch.tensor([4])
    assert margin(z, y, targeted=False).item() == pytest.approx(0.3 - 0.7)   # max other - own
    assert margin(z, t, targeted=True).item() == pytest.approx(0.3 - 0.7)    # own - max other
    # DLR (Croce & Hein Eq. 6/7): sorted 0.7, 0.3, 0.2, 0.1, ...
    assert dlr(z, y, None).item() == pytest.approx(-(0.7 - 0.3) / (0.7 - 0.2))
    assert dlr(z, y, t).item() == pytest.approx(-(0.7 - 0.3) / (0.7 - (0.2 + 0.1) / 2))
    lo = log_odds(torch.tensor([0.1, 0.5, 0.9]))
    assert lo.tolist() == pytest.approx([-2.1972246, 0.0, 2.1972246], rel=1e-5)
    # every objective is larger where the attacker is closer to its goal
    closer = torch.tensor([[0.1, 0.4, 0.2, 0.05, 0.6]])
    for name in ("ce", "cw", "dlr", "logodds"):
        assert objective(name, closer, y, t) > objective(name, z, y, t), name
        assert objective(name, closer, y, None) > objective(name, z, y, None), name


def test_loss_is_a_recorded_setting_and_logodds_is_for_capsules(trained_models, mnist_test):
    caps, cnn = trained_models["capsnet"][0], trained_models["cnn_cr"][0]
    x, y = _batch(mnist_test, 8)
    for loss in ("cw", "dlr", "logodds"):
        atk = PGD(caps, 0.3, steps=3, loss=loss)
        assert atk.settings()["loss"] == loss
        assert atk(x, y).x_adv.shape == x.shape
    with pytest.raises(ValueError, match="capsule models"):
        PGD(cnn, 0.3, steps=3, loss="logodds")
    with pytest.raises(ValueError, match="unknown attack loss"):
        PGD(cnn, 0.3, steps=3, loss="hinge")
    # the paper's loss is the default and bit for bit what it was
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = PGD(cnn, 0.3, steps=3, generator=g())(x, y).x_adv
    b = PGD(cnn, 0.3, steps=3, generator=g(), loss="ce")(x, y).x_adv
    assert torch.equal(a, b)


def test_apgd_checkpoints_follow_the_paper():
    # p: 0.22, 0.41, 0.57, 0.7, 0.8, 0.87, 0.93, 0.99 (x 100, rounded up)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


# -- sanity checks of every new attack --------------------------------------------------------------
def _build(name, model, threshold, eps, steps, targeted=False, seed=0):
    kw = {} if name == "apgd_joint" else {"step_size": 0.02}
    return build_attack(name, model, eps=eps, steps=steps, threshold=threshold, targeted=targeted,
                        generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("model_name", ["capsnet", "cnn_cr"])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_eps_zero_gives_no_success(trained_models, mnist_test, name, model_name):
    model, _, thr = trained_models[model_name]
    x, y = _batch(mnist_test, 32)
    correct = model(x).logits.argmax(1) == y
    for targeted in (False, True):
        t = random_targets(y, 10, torch.Generator().manual_seed(1)) if targeted else None
        res = _build(name, model, thr, 0.0, 5, targeted)(x, y, t)
        assert torch.equal(res.x_adv, x)
        s, _ = _measure(model, res.x_adv, y, t, thr)
        assert not s[correct].any()
        assert not res.best_undetected[correct].any()


@pytest.mark.parametrize("model_name", ["capsnet", "cnn_cr", "cnn_r"])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_unbounded_eps_succeeds(trained_models, mnist_test, name, model_name):
    model, _, thr = trained_models[model_name]
    x, y = _batch(mnist_test, 64)
    res = _build(name, model, thr, 1.0, 20)(x, y)
    s, _ = _measure(model, res.x_adv, y, None, thr)
    found = s | res.best_undetected
    assert found.float().mean() >= 0.95, (name, model_name, found.float().mean())


@pytest.mark.parametrize("model_name", ["capsnet", "cnn_cr"])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_best_iterate_is_real_and_undetected_does_not_fall_with_the_budget(trained_models, mnist_test, name,
                                                                           model_name):
    model, _, thr = trained_models[model_name]
    x, y = _batch(mnist_test, 48)
    short = _build(name, model, thr, 0.3, 6)(x, y)
    long = _build(name, model, thr, 0.3, 24)(x, y)
    for res, steps in ((short, 6), (long, 24)):
        _, und = _measure(model, res.x_best, y, None, thr)
        assert torch.equal(und[res.best_undetected], res.best_undetected[res.best_undetected])  # re-measured: real
        # the first undetected iteration: set exactly for the examples counted, within the budget
        assert torch.equal(res.first_undetected >= 1, res.best_undetected)
        assert int(res.first_undetected.max()) <= steps and bool(((res.first_undetected >= 1) | (res.first_undetected == -1)).all())
    if name == "apgd_joint":  # its schedule depends on the budget: the rate, not each example, can only grow
        assert int(long.best_undetected.sum()) >= int(short.best_undetected.sum())
    else:  # the same trajectory, longer: every example found early is still found, at the same iteration
        assert bool((long.best_undetected | ~short.best_undetected).all())
        found = short.best_undetected
        assert torch.equal(long.first_undetected[found], short.first_undetected[found])
        # the long run read at 6 iterations is the short run
        assert torch.equal((long.first_undetected >= 1) & (long.first_undetected <= 6), found)


def test_adaptive_attacks_need_the_threshold(trained_models):
    with pytest.raises(ValueError, match="threshold"):
        build_attack("selective_pgd", trained_models["cnn_cr"][0], eps=0.3, threshold=None)


# -- the ensemble ----------------------------------------------------------------------------------
def _fake(n, seed, y=None):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g) < 0.6
    u = s & (torch.rand(n, generator=g) < 0.5)
    b = u | (s & (torch.rand(n, generator=g) < 0.3))
    y = torch.arange(n) % 10 if y is None else y
    return {"index": list(range(n)), "y": y.tolist(), "target": [-1] * n, "clean_pred": y.tolist(),
            "success": s.tolist(), "undetected": u.tolist(), "best_undetected": b.tolist(),
            "adv_dist": (torch.rand(n, generator=g) * 5).tolist()}


def test_ensemble_is_at_least_every_member_and_at_most_their_sum():
    members = {f"a{i}": _fake(200, i) for i in range(4)}
    val = torch.rand(1000) * 5
    ens = ensemble(members, val_distances=val)
    for f in ("success", "undetected", "best_undetected"):
        each = [ens["per_member"][m][f]["count"] for m in members]
        assert ens[f]["count"] >= max(each)
        assert ens[f]["count"] <= min(200, sum(each))
    # its undetected-vs-FPR curve is at least every member's own curve
    from lit_caps.detection import undetected_vs_fpr

    for ex in members.values():
        _, r = undetected_vs_fpr(val, torch.tensor(ex["adv_dist"]), torch.tensor(ex["success"]))
        assert all(e >= m - 1e-12 for e, m in zip(ens["undetected_vs_fpr"]["undetected_rate"], r.tolist()))
    first = ens["first_member"]
    assert sum(v is not None for v in first) == ens["best_undetected"]["count"]
    # the per-example union, for paired tests: its counts are the rates' counts
    ex = ens["examples"]
    assert ex["index"] == list(range(200)) and len(ex["target"]) == 200
    assert all(sum(ex[f]) == ens[f]["count"] for f in ("success", "undetected", "best_undetected"))
    assert ex["best_undetected"] == [any(m["best_undetected"][i] for m in members.values()) for i in range(200)]


def test_ensemble_refuses_members_on_other_images():
    a, b = _fake(20, 0), _fake(20, 1)
    b["index"] = list(range(1, 21))
    with pytest.raises(ValueError, match="other images"):
        ensemble({"a": a, "b": b})


def test_ensemble_over_correct_images_only():
    y = torch.arange(50) % 10
    a = _fake(50, 0, y)
    a["clean_pred"] = [(v + 1) % 10 if i < 10 else v for i, v in enumerate(y.tolist())]  # 10 wrong when clean
    ens = ensemble({"a": a}, correct_only=True)
    assert ens["n"] == 40 and ens["correct_only"]
    assert ens["examples"]["index"] == list(range(10, 50))


def test_adaptive_attacks_run_through_compiled_forwards(trained_models, mnist_test):
    """As the quick and paper scales run them (compiled CapsNet forwards): a compiled graph's backward
    runs once per forward, so no attack may take two gradients of one forward (Orthogonal PGD takes
    both of its gradients from one backward)."""
    from lit_caps.evaluation import compiled_forward

    model, _, thr = trained_models["cnn_cr"]
    x, y = _batch(mnist_test, 4)
    eager = {n: _build(n, model, thr, 0.3, 2)(x, y) for n in ADAPTIVE}
    with compiled_forward([model], force=True):
        for name in ADAPTIVE:
            res = _build(name, model, thr, 0.3, 2)(x, y)
            assert res.x_adv.shape == x.shape
            assert torch.equal(res.best_undetected, eager[name].best_undetected), name
