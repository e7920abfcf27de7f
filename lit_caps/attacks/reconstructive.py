"""Reconstructive (defense-aware) attacks R-FGSM, R-BIM, R-PGD (Qin et al., ICLR 2020, Section 5.3,
Eq. 1 and Eq. 2; Appendix F).

Each iteration has two stages on the perturbation ``delta`` (``x' = x + delta``), each followed by
the projection onto the L-inf eps-ball and onto [0, 1]:

1. classifier stage (Eq. 1):
   untargeted ``delta <- clip_eps(delta + c * beta * sign(grad_delta CE(f(x + delta), y)))``,
   targeted   ``delta <- clip_eps(delta - c * beta * sign(grad_delta CE(f(x + delta), t)))``;
2. detector stage (Eq. 2), on the delta from stage 1:
   ``delta <- clip_eps(delta - c * (1 - beta) * sign(grad_delta ||r(v_k(x + delta)) - (x + delta)||_2))``
   where ``k`` is the class predicted after stage 1, ``f(x + delta)`` (untargeted; taken as a
   constant, the argmax is not differentiated), the target ``t`` (targeted: "minimize the
   reconstruction error from [the] corresponding capsule"), and for a model whose reconstruction is
   not class-conditional (CNN+R, ``model.conditional == False``) the unmasked reconstruction.

``beta`` in [0, 1] balances fooling the classifier (stage 1) against fooling the detector
(stage 2); the paper tunes it per model and dataset (Fig. 9). With ``beta = 1`` stage 2 is a zero
step and is skipped, so R-BIM / R-PGD are then bit-for-bit BIM / PGD (same start, same generator);
with ``beta = 0`` stage 1 is skipped.

``two_stage=False`` is the one-stage variant the paper mentions (and found weaker): one signed step
of ``c`` per iteration descending
``beta * (-CE(f(x'), y)) + (1 - beta) * ||r(v_k(x')) - x'||_2`` (untargeted; ``k = f(x')``) or
``beta * CE(f(x'), t) + (1 - beta) * ||r(v_t(x')) - x'||_2`` (targeted).

Variants (Appendix C step sizes): R-FGSM one iteration with c = 0.05 from x; R-BIM ``steps``
iterations of c = 0.01 from x; R-PGD the same from a uniform random start in the eps-ball.

Cost: two forward/backward passes per iteration (plus the decoder's in stage 2), against one for
PGD. Best-iterate tracking reuses stage 1's forward pass of the next iteration.

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult with
x_adv [B,C,H,W], best_undetected [B] bool | None, x_best [B,C,H,W] | None.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LinfIterativeAttack, detached, project_linf
from .losses import objective


class RBIM(LinfIterativeAttack):
    """Reconstructive BIM (Qin et al. 2020, Section 5.3): two-stage steps (Eq. 1, Eq. 2) from x.

    Args:
        beta: balance in [0, 1] between the classifier stage (beta) and the detector stage (1 - beta).
        step_size: c of Eq. 1/2 (0.01 in Appendix C).
        steps: iterations (one iteration = both stages).
        two_stage: False for the one-stage combined-loss variant.
    """

    name = "r_bim"

    def __init__(self, model, eps, *, beta: float = 0.5, step_size: float = 0.01, steps: int = 1000,
                 two_stage: bool = True, targeted: bool = False, threshold: float | None = None,
                 random_start: bool = False, generator: torch.Generator | None = None, loss: str = "ce"):
        super().__init__(model, eps, step_size=step_size, steps=steps, targeted=targeted, threshold=threshold,
                         random_start=random_start, generator=generator, loss=loss)
        beta = float(beta)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.two_stage = bool(two_stage)

    # -- the reconstruction distance the attack minimises ---------------------------------------
    def _recon_distance(self, xr, out, classes):
        """[B] ||r(v_k(x')) - x'||_2 with k = ``classes`` (ignored by a non-conditional model)."""
        rec = self.model.reconstruct(out.poses, classes)
        return (rec - xr).flatten(1).norm(dim=1)

    def _recon_classes(self, out, target):
        if self.targeted:
            return target
        return out.logits.detach().argmax(1)

    def _recon_step(self, x, x_adv, target):
        """Stage 2 (Eq. 2): a signed step of c * (1 - beta) down the reconstruction distance."""
        xr = x_adv.detach().requires_grad_(True)
        out = self.model(xr)
        loss = self._recon_distance(xr, out, self._recon_classes(out, target)).sum()
        (g,) = torch.autograd.grad(loss, xr)
        x_next = xr.detach() - (self.step_size * (1.0 - self.beta)) * g.sign()
        return project_linf(x_next, x, self.eps), detached(out)

    def _combined_step(self, x, x_adv, y, target):
        """One-stage variant: a signed step of c down beta * (+-CE) + (1 - beta) * distance."""
        xr = x_adv.detach().requires_grad_(True)
        out = self.model(xr)
        if self.loss != "ce":  # descend -J: the attacker's objective of the chosen loss
            ce = -objective(self.loss, out.logits, y, target if self.targeted else None).sum()
        elif self.targeted:
            ce = F.cross_entropy(out.logits, target, reduction="sum")
        else:
            ce = -F.cross_entropy(out.logits, y, reduction="sum")
        loss = self.beta * ce
        if self.beta < 1.0:
            loss = loss + (1.0 - self.beta) * self._recon_distance(xr, out, self._recon_classes(out, target)).sum()
        (g,) = torch.autograd.grad(loss, xr)
        x_next = xr.detach() - self.step_size * g.sign()
        return project_linf(x_next, x, self.eps), detached(out)

    def _iterate(self, x, x_adv, y, target):
        if not self.two_stage:
            return self._combined_step(x, x_adv, y, target)
        out_in = None
        x_mid = x_adv
        if self.beta > 0.0:
            x_mid, out_in = self._ce_step(x, x_adv, y, target, scale=self.beta)
        if self.beta < 1.0:
            x_next, out_mid = self._recon_step(x, x_mid, target)
            if out_in is None:  # beta = 0: stage 2's forward ran on the incoming iterate itself
                out_in = out_mid
        else:
            x_next = x_mid
        return x_next, out_in


class RPGD(RBIM):
    """Reconstructive PGD (Qin et al. 2020, Section 5.3): R-BIM from a uniform random start."""

    name = "r_pgd"

    def __init__(self, model, eps, *, beta: float = 0.5, step_size: float = 0.01, steps: int = 1000,
                 random_start: bool = True, generator: torch.Generator | None = None, two_stage: bool = True,
                 targeted: bool = False, threshold: float | None = None, loss: str = "ce"):
        super().__init__(model, eps, beta=beta, step_size=step_size, steps=steps, two_stage=two_stage,
                         targeted=targeted, threshold=threshold, random_start=random_start, generator=generator,
                         loss=loss)


class RFGSM(RBIM):
    """Reconstructive FGSM (Qin et al. 2020, Appendix F): one two-stage iteration with c = 0.05 from x.

    (Not Tramer et al.'s "R+FGSM" with a random step: here R stands for reconstructive.)
    """

    name = "r_fgsm"

    def __init__(self, model, eps, *, beta: float = 0.5, step_size: float = 0.05, two_stage: bool = True,
                 targeted: bool = False, threshold: float | None = None, loss: str = "ce"):
        super().__init__(model, eps, beta=beta, step_size=step_size, steps=1, two_stage=two_stage,
                         targeted=targeted, threshold=threshold, random_start=False, loss=loss)
