"""BIM: the Basic Iterative Method (Kurakin, Goodfellow & Bengio, "Adversarial examples in the
physical world", ICLR Workshop 2017 / arXiv:1607.02533, 2016).

``x_0 = x``; ``x_{i+1} = Proj_{B_inf(x, eps) ∩ [0,1]}(x_i ± step_size * sign(grad_x CE(f(x_i), label)))``
for ``steps`` iterations: ``+`` and the true label ``y`` (untargeted), ``-`` and the target ``t``
(targeted; Kurakin et al.'s "iterative least-likely class" with a random target instead).

Qin et al. 2020, Appendix C: step size c = 0.01 and 1000 / 500 / 200 iterations on MNIST /
Fashion-MNIST / SVHN (the class defaults are MNIST's; see :data:`lit_caps.attacks.PRESETS`).

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult with
x_adv [B,C,H,W], best_undetected [B] bool | None, x_best [B,C,H,W] | None.
"""
from __future__ import annotations

from .base import LinfIterativeAttack


class BIM(LinfIterativeAttack):
    """Basic Iterative Method (Kurakin et al. 2016): signed CE steps from x, projected each step."""

    name = "bim"

    def __init__(self, model, eps, *, step_size: float = 0.01, steps: int = 1000, targeted: bool = False,
                 threshold: float | None = None, loss: str = "ce"):
        super().__init__(model, eps, step_size=step_size, steps=steps, targeted=targeted, threshold=threshold,
                         random_start=False, loss=loss)

    def _iterate(self, x, x_adv, y, target):
        return self._ce_step(x, x_adv, y, target)
