"""Selective PGD (Bryniarski, Hingun, Pachuca, Wang & Carlini, "Evading adversarial example detection
defenses with orthogonal projected gradient descent", ICLR 2022, Section 4.1), against the
reconstruction detector of Qin et al. 2020.

Each iteration, per example: while the example does not yet fool the classifier (untargeted
``f(x') != y``, targeted ``f(x') = t``), a signed step up the classifier objective ``J``
(:mod:`.losses`); once it does, a signed step down the detector's distance ``d(x')`` (the predicted
class's reconstruction, as the detector computes it). One forward and one backward pass per
iteration: the examples are independent, so one gradient of ``sum_b (J_b or -d_b)`` gives each
example its own selected objective's gradient. The best iterate (successful, lowest ``d``) is kept
(:class:`~lit_caps.attacks.detector_aware.DetectorAwareAttack`).

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult.
"""
from __future__ import annotations

import torch

from .detector_aware import DetectorAwareAttack


class SelectivePGD(DetectorAwareAttack):
    """Selective PGD: the classifier objective until the example fools the classifier, then the detector's."""

    name = "selective_pgd"

    def step(self, x_adv, y, target):
        xr = x_adv.detach().requires_grad_(True)
        j, d, success = self.objectives(xr, y, target)
        (g,) = torch.autograd.grad(torch.where(success, -d, j).sum(), xr)
        return g, d.detach(), success
