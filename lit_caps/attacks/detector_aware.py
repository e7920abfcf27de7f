"""The base of the detector-aware (adaptive) attacks: they know the detector and its threshold.

The detector flags an input when its reconstruction distance ``d(x) = ||r(v_k(x)) - x||_2`` (``k``
the *predicted* class, as the detector computes it; the unmasked reconstruction for CNN+R) exceeds
the threshold ``theta`` (Qin et al. 2020, Section 4.3). An attack of this family is built with
``theta`` and, at every iteration, gets from one forward pass both the classifier objective ``J``
(:mod:`.losses`: ``ce``, ``cw``, ``dlr``, ``logodds``; ascended) and ``d`` (descended), and keeps per
example the best iterate: among the successful iterates, the one with the lowest ``d``
(:class:`LowestDistanceTracker`; Bryniarski et al., ICLR 2022, keep the successful iterate with the
lowest detector score). It counts as undetected when that ``d <= theta``.

Subclasses implement ``step(x_adv, y, target) -> (direction [B, C, H, W], d, success)`` (the ascent
direction of this iteration, from :meth:`DetectorAwareAttack.objectives`); the base takes a signed
step of ``step_size`` along it and projects onto the eps-ball and [0, 1]. (APGD runs its own loop
around its step: :mod:`.apgd`.)

Shapes: x [B,C,H,W] in [0,1], y [B] long, target [B] long (targeted) -> AttackResult with x_adv
[B,C,H,W], best_undetected [B] bool, x_best [B,C,H,W] (the lowest-d successful iterate, else x_adv).
"""
from __future__ import annotations

import abc

import torch
from torch import Tensor

from .base import AttackResult, LinfIterativeAttack, project_linf, success_mask
from .losses import objective


class LowestDistanceTracker:
    """Per example, the successful iterate with the lowest detector distance seen so far."""

    def __init__(self, x: Tensor, threshold: float):
        self.threshold = float(threshold)
        self.best_d = torch.full((x.shape[0],), float("inf"), device=x.device)
        self.x_best = x.detach().clone()
        #: [B] the iteration at which the example was first successful with d <= threshold (-1: never)
        self.first = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        self.seen = 0  # iterates seen: the iteration number of the current update

    @torch.no_grad()
    def update(self, x_iter: Tensor, success: Tensor, d: Tensor) -> None:
        self.seen += 1
        better = success & (d.detach().float() < self.best_d)
        if bool(better.any()):
            self.best_d = torch.where(better, d.detach().float(), self.best_d)
            self.x_best[better] = x_iter.detach()[better]
            self.first = torch.where((self.first < 0) & (self.best_d <= self.threshold), self.seen, self.first)

    def result(self, x_last: Tensor) -> tuple[Tensor, Tensor]:
        """(best_undetected [B] bool, x_best [B,C,H,W]: the lowest-d successful iterate, else x_last)."""
        found = torch.isfinite(self.best_d)
        mask = found.view(-1, *([1] * (x_last.dim() - 1)))
        return self.best_d <= self.threshold, torch.where(mask, self.x_best, x_last.detach())


class DetectorAwareAttack(LinfIterativeAttack):
    """Base class: L-inf sign steps along a direction built from ``J`` and ``d``, best iterate kept.

    Args:
        eps: L-inf bound; step_size, steps, random_start, generator: as PGD's.
        threshold: the detector's theta (required: these attacks are built against it).
        loss: the classifier objective (:mod:`.losses`).
    """

    def __init__(self, model, eps, *, threshold: float | None = None, step_size: float = 0.01, steps: int = 1000,
                 targeted: bool = False, random_start: bool = True, generator: torch.Generator | None = None,
                 loss: str = "ce"):
        if threshold is None:
            raise ValueError(f"{type(self).__name__} attacks the detector: it needs the detection threshold")
        super().__init__(model, eps, step_size=step_size, steps=steps, targeted=targeted, threshold=threshold,
                         random_start=random_start, generator=generator, loss=loss)

    def objectives(self, xr: Tensor, y: Tensor, target: Tensor | None):
        """(J [B], d [B], success [B] bool) at ``xr`` from one forward pass (J and d differentiable)."""
        out = self.model(xr)
        j = objective(self.loss, out.logits, y, target if self.targeted else None)
        d = self.model.distance(xr, out=out)
        success = success_mask(out.logits.detach().argmax(1), y, target)
        return j, d, success

    @abc.abstractmethod
    def step(self, x_adv: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(ascent direction [B,C,H,W], d [B], success [B] bool) at ``x_adv``, from its forward pass(es)."""

    def _iterate(self, x, x_adv, y, target):
        """One signed step of ``step_size`` along :meth:`step`'s direction, projected; returns
        ``(x_next, (d, success))``: what the step measured at ``x_adv`` (not the model output that
        :class:`~lit_caps.attacks.base.LinfIterativeAttack`'s loop passes on; the loop below uses it)."""
        g, d, success = self.step(x_adv, y, target)
        return project_linf(x_adv.detach() + self.step_size * g.sign(), x, self.eps), (d, success)

    def _attack(self, x, y, target):
        tracker = LowestDistanceTracker(x, self.threshold)
        x_adv = self._start(x)
        for i in range(self.steps + 1):
            if i == self.steps:  # the last iterate: measured, no step
                with torch.no_grad():
                    out = self.model(x_adv)
                    d = self.model.distance(x_adv, out=out)
                    tracker.update(x_adv, success_mask(out.logits.argmax(1), y, target), d)
                break
            x_next, (d, success) = self._iterate(x, x_adv, y, target)
            if i > 0:  # the start is not an iterate
                tracker.update(x_adv, success, d)
            x_adv = x_next
        best, x_best = tracker.result(x_adv)
        return AttackResult(x_adv.detach(), best, x_best, self.steps, tracker.first)


def per_example_dot(a: Tensor, b: Tensor) -> Tensor:
    """[B] the dot product of each example's flattened a and b."""
    return (a.flatten(1) * b.flatten(1)).sum(1)
