"""The model interface, CapsNet internals, and parameter parity of the three models."""
from __future__ import annotations

import pytest
import torch

from lit_caps.config import load_group
from lit_caps.models import (MODELS, ModelOutput, build_model, count_parameters, margin_loss, mask_poses,
                             squash)
from lit_caps.models.capsnet import CapsuleLayer, dynamic_routing

MNIST_ARCH = load_group("arch", "mnist")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_interface_shapes(name):
    torch.manual_seed(0)
    m = build_model(name, **MNIST_ARCH).eval()  # eval: no dropout (CNNs), as detection and attacks run
    x = torch.rand(4, 1, 28, 28)
    out = m(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (4, 10) and out.poses.shape == (4, 10, 16)
    cls = torch.tensor([0, 3, 9, 1])
    rec = m.reconstruct(out.poses, cls)
    assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
    d = m.distance(x, cls)
    assert d.shape == (4,)
    assert torch.allclose(d, (rec - x).flatten(1).norm(dim=1), atol=1e-5)
    # default: the predicted class
    assert torch.allclose(m.distance(x), m.distance(x, out.logits.argmax(1)), atol=1e-6)


@pytest.mark.parametrize("arch", ["sabour", "svhn", "cifar10", "cifar10_fast"])
def test_other_configs_forward(arch):
    cfg = load_group("arch", arch)
    for name in ("capsnet", "cnn_cr", "cnn_r"):
        m = build_model(name, **cfg)
        x = torch.rand(2, *cfg["image_shape"])
        out = m(x)
        assert out.logits.shape == (2, 10)
        assert m.reconstruct(out.poses, out.logits.argmax(1)).shape == x.shape


def test_parameter_counts_equal_within_5_percent():
    for arch in ("mnist", "mnist_wide", "svhn", "cifar10", "cifar10_fast"):
        cfg = load_group("arch", arch)
        counts = {n: count_parameters(build_model(n, **cfg)) for n in ("capsnet", "cnn_cr", "cnn_r")}
        lo, hi = min(counts.values()), max(counts.values())
        assert (hi - lo) / hi <= 0.05, (arch, counts)
    # the default MNIST config: exactly equal (capsule layers mirror the FC layers, biases included)
    counts = [count_parameters(build_model(n, **MNIST_ARCH)) for n in ("capsnet", "cnn_cr", "cnn_r")]
    assert counts[0] == counts[1] == counts[2] == 2_167_400
    # the wider first convolution exists in all three models: still exactly equal
    wide = [count_parameters(build_model(n, **load_group("arch", "mnist_wide"))) for n in ("capsnet", "cnn_cr", "cnn_r")]
    assert wide[0] == wide[1] == wide[2] == 2_232_400


def test_masking_keeps_exactly_the_chosen_class():
    poses = torch.randn(5, 10, 16)
    cls = torch.tensor([0, 4, 9, 4, 2])
    masked = mask_poses(poses, cls)
    for b in range(5):
        for k in range(10):
            if k == cls[b]:
                assert torch.equal(masked[b, k], poses[b, k])
            else:
                assert torch.count_nonzero(masked[b, k]) == 0


@pytest.mark.parametrize("name,conditional", [("capsnet", True), ("cnn_cr", True), ("cnn_r", False),
                                              ("capsnet_all", False), ("capsnet_winner", True)])
def test_reconstruction_uses_only_the_chosen_class(name, conditional):
    torch.manual_seed(0)
    m = build_model(name, **MNIST_ARCH)
    poses = torch.randn(3, 10, 16)
    cls = torch.tensor([1, 5, 7])
    other = poses.clone()
    for b in range(3):
        keep = other[b, cls[b]].clone()
        other[b] = torch.randn(10, 16)
        other[b, cls[b]] = keep
    same = torch.allclose(m.reconstruct(poses, cls), m.reconstruct(other, cls))
    assert m.conditional == conditional
    assert same == conditional


def test_routing_coefficients_sum_to_one_over_output_capsules():
    torch.manual_seed(0)
    u_hat = torch.randn(3, 49, 10, 16)
    v, c = dynamic_routing(u_hat, 3)
    assert c.shape == (3, 49, 10) and v.shape == (3, 10, 16)
    assert torch.allclose(c.sum(dim=2), torch.ones(3, 49), atol=1e-6)
    # per example: changing one example's predictions leaves another's couplings unchanged
    u2 = u_hat.clone()
    u2[0] = torch.randn(49, 10, 16)
    _, c2 = dynamic_routing(u2, 3)
    assert torch.allclose(c2[1:], c[1:]) and not torch.allclose(c2[0], c[0])
    # and inside the model
    m = build_model("capsnet", **MNIST_ARCH)
    m(torch.rand(2, 1, 28, 28))
    for layer in m.capsules:
        assert torch.allclose(layer.last_coupling.sum(-1), torch.ones(2, layer.n_in), atol=1e-5)


def test_squash_finite_at_zero():
    s = torch.zeros(2, 10, 16, requires_grad=True)
    v = squash(s)
    assert torch.isfinite(v).all() and v.abs().max() == 0
    v.sum().backward()
    assert torch.isfinite(s.grad).all()
    big = squash(torch.full((1, 16), 100.0))
    assert 0.99 < big.norm() < 1.0


def test_capsule_lengths_at_init_are_not_collapsed(mnist_test):
    """With two stacked routed layers a small init squashes every capsule to ~0 and training stalls."""
    x, _ = mnist_test
    for seed in range(3):
        torch.manual_seed(seed)
        m = build_model("capsnet", **MNIST_ARCH)
        lengths = m(x[:256]).logits
        assert 0.05 < lengths.mean() < 0.9, lengths.mean()


def test_capsule_layer_mirrors_dense_parameter_count():
    layer = CapsuleLayer(49, 16, 10, 16)
    assert sum(p.numel() for p in layer.parameters()) == sum(
        p.numel() for p in torch.nn.Linear(49 * 16, 10 * 16).parameters())


def test_margin_loss_values():
    lengths = torch.tensor([[0.95, 0.05, 0.5]])
    y = torch.tensor([0])
    # true class above m+ and other below m-: only the 0.5 capsule costs 0.5 * 0.4^2
    assert torch.isclose(margin_loss(lengths, y), torch.tensor(0.5 * 0.4 ** 2))
    assert torch.isclose(margin_loss(torch.tensor([[0.0, 0.0, 0.0]]), y), torch.tensor(0.81))


@pytest.mark.parametrize("name", ["capsnet", "cnn_cr", "cnn_r"])
def test_loss_falls_on_a_tiny_batch(name, mnist_test):
    from lit_caps.training.module import LitReconstructionClassifier

    torch.manual_seed(0)
    x, y = mnist_test[0][:32], mnist_test[1][:32]
    lit = LitReconstructionClassifier(model=name, arch=MNIST_ARCH)
    opt = torch.optim.Adam(lit.parameters(), lr=1e-3)
    batch = (x, y, torch.arange(32))
    losses = []
    for _ in range(40):
        loss = lit._step(batch, train=True)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_cnn_dropout_only_in_training_and_parameter_free():
    assert MNIST_ARCH["cnn_dropout"] == 0  # off by default: the three models train the same way
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in build_model("cnn_cr", **MNIST_ARCH).modules())
    torch.manual_seed(0)
    m = build_model("cnn_cr", **{**MNIST_ARCH, "cnn_dropout": 0.5})
    assert any(isinstance(mod, torch.nn.Dropout) for mod in m.modules())
    assert count_parameters(m) == count_parameters(build_model("cnn_cr", **MNIST_ARCH))
    x = torch.rand(8, 1, 28, 28)
    m.train()
    assert not torch.equal(m(x).logits, m(x).logits)  # stochastic while training
    m.eval()
    assert torch.equal(m(x).logits, m(x).logits)  # off for detection and attacks
    # CapsNet accepts the shared config and has no dropout
    caps = build_model("capsnet", **MNIST_ARCH)
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in caps.modules())


