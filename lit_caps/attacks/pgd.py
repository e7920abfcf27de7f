"""PGD: projected gradient descent on the cross-entropy (Madry, Makelov, Schmidt, Tsipras & Vladu,
"Towards deep learning models resistant to adversarial attacks", ICLR 2018).

BIM's iteration (signed CE steps of ``step_size``, projected onto the L-inf eps-ball around x and
onto [0,1]) started from a uniform random point ``x + U(-eps, eps)^n`` clipped to [0,1]
(``random_start=True``, drawn from ``generator`` if given, else from the global RNG).
``random_start=False`` makes it exactly :class:`~lit_caps.attacks.bim.BIM`.

Qin et al. 2020, Appendix C: step size c = 0.01 and 1000 / 500 / 200 iterations on MNIST /
Fashion-MNIST / SVHN (class defaults: MNIST's).

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult with
x_adv [B,C,H,W], best_undetected [B] bool | None, x_best [B,C,H,W] | None.
"""
from __future__ import annotations

import torch

from .base import LinfIterativeAttack


class PGD(LinfIterativeAttack):
    """Projected gradient descent (Madry et al. 2018) with a uniform random start."""

    name = "pgd"

    def __init__(self, model, eps, *, step_size: float = 0.01, steps: int = 1000, random_start: bool = True,
                 generator: torch.Generator | None = None, targeted: bool = False, threshold: float | None = None,
                 loss: str = "ce"):
        super().__init__(model, eps, step_size=step_size, steps=steps, targeted=targeted, threshold=threshold,
                         random_start=random_start, generator=generator, loss=loss)

    def _iterate(self, x, x_adv, y, target):
        return self._ce_step(x, x_adv, y, target)
