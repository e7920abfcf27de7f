"""A reference CapsNet for ``make bench``: the algorithm of XifengGuo/CapsNet-Pytorch, written here.

XifengGuo/CapsNet-Pytorch (github.com/XifengGuo/CapsNet-Pytorch, ``capsulelayers.py`` and
``capsulenet.py``) is the best-known public PyTorch CapsNet of Sabour, Frosst & Hinton (2017). This
module re-implements its algorithm (not its code) so the bench can time our training step against
it side by side, in one process, on the same batch:

- conv 1 -> 256, 9x9, ReLU; primary capsules: conv 256 -> 256, 9x9 stride 2, viewed as
  [B, 1152, 8] and squashed with ``|s|^2 / (1 + |s|^2) / (|s| + 1e-8)``;
- predictions by one broadcast matmul of W [10, 1152, 16, 8] with the inputs
  [B, 1, 1152, 8, 1] -> u_hat [B, 10, 1152, 16];
- three routing iterations in a Python loop: c = softmax(b) over the output capsules, elementwise
  products and sums, the logits b updated from a detached u_hat (gradients flow only through the
  last iteration);
- decoder 160 -> 512 -> 1024 -> 784 (sigmoid) on the true-class-masked capsules; loss = margin
  loss + 0.0005 * 784 * mean squared error (= 0.0005 * sum of squared errors).

8,215,568 parameters (ours, arch ``sabour``: 8,215,728; the 160 extra are our class-capsule biases).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reference_squash(s: Tensor, dim: int = -1) -> Tensor:
    norm = torch.linalg.vector_norm(s, dim=dim, keepdim=True)
    return (norm * norm / (1 + norm * norm) / (norm + 1e-8)) * s


class ReferenceCapsNet(nn.Module):
    """Input [B, 1, 28, 28] -> (class capsule lengths [B, 10], reconstruction [B, 1, 28, 28])."""

    def __init__(self, classes: int = 10, routings: int = 3):
        super().__init__()
        self.classes, self.routings = classes, routings
        self.conv1 = nn.Conv2d(1, 256, 9)
        self.primary = nn.Conv2d(256, 256, 9, stride=2)
        self.weight = nn.Parameter(0.01 * torch.randn(classes, 32 * 6 * 6, 16, 8))
        self.decoder = nn.Sequential(nn.Linear(16 * classes, 512), nn.ReLU(inplace=True), nn.Linear(512, 1024),
                                     nn.ReLU(inplace=True), nn.Linear(1024, 784), nn.Sigmoid())

    def digit_capsules(self, u: Tensor) -> Tensor:
        """u [B, 1152, 8] -> v [B, 10, 16]."""
        u_hat = torch.matmul(self.weight, u[:, None, :, :, None]).squeeze(-1)  # [B, 10, 1152, 16]
        u_hat_detached = u_hat.detach()
        b = torch.zeros(u.shape[0], self.classes, u.shape[1], device=u.device, dtype=u.dtype)
        for i in range(self.routings):
            c = F.softmax(b, dim=1)
            if i == self.routings - 1:
                v = reference_squash((c[..., None] * u_hat).sum(dim=-2, keepdim=True))
            else:
                v = reference_squash((c[..., None] * u_hat_detached).sum(dim=-2, keepdim=True))
                b = b + (v * u_hat_detached).sum(dim=-1)
        return v.squeeze(-2)

    def forward(self, x: Tensor, y_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = F.relu(self.conv1(x))
        u = reference_squash(self.primary(h).reshape(x.shape[0], -1, 8))
        v = self.digit_capsules(u)
        lengths = v.norm(dim=-1)
        if y_onehot is None:
            y_onehot = F.one_hot(lengths.argmax(1), self.classes).to(v.dtype)
        rec = self.decoder((v * y_onehot[:, :, None]).flatten(1))
        return lengths, rec.view_as(x)


def reference_loss(lengths: Tensor, y_onehot: Tensor, x: Tensor, rec: Tensor, lam_recon: float = 0.0005 * 784):
    margin = y_onehot * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - y_onehot) * F.relu(lengths - 0.1) ** 2
    return margin.sum(1).mean() + lam_recon * F.mse_loss(rec, x)


def reference_train_step(model: ReferenceCapsNet, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    """One Adam step of the reference on a batch (x [B, 1, 28, 28] in [0, 1], y [B] class indices)."""
    y_onehot = F.one_hot(y, model.classes).to(x.dtype)
    opt.zero_grad(set_to_none=True)
    lengths, rec = model(x, y_onehot)
    loss = reference_loss(lengths, y_onehot, x, rec)
    loss.backward()
    opt.step()
    return loss.detach()