def test_cnn_only_settings_do_not_identify_a_capsnet():
    from lit_caps.config import compose, config_hash

    for model, changes in (("capsnet", False), ("cnn_cr", True), ("cnn_r", True)):
        a = compose(model, "mnist")
        b = compose(model, "mnist", overrides=["arch.cnn_dropout=0.1"])
        assert (config_hash(a) != config_hash(b)) == changes, model
        # at its default 0 the setting is not part of the hash: runs from before it existed keep theirs
        c = compose(model, "mnist")
        c["arch"].pop("cnn_dropout")
        assert config_hash(c) == config_hash(a)
    # pinned: the default MNIST CNN+CR (weight average), and the run without it behind the attack reports
    assert config_hash(compose("cnn_cr", "mnist")) == "6858ee75"
    assert config_hash(compose("cnn_cr", "mnist", overrides=["train.ema_decay=0"])) == "3e2c771c"


def test_conv_backbone_shapes_and_parity():
    """arch.backbone: 3x3 conv blocks between the first conv and the primary capsules, in every model
    (so the CNNs still mirror the CapsNet exactly); empty, the models and their state-dict keys are
    those of the paper's configs."""
    cfg = load_group("arch", "cifar10_fast")
    m = build_model("capsnet", **cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    assert m.features(m.normalize(x)).shape == (2, 128, 7, 7) and m.num_primary == 5 * 5 * 16
    counts = {n: count_parameters(build_model(n, **cfg)) for n in ("capsnet", "cnn_cr", "cnn_r", "capsnet_all")}
    assert len(set(counts.values())) == 1, counts
    # DeepCaps-style: its reconstruction network sees one 16-D capsule, not 10 x 16 (1.3% fewer)
    gap = counts["capsnet"] - count_parameters(build_model("capsnet_winner", **cfg))
    assert gap == (160 - 16) * 512
    plain = build_model("capsnet", **MNIST_ARCH)
    assert not [k for k in plain.state_dict() if k.startswith("backbone.")]
    with pytest.raises(ValueError, match=r"arch.backbone\[1\] = \[64, 2\]: expected \[channels >= 1, pool 0 or 1\]"):
        build_model("capsnet", **dict(cfg, backbone=[[64, 1], [64, 2]]))
