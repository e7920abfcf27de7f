"""FGSM: the fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and harnessing
adversarial examples", ICLR 2015).

One signed step: ``x' = Proj_{B_inf(x, eps) ∩ [0,1]}(x ± step_size * sign(grad_x CE(f(x), label)))``
(``+`` with the true label, untargeted; ``-`` with the target, targeted).

Step size. Goodfellow et al. step by the full bound (``step_size = eps``). Qin et al. 2020,
Appendix C, say "In FGSM based attacks, the step size c is 0.05" next to the bounds eps = 0.3 /
0.1 / 0.1; we follow that literally: one step of size 0.05, which stays inside every eps-ball
>= 0.05 (so on MNIST the FGSM perturbation is 0.05, not 0.3). Pass ``step_size=eps`` for the
classic FGSM.

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult with
x_adv [B,C,H,W], best_undetected [B] bool | None (the single iterate's outcome), x_best | None.
"""
from __future__ import annotations

from .base import LinfIterativeAttack


class FGSM(LinfIterativeAttack):
    """Fast gradient sign method (Goodfellow et al. 2015): one signed step of ``step_size``."""

    name = "fgsm"

    def __init__(self, model, eps, *, step_size: float = 0.05, targeted: bool = False,
                 threshold: float | None = None, loss: str = "ce"):
        super().__init__(model, eps, step_size=step_size, steps=1, targeted=targeted, threshold=threshold,
                         random_start=False, loss=loss)

    def _iterate(self, x, x_adv, y, target):
        return self._ce_step(x, x_adv, y, target)
