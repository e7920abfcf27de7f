"""APGD on a joint objective: the classifier margin and the detector, with APGD's step schedule
(Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Section 3 and Algorithm 1), against the reconstruction
detector of Qin et al. 2020 (Carlini & Wagner 2017: attack the classifier and the detector as one).

Objective, ascended: ``L(x') = J(x') - lam * relu(d(x') - theta)``, with ``J`` the classifier
objective (:mod:`.losses`; the C&W margin by default) and ``d`` the detector's reconstruction
distance (the predicted class's reconstruction) against its threshold ``theta``: once ``d <= theta``
only the margin is pushed.

Schedule (per example): step size ``eta`` starts at ``2 * eps``; ``x1 = P(x0 + eta sign(grad L(x0)))``,
then ``z = P(x_k + eta sign(grad L(x_k)))`` and ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k -
x_{k-1}))`` with momentum ``alpha = 0.75``. At the checkpoints ``w_j = ceil(p_j N)`` (``p_0 = 0``,
``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``) ``eta`` is halved and the
iterate restarts from the best point ``x_max`` (highest ``L``) when (1) ``L`` increased in fewer than
``rho = 0.75`` of the steps since the last checkpoint, or (2) neither ``eta`` nor the best ``L``
changed since then. The attack returns ``x_max`` as its final iterate, and, as every detector-aware
attack here, the successful iterate with the lowest ``d`` as its best iterate.

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import AttackResult, project_linf
from .detector_aware import DetectorAwareAttack, LowestDistanceTracker


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoint iterations ``ceil(p_j * steps)`` for ``p_j < 1`` (j >= 1)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    p = [round(q, 10) for q in p]  # 0.41 + 0.16 is 0.5700000000000001 in floats
    return sorted({math.ceil(q * steps) for q in p[1:] if q < 1 and math.ceil(q * steps) > 0})


class APGDJoint(DetectorAwareAttack):
    """APGD (Croce & Hein 2020) on margin - lam * relu(d - theta), with best-iterate tracking.

    Args:
        lam: weight of the detector term (distance units per margin unit).
        rho, alpha: APGD's checkpoint condition and momentum (0.75, 0.75 in the paper).
        loss: the classifier objective (default ``cw``, the margin).
    """

    name = "apgd_joint"

    def __init__(self, model, eps, *, threshold: float | None = None, steps: int = 100, lam: float = 1.0,
                 rho: float = 0.75, alpha: float = 0.75, targeted: bool = False, random_start: bool = True,
                 generator: torch.Generator | None = None, loss: str = "cw"):
        super().__init__(model, eps, threshold=threshold, step_size=0.0, steps=steps, targeted=targeted,
                         random_start=random_start, generator=generator, loss=loss)
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam, self.rho, self.alpha = float(lam), float(rho), float(alpha)

    def _value_and_grad(self, x_k, y, target):
        """(L [B], grad L, d [B], success [B]) at ``x_k``: one forward, one backward."""
        xr = x_k.detach().requires_grad_(True)
        j, d, success = self.objectives(xr, y, target)
        value = j - self.lam * F.relu(d - self.threshold)
        (g,) = torch.autograd.grad(value.sum(), xr)
        return value.detach(), g, d.detach(), success

    def step(self, x_adv, y, target):
        """The ascent direction of the joint objective (the loop below adds APGD's step schedule)."""
        _, g, d, success = self._value_and_grad(x_adv, y, target)
        return g, d, success

    def _attack(self, x, y, target):
        view = lambda v: v.view(-1, *([1] * (x.dim() - 1)))  # noqa: E731
        tracker = LowestDistanceTracker(x, self.threshold)
        n = x.shape[0]
        eta = torch.full((n,), 2.0 * self.eps, device=x.device)
        x0 = self._start(x)
        v0, g0, _, _ = self._value_and_grad(x0, y, target)
        x_max, v_max = x0.clone(), v0.clone()
        x_prev, x_k = x0, project_linf(x0 + view(eta) * g0.sign(), x, self.eps)
        v_prev = v0
        checks, last = set(checkpoints(self.steps)), 0
        count = torch.zeros(n, device=x.device)
        eta_last, vmax_last = eta.clone(), v_max.clone()
        for k in range(1, self.steps + 1):
            v, g, d, success = self._value_and_grad(x_k, y, target)
            tracker.update(x_k, success, d)
            up = v > v_max
            x_max[up], v_max = x_k[up].detach(), torch.where(up, v, v_max)
            count += (v > v_prev).float()
            if k == self.steps:
                break
            z = project_linf(x_k + view(eta) * g.sign(), x, self.eps)
            x_next = project_linf(x_k + self.alpha * (z - x_k) + (1 - self.alpha) * (x_k - x_prev), x, self.eps)
            x_prev_next = x_k
            if k in checks:
                reduce = (count < self.rho * (k - last)) | ((eta_last == eta) & (vmax_last == v_max))
                eta = torch.where(reduce, eta / 2, eta)
                m = view(reduce)
                x_next = torch.where(m, x_max, x_next)
                x_prev_next = torch.where(m, x_max, x_prev_next)  # no momentum out of a restart
                count.zero_()
                eta_last, vmax_last, last = eta.clone(), v_max.clone(), k
            x_prev, x_k, v_prev = x_prev_next.detach(), x_next.detach(), v
        best, x_best = tracker.result(x_max)
        return AttackResult(x_max.detach(), best, x_best, self.steps, tracker.first)
