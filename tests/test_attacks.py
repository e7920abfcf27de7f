"""Attacks (lit_caps.attacks): the sanity checklist of Carlini et al. 2019, "On evaluating adversarial
robustness" (Sec. 5), on the three briefly trained MNIST models of ``conftest.trained_models``.

Batches are small (8-64 images) and iterations few (3-20) so the file runs in a few minutes on one
CPU thread; the properties checked do not depend on the Appendix C iteration counts.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_caps.attacks import (ADAPTIVE, ATTACKS, BIM, CW, FGSM, PGD, PRESETS, RBIM, RFGSM, RPGD, AttackResult, build_attack,
                              preset, random_targets, success_mask)
from lit_caps.models import ModelOutput

MODELS = ("capsnet", "cnn_cr", "cnn_r")
LINF = ("fgsm", "bim", "pgd", "r_fgsm", "r_bim", "r_pgd")


# -- helpers --------------------------------------------------------------------------------------
def _batch(mnist_test, n, start=0):
    x, y = mnist_test
    return x[start:start + n], y[start:start + n]


def _targets(y, seed=0):
    return random_targets(y, 10, torch.Generator().manual_seed(seed))


@torch.no_grad()
def _pred(model, x):
    return model(x).logits.argmax(1)


def _succ(model, x_adv, y, target=None):
    return success_mask(_pred(model, x_adv), y, target)


def _grads(model):
    """Snapshot of the parameters' .grad (the fixture's training leaves its last gradients there)."""
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same_grads(model, before):
    return all((g is None and p.grad is None) or (g is not None and p.grad is not None and torch.equal(g, p.grad))
               for p, g in zip(model.parameters(), before))


def _fast(name, **kw):
    """Short settings per attack (few iterations) for the sanity checks."""
    s = {"eps": 0.3}
    if name in ("bim", "pgd", "r_bim", "r_pgd", "selective_pgd", "orthogonal_pgd"):
        s.update(steps=3, step_size=0.05)
    if name == "apgd_joint":
        s.update(steps=3)
    if name == "cw":
        s = {"eps": None, "steps": 3, "binary_search_steps": 2, "initial_const": 10.0, "lr": 0.1}
    s.update(kw)
    return s


# -- 1. smoke: every attack x targeted/untargeted x model ----------------------------------------
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_smoke_shapes_bounds_and_side_effects(trained_models, mnist_test, name, targeted, model_name):
    model, _, theta = trained_models[model_name]
    x, y = _batch(mnist_test, 8)
    x0 = x.clone()
    t = _targets(y) if targeted else None
    grads = _grads(model)
    model.train()  # the attack runs in eval mode and restores the caller's mode
    try:
        atk = build_attack(name, model, targeted=targeted, threshold=theta, **_fast(name))
        res = atk(x, y, t)
    finally:
        was_training = model.training
        model.eval()
    assert was_training, "the model's training mode was not restored"
    assert _same_grads(model, grads), "the attack touched parameter gradients"
    assert torch.equal(x, x0), "the attack modified its input"
    assert isinstance(res, AttackResult) and isinstance(res.iterations, int) and res.iterations >= 1
    for xa in (res.x_adv, res.x_best):
        assert xa.shape == x.shape and xa.dtype == x.dtype
        assert not xa.requires_grad
        assert xa.min() >= 0 and xa.max() <= 1
        if atk.eps is not None:
            assert (xa - x).abs().max() <= atk.eps + 1e-6
    assert res.best_undetected.shape == (8,) and res.best_undetected.dtype == torch.bool
    if name in ADAPTIVE:  # built against the detector: they need its threshold
        with pytest.raises(ValueError, match="threshold"):
            build_attack(name, model, targeted=targeted, **_fast(name))
        return
    # without a threshold there is no best-iterate tracking
    res2 = build_attack(name, model, targeted=targeted, **_fast(name))(x, y, t)
    assert res2.best_undetected is None and res2.x_best is None
    assert torch.equal(res2.x_adv, res.x_adv) or name == "pgd" or name == "r_pgd"  # random start draws differ


# -- 2. eps = 0 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["capsnet", "cnn_cr"])
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_eps_zero_never_succeeds(trained_models, mnist_test, targeted, model_name):
    model = trained_models[model_name][0]
    x, y = _batch(mnist_test, 32)
    correct = _pred(model, x) == y
    t = _targets(y) if targeted else None
    for name in LINF:
        res = build_attack(name, model, **_fast(name, eps=0.0, targeted=targeted))(x, y, t)
        assert torch.equal(res.x_adv, x), name
        assert not _succ(model, res.x_adv, y, t)[correct].any(), name


# -- 3. success is monotone in eps -----------------------------------------------------------------
EPS_GRID = (0.0, 0.05, 0.1, 0.2, 0.3)


@pytest.mark.parametrize("model_name,name,n", [("cnn_cr", "pgd", 64), ("cnn_cr", "r_pgd", 64), ("cnn_r", "r_pgd", 64),
                                               ("capsnet", "pgd", 32), ("capsnet", "r_pgd", 32)])
def test_success_monotone_in_eps(trained_models, mnist_test, model_name, name, n):
    """Deterministic start (random_start=False); tolerance 0 examples."""
    model = trained_models[model_name][0]
    x, y = _batch(mnist_test, n)
    counts = []
    for eps in EPS_GRID:
        res = build_attack(name, model, eps=eps, steps=10, step_size=0.03, random_start=False)(x, y)
        counts.append(int(_succ(model, res.x_adv, y).sum()))
    assert all(a <= b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] > counts[0], counts


# -- 4. unbounded attack succeeds -----------------------------------------------------------------
@pytest.mark.parametrize("model_name", MODELS)
def test_pgd_eps_one_always_succeeds(trained_models, mnist_test, model_name):
    model = trained_models[model_name][0]
    x, y = _batch(mnist_test, 100)
    res = PGD(model, 1.0, step_size=0.1, steps=10, generator=torch.Generator().manual_seed(0))(x, y)
    assert _succ(model, res.x_adv, y).float().mean() >= 0.99


# -- 5. iterative >= single step ------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["capsnet", "cnn_cr"])
def test_bim_at_least_as_strong_as_fgsm(trained_models, mnist_test, model_name):
    model = trained_models[model_name][0]
    x, y = _batch(mnist_test, 64)
    eps = 0.1
    bim = _succ(model, BIM(model, eps, step_size=0.01, steps=15)(x, y).x_adv, y).sum()
    for step in (0.05, eps):  # Appendix C's literal c = 0.05, and Goodfellow et al.'s step = eps
        fgsm = _succ(model, FGSM(model, eps, step_size=step)(x, y).x_adv, y).sum()
        assert bim >= fgsm, (step, int(bim), int(fgsm))


# -- 6. targeted success means hitting the target -------------------------------------------------
def test_success_mask_counts_only_target_hits():
    y = torch.tensor([0, 1, 2, 3])
    t = torch.tensor([5, 5, 5, 5])
    pred = torch.tensor([5, 4, 2, 5])  # hit, wrong-but-not-target, unchanged, hit
    assert success_mask(pred, y, t).tolist() == [True, False, False, True]
    assert success_mask(pred, y).tolist() == [True, True, False, True]


class _ConstantWrong(nn.Module):
    """A stub model that always predicts (y0 + 1) mod 10 and reconstructs x perfectly (never detected)."""

    conditional = True
    num_classes = 10

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        b = x.shape[0]
        logits = torch.zeros(b, 10) + 0 * self.scale * x.flatten(1).sum(1, keepdim=True)
        logits[:, self.cls] += 5.0
        return ModelOutput(logits, x.flatten(1)[:, :160].reshape(b, 10, 16))

    def reconstruct(self, poses, classes=None):
        return torch.zeros(poses.shape[0], 1, 28, 28) + 0 * poses.sum()

    def distance(self, x, classes=None, out=None):
        return torch.zeros(x.shape[0])


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - set(ADAPTIVE)))  # the stub has no gradient to follow
def test_targeted_attack_not_credited_for_wrong_non_target_prediction(name):
    """The stub is always wrong (predicts 7 on digits labelled 0) but never predicts the target 3."""
    model = _ConstantWrong(7)
    x = torch.rand(4, 1, 28, 28)
    y = torch.zeros(4, dtype=torch.long)
    t = torch.full((4,), 3)
    res = build_attack(name, model, targeted=True, threshold=math.inf, **_fast(name))(x, y, t)
    assert not res.best_undetected.any()  # every iterate was wrong (7 != 0) but none hit the target
    assert not _succ(model, res.x_adv, y, t).any()
    res = build_attack(name, model, targeted=False, threshold=math.inf, **_fast(name))(x, y)
    assert res.best_undetected.all()  # untargeted: wrong is success


def test_random_targets_uniform_over_wrong_labels_and_seeded():
    y = torch.arange(10).repeat(2000)
    t = random_targets(y, 10, torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.shape == y.shape
    assert not (t == y).any()
    counts = torch.bincount((t - y) % 10, minlength=10)
    assert counts[0] == 0
    assert (counts[1:].float() / counts[1:].sum() - 1 / 9).abs().max() < 0.01
    assert torch.equal(t, random_targets(y, 10, torch.Generator().manual_seed(1)))
    assert not torch.equal(t, random_targets(y, 10, torch.Generator().manual_seed(2)))


def test_targeted_needs_target_and_settings_are_validated(trained_models, mnist_test):
    model = trained_models["cnn_cr"][0]
    x, y = _batch(mnist_test, 2)
    with pytest.raises(ValueError, match="target"):
        PGD(model, 0.3, steps=1, targeted=True)(x, y)
    with pytest.raises(ValueError, match="target"):
        PGD(model, 0.3, steps=1)(x, y, y)
    with pytest.raises(ValueError):
        RPGD(model, 0.3, beta=1.5)
    with pytest.raises(ValueError):
        PGD(model, None)
    with pytest.raises(ValueError):
        CW(model, 0.3)
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("deepfool", model, eps=0.3)


# -- 7. agreement with torchattacks ---------------------------------------------------------------
@pytest.mark.parametrize("model_name,steps", [("cnn_cr", 20), ("capsnet", 8)])
def test_pgd_agrees_with_torchattacks(trained_models, mnist_test, model_name, steps):
    torchattacks = pytest.importorskip("torchattacks")
    model = trained_models[model_name][0]

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).logits

    x, y = _batch(mnist_test, 200, start=100)
    eps, alpha = 0.1, 0.02
    ours = PGD(model, eps, step_size=alpha, steps=steps, random_start=False)(x, y).x_adv
    theirs = torchattacks.PGD(Logits(model), eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    s_ours, s_theirs = _succ(model, ours, y).float().mean(), _succ(model, theirs, y).float().mean()
    assert abs(float(s_ours - s_theirs)) <= 0.01, (float(s_ours), float(s_theirs))
    assert 0.05 < float(s_ours) < 1.0  # a regime where the two could disagree


# -- 8. R-PGD with beta = 1 is the CE-only iteration -----------------------------------------------
@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
def test_reconstructive_beta_one_equals_standard(trained_models, mnist_test, targeted):
    model, _, theta = trained_models["capsnet"]
    x, y = _batch(mnist_test, 16)
    t = _targets(y) if targeted else None
    kw = dict(eps=0.3, step_size=0.03, steps=5, targeted=targeted, threshold=theta)
    a = BIM(model, **kw)(x, y, t)
    for b in (RBIM(model, beta=1.0, **kw)(x, y, t), RPGD(model, beta=1.0, random_start=False, **kw)(x, y, t)):
        assert torch.equal(a.x_adv, b.x_adv)
        assert torch.equal(a.best_undetected, b.best_undetected) and torch.equal(a.x_best, b.x_best)
    # with a random start drawn from equally seeded generators: R-PGD(beta=1) == PGD
    g = lambda: torch.Generator().manual_seed(7)
    p = PGD(model, generator=g(), **kw)(x, y, t)
    r = RPGD(model, beta=1.0, generator=g(), **kw)(x, y, t)
    assert torch.equal(p.x_adv, r.x_adv) and not torch.equal(p.x_adv, a.x_adv)
    # single step
    f = FGSM(model, 0.3, targeted=targeted)(x, y, t).x_adv
    assert torch.equal(f, RFGSM(model, 0.3, beta=1.0, targeted=targeted)(x, y, t).x_adv)


# -- 9. the reconstructive attack lowers the reconstruction distance -------------------------------
@pytest.mark.parametrize("model_name", MODELS)
def test_rpgd_ends_with_lower_reconstruction_distance_than_pgd(trained_models, mnist_test, model_name):
    """Mean d(x_adv) (reconstruction from the predicted class, as the detector) over *all* examples."""
    model = trained_models[model_name][0]
    x, y = _batch(mnist_test, 32)
    kw = dict(eps=0.3, step_size=0.02, steps=10, random_start=False)
    with torch.no_grad():
        d_pgd = model.distance(PGD(model, **kw)(x, y).x_adv).mean()
        d_rpgd = model.distance(RPGD(model, beta=0.5, **kw)(x, y).x_adv).mean()
        d_r1 = model.distance(RPGD(model, beta=0.5, two_stage=False, **kw)(x, y).x_adv).mean()
    assert d_rpgd < d_pgd, (float(d_rpgd), float(d_pgd))
    assert d_r1 < d_pgd, (float(d_r1), float(d_pgd))


# -- 10. autograd contexts ------------------------------------------------------------------------
@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_attacks_work_under_no_grad_and_inference_mode(trained_models, mnist_test, context):
    model, _, theta = trained_models["cnn_cr"]
    x, y = _batch(mnist_test, 8)
    grads = _grads(model)
    ctx = torch.inference_mode if context == "inference_mode" else torch.no_grad
    for name in ("pgd", "r_pgd", "cw"):
        settings = _fast(name, threshold=theta)
        if name in ("pgd", "r_pgd"):
            settings["random_start"] = False
        ref = build_attack(name, model, **settings)(x, y)
        with ctx():
            got = build_attack(name, model, **settings)(x, y)  # inputs created outside the context
            xi, yi = x.clone(), y.clone()  # inference tensors under inference_mode
            got_inner = build_attack(name, model, **settings)(xi, yi)
        for res in (got, got_inner):
            assert torch.equal(res.x_adv, ref.x_adv), name
            assert torch.equal(res.best_undetected, ref.best_undetected), name
            assert not res.x_adv.is_inference()
    assert _same_grads(model, grads)


@pytest.mark.parametrize("inference_mode", [False, True])
def test_attack_inside_lightning_test_loop(trained_models, inference_mode):
    """The documented setup is ``Trainer(inference_mode=False)``; the attack also leaves Lightning's
    default inference mode locally."""
    L = pytest.importorskip("lightning")
    model, _, theta = trained_models["cnn_cr"]
    model.zero_grad(set_to_none=True)  # Lightning zeroes gradients before a loop anyway
    results = []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def test_step(self, batch, batch_idx):
            x, y = batch
            results.append(RPGD(self.model, 0.3, steps=2, step_size=0.05, threshold=theta)(x, y))

    data = torch.utils.data.TensorDataset(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(inference_mode=inference_mode, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.test(Module(), torch.utils.data.DataLoader(data, batch_size=4), verbose=False)
    finally:
        model.eval()  # Lightning leaves the shared fixture model in train mode (its dropout on) after the loop
    assert len(results) == 2 and all(r.best_undetected.shape == (4,) for r in results)
    assert all(p.grad is None for p in model.parameters())


# -- 11. CW ---------------------------------------------------------------------------------------
def test_cw_finds_small_l2_adversarials(trained_models, mnist_test):
    model = trained_models["cnn_cr"][0]
    x, y = _batch(mnist_test, 32)
    res = CW(model, steps=50, binary_search_steps=3, initial_const=10.0, lr=0.1)(x, y)
    ok = _succ(model, res.x_adv, y)
    assert ok.float().mean() >= 0.8
    l2_cw = (res.x_adv - x).flatten(1).norm(dim=1)
    pgd = PGD(model, 0.3, step_size=0.02, steps=20, random_start=False)(x, y).x_adv
    l2_pgd = (pgd - x).flatten(1).norm(dim=1)
    assert l2_cw[ok].mean() < l2_pgd[ok].mean(), (float(l2_cw[ok].mean()), float(l2_pgd[ok].mean()))
    assert (l2_cw[~ok] == 0).all()  # failures return x itself


# -- 12. best iterate -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["capsnet", "cnn_r"])
@pytest.mark.parametrize("name", ["bim", "pgd", "r_pgd", "cw"])
def test_best_iterate_dominates_last_and_is_real(trained_models, mnist_test, name, model_name):
    model, _, theta = trained_models[model_name]
    x, y = _batch(mnist_test, 32)
    for targeted in (False, True):
        t = _targets(y) if targeted else None
        settings = _fast(name, steps=8) if name != "cw" else _fast(name, steps=10)
        res = build_attack(name, model, targeted=targeted, threshold=theta, **settings)(x, y, t)
        with torch.no_grad():
            out = model(res.x_adv)
            last = success_mask(out.logits.argmax(1), y, t) & (model.distance(res.x_adv, out=out) <= theta)
            assert (res.best_undetected | ~last).all(), "best_undetected misses a successful undetected last iterate"
            # the kept iterate really is successful and undetected (re-evaluated on the same batch)
            out_b = model(res.x_best)
            ok_b = success_mask(out_b.logits.argmax(1), y, t) & (model.distance(res.x_best, out=out_b) <= theta + 1e-4)
            assert (ok_b | ~res.best_undetected).all()
            assert torch.equal(res.x_best[~res.best_undetected], res.x_adv[~res.best_undetected])
        # the iteration at which each counted example was first found: within the iterations run
        assert torch.equal(res.first_undetected >= 1, res.best_undetected)
        assert int(res.first_undetected.max()) <= res.iterations


# -- presets --------------------------------------------------------------------------------------
def test_presets_follow_appendix_c():
    from lit_caps.attacks import EPSILON

    for ds, eps in {"mnist": 0.3, "fashion_mnist": 0.1, "svhn": 0.1, "cifar10": 8 / 255}.items():
        assert EPSILON[ds] == pytest.approx(eps)
        for name in ATTACKS:
            p = preset(ds, name)
            assert p["eps"] == (None if name == "cw" else pytest.approx(eps))
    it = {"mnist": 1000, "fashion_mnist": 500, "svhn": 200, "cifar10": 200}
    for ds in it:
        for name in ("bim", "pgd", "r_bim", "r_pgd", "selective_pgd", "orthogonal_pgd"):
            assert preset(ds, name)["steps"] == it[ds] and preset(ds, name)["step_size"] == 0.01
        assert preset(ds, "apgd_joint")["steps"] == 100  # Croce & Hein's budget
        for name in ("fgsm", "r_fgsm"):
            assert preset(ds, name)["step_size"] == 0.05
        assert preset(ds, "cw")["steps"] == 1000
    p = preset("mnist", "pgd")
    p["eps"] = 1.0
    assert PRESETS["mnist"]["pgd"]["eps"] == 0.3  # a copy
    with pytest.raises(ValueError):
        preset("imagenet", "pgd")


def test_presets_build_every_attack(trained_models):
    model = trained_models["cnn_cr"][0]
    for ds in PRESETS:
        for name in ATTACKS:
            atk = build_attack(name, model, **preset(ds, name), targeted=True, threshold=1.0)
            assert isinstance(atk, ATTACKS[name]) and atk.targeted
