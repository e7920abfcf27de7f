"""Orthogonal PGD (Bryniarski, Hingun, Pachuca, Wang & Carlini, ICLR 2022, Section 4.2), against the
reconstruction detector of Qin et al. 2020.

As Selective PGD (:mod:`.selective`), each example steps on one objective per iteration (the
classifier objective ``J`` until it fools the classifier, then the detector's ``-d``), but the step
first removes the component along the *other* objective's gradient, so that a step on one does not
undo the other (to first order):

    not yet fooling:  g = grad J  - (<grad J, grad(-d)> / |grad(-d)|^2) grad(-d)
    fooling:          g = grad(-d) - (<grad(-d), grad J> / |grad J|^2) grad J

then the signed L-inf step of ``step_size`` along ``g`` and the projection. Both gradients come
from one forward and one backward pass over the batch taken twice (twice PGD's cost per iteration). The best iterate (successful, lowest ``d``) is kept.

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult.
"""
from __future__ import annotations

import torch

from .detector_aware import DetectorAwareAttack, per_example_dot


def remove_component(g, along):
    """``g`` minus its projection on ``along``, per example (unchanged where ``along`` is 0)."""
    den = per_example_dot(along, along)
    coef = torch.where(den > 0, per_example_dot(g, along) / den.clamp_min(1e-30), torch.zeros_like(den))
    return g - coef.view(-1, *([1] * (g.dim() - 1))) * along


class OrthogonalPGD(DetectorAwareAttack):
    """Orthogonal PGD: each objective's step with the other objective's gradient projected out."""

    name = "orthogonal_pgd"

    def step(self, x_adv, y, target):
        """Both gradients from one backward pass over the batch twice over (the first copy's ``J``, the
        second's ``-d``; the examples are independent), which also works through compiled forwards
        (whose backward cannot be run twice on one graph)."""
        b = x_adv.shape[0]
        x2 = torch.cat([x_adv, x_adv]).detach().requires_grad_(True)
        t2 = None if target is None else torch.cat([target, target])
        j, d, success = self.objectives(x2, torch.cat([y, y]), t2)
        (g,) = torch.autograd.grad(j[:b].sum() - d[b:].sum(), x2)
        g_cls, g_det = g[:b], g[b:]
        mask = success[:b].view(-1, *([1] * (x_adv.dim() - 1)))
        direction = torch.where(mask, remove_component(g_det, g_cls), remove_component(g_cls, g_det))
        return direction, d[:b].detach(), success[:b]
