"""The bench's reference CapsNet (XifengGuo/CapsNet-Pytorch's algorithm) is a faithful baseline: the
Sabour et al. sizes, and on shared weights the same class capsules as our routing computes."""
import torch

from lit_caps.bench_reference import ReferenceCapsNet, reference_train_step
from lit_caps.config import load_group
from lit_caps.models import build_model, count_parameters


def test_reference_has_the_sabour_sizes():
    ref = ReferenceCapsNet()
    ours = build_model("capsnet", **load_group("arch", "sabour"))
    # ours adds one bias per class-capsule coordinate (10 x 16); everything else is the same
    assert count_parameters(ref) == 8_215_568 == count_parameters(ours) - 160


def test_reference_routing_equals_ours_on_the_same_weights():
    torch.manual_seed(0)
    ref = ReferenceCapsNet().double()
    ours = build_model("capsnet", **load_group("arch", "sabour")).double()
    layer = ours.capsules[0]
    with torch.no_grad():
        layer.weight.copy_(ref.weight.permute(1, 0, 2, 3))  # ours: [n_in, n_out, d_out, d_in]
        layer.bias.zero_()
    u = torch.randn(4, 1152, 8, dtype=torch.float64) * 0.3
    v_ref = ref.digit_capsules(u)
    v_ours = layer(u)
    assert v_ref.shape == v_ours.shape == (4, 10, 16)
    torch.testing.assert_close(v_ours, v_ref, rtol=1e-5, atol=1e-7)


def test_reference_trains():
    torch.manual_seed(0)
    model = ReferenceCapsNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = [float(reference_train_step(model, opt, x, y)) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
