"""Common machinery of the attacks (torchattacks-style: one attack per module, this base).

Conventions shared by every attack (Qin et al., ICLR 2020, Section 3 and Appendix C):

* Images ``x`` are ``[B, C, H, W]`` float in [0, 1] pixel space; labels ``y`` and targets are
  ``[B]`` long. The model is a :class:`~lit_caps.models.ReconstructionClassifier`:
  ``model(x) -> ModelOutput(logits [B, K], poses [B, K, D])``. CapsNet logits are capsule lengths
  and are used as logits as they are (cross-entropy, C&W margins).
* Untargeted success: ``f(x') != y``; targeted success: ``f(x') == t`` (:func:`success_mask`;
  Section 4.3's S_u and S_t). Targeted attacks descend the loss towards ``t``, untargeted ones
  ascend the cross-entropy of the true label.
* The classifier loss of the L-inf attacks (``loss``: ``ce``, the paper's and the default; ``cw``,
  ``dlr``, ``logodds``: :mod:`.losses`) is a setting, recorded in every result file's settings.
* L-inf attacks step in pixel space and, after every step, project onto the eps-ball around ``x``
  and onto [0, 1] (:func:`project_linf`).
* Best-iterate tracking (when ``threshold`` is given): after every iteration the iterate's
  prediction and its detection statistic ``d(x_iter) = model.distance(x_iter)`` (reconstruction
  from the *predicted* class, as the detector computes it) are checked, and the first iterate that
  is successful and undetected (``d <= threshold``, Section 4.3's R_u / R_t) is kept per example.
  The starting point (``x`` or the random start) is not an iterate.

Autograd contexts: ``__call__`` runs under ``torch.inference_mode(False)`` and
``torch.enable_grad()`` and starts from ``x.detach().clone()`` (likewise ``y``, ``target``) made
there, so an attack works when called under ``torch.no_grad()`` or ``torch.inference_mode()``, also
on inputs that are inference tensors, and returns ordinary tensors. Only the input gets gradients
(``torch.autograd.grad``): model parameters never accumulate ``.grad``. The model is put in eval
mode for the attack and every submodule's mode is restored afterwards.

Lightning: build the ``Trainer`` with ``inference_mode=False`` for validation/test loops that
attack (the project's rule). The attack itself also survives Lightning's default inference mode
(tested), but anything else the step computes around it (model outputs passed in, state or buffers
created inside the loop) would be inference tensors, which autograd refuses to save for backward.
"""
from __future__ import annotations

import abc
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..detection import attack_success
from .losses import check_loss, objective
from ..models.base import ModelOutput


@dataclass
class AttackResult:
    """What every attack returns.

    Attributes:
        x_adv: ``[B, C, H, W]`` the final (last) iterate, in [0, 1] and, for L-inf attacks, within
            the eps-ball around ``x``. (CW: the smallest-L2 successful x', or ``x`` where none was found.)
        best_undetected: ``[B]`` bool, or None when the attack has no ``threshold``: some iterate
            (the last included) was successful and had ``d(x_iter) <= threshold``.
        x_best: ``[B, C, H, W]`` or None (no threshold): the first successful-and-undetected
            iterate per example, else the last iterate (``x_adv``).
        iterations: iterations run (optimizer steps in total for CW, over all binary-search steps).
        first_undetected: ``[B]`` long or None (no threshold): the iteration (1-based; the tracker's
            count of iterates seen) at which the example was first successful with
            ``d <= threshold``, -1 if never. The undetected rate of best-iterate scoring after ``k``
            iterations is ``mean(1 <= first_undetected <= k)``: one run gives the rate against the
            iterations (exact for fixed-step attacks; APGD's schedule depends on its total steps).
    """

    x_adv: Tensor
    best_undetected: Tensor | None
    x_best: Tensor | None
    iterations: int
    first_undetected: Tensor | None = None


#: Attack success (Section 4.3): the detection module's definition, the one both sides use.
success_mask = attack_success


def random_targets(y: Tensor, num_classes: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """``[B]`` targets drawn uniformly among the wrong labels (Section 3: "selected uniformly at
    random as any label which is not the ground-truth correct label").

    ``t = (y + u) mod K`` with ``u`` uniform on {1, ..., K-1}: each of the K-1 other classes has
    probability 1/(K-1). Draws from ``generator`` (on its device; default: the global RNG) and
    returns the targets on ``y``'s device.
    """
    if num_classes < 2:
        raise ValueError("need at least two classes to pick a wrong one")
    dev = generator.device if generator is not None else y.device
    off = torch.randint(1, num_classes, tuple(y.shape), generator=generator, device=dev)
    return (y.long() + off.to(y.device)) % num_classes


def project_linf(x_new: Tensor, x: Tensor, eps: float) -> Tensor:
    """Project onto the L-inf ball of radius ``eps`` around ``x`` and onto [0, 1] (as torchattacks)."""
    return torch.clamp(x + torch.clamp(x_new - x, min=-eps, max=eps), min=0.0, max=1.0)


def detached(out) -> ModelOutput:
    return ModelOutput(out.logits.detach(), out.poses.detach())


@contextmanager
def attack_context(model: nn.Module):
    """Eval mode (every submodule's mode restored afterwards), grad on, inference mode off."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


class BestIterateTracker:
    """Keeps, per example, the first iterate that is successful and undetected.

    ``update(x_iter, out)`` takes an iterate and the model's (detached) output on it; the distance
    is computed only for the examples that are newly successful (decoder only, forward reused).
    """

    def __init__(self, model, threshold: float, x: Tensor, y: Tensor, target: Tensor | None):
        self.model, self.threshold, self.y, self.target = model, float(threshold), y, target
        self.x_best = torch.zeros_like(x)
        self.first = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        self.seen = 0  # iterates seen: the iteration number of the current update

    @torch.no_grad()
    def update(self, x_iter: Tensor, out, pred: Tensor | None = None) -> None:
        self.seen += 1
        pred = out.logits.argmax(1) if pred is None else pred
        new = success_mask(pred, self.y, self.target) & ~self.found
        if not bool(new.any()):
            return
        idx = new.nonzero().squeeze(1)
        xi = x_iter[idx].detach()
        d = self.model.distance(xi, out=ModelOutput(out.logits[idx].detach(), out.poses[idx].detach()))
        ok = d <= self.threshold
        if bool(ok.any()):
            idx = idx[ok]
            self.x_best[idx] = xi[ok]
            self.first[idx] = self.seen

    @property
    def found(self) -> Tensor:
        """[B] bool: some iterate was successful and undetected."""
        return self.first >= 1

    def result(self, x_last: Tensor) -> tuple[Tensor, Tensor]:
        """(best_undetected [B] bool, x_best [B,C,H,W])."""
        mask = self.found.view(-1, *([1] * (x_last.dim() - 1)))
        return self.found, torch.where(mask, self.x_best, x_last.detach())


class Attack(abc.ABC):
    """Base class. Subclasses implement ``_attack(x, y, target) -> AttackResult``.

    Args:
        model: a :class:`~lit_caps.models.ReconstructionClassifier`.
        eps: L-inf bound in [0, 1] pixel units (None only for unbounded attacks such as CW-L2).
        targeted: targeted attack (``__call__`` then needs ``target``).
        threshold: detection threshold theta; when given, best-iterate tracking is on.
    """

    name = "attack"
    requires_eps = True

    def __init__(self, model: nn.Module, eps: float | None, *, targeted: bool = False,
                 threshold: float | None = None):
        if eps is None:
            if self.requires_eps:
                raise ValueError(f"{type(self).__name__} needs an L-inf bound eps")
        else:
            eps = float(eps)
            if not eps >= 0 or math.isinf(eps):
                raise ValueError(f"eps must be finite and >= 0, got {eps}")
        self.model = model
        self.eps = eps
        self.targeted = bool(targeted)
        self.threshold = None if threshold is None else float(threshold)

    def settings(self) -> dict:
        """The attack's settings (for logging / result files)."""
        return {k: v for k, v in vars(self).items() if k not in ("model", "generator")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def __call__(self, x: Tensor, y: Tensor, target: Tensor | None = None) -> AttackResult:
        """Attack ``x`` [B,C,H,W] in [0,1] with labels ``y`` [B] (and ``target`` [B] if targeted)."""
        if self.targeted and target is None:
            raise ValueError(f"targeted {type(self).__name__} needs target labels")
        if not self.targeted and target is not None:
            raise ValueError(f"untargeted {type(self).__name__} got target labels; build it with targeted=True")
        if x.dim() < 2 or y.shape != x.shape[:1]:
            raise ValueError(f"expected x [B,C,H,W] and y [B], got {tuple(x.shape)} and {tuple(y.shape)}")
        if target is not None and target.shape != y.shape:
            raise ValueError(f"target must have y's shape {tuple(y.shape)}, got {tuple(target.shape)}")
        with attack_context(self.model):
            # fresh, normal (non-inference) tensors that own their storage
            x = x.detach().clone()
            y = y.detach().clone().long()
            target = None if target is None else target.detach().clone().long()
            return self._attack(x, y, target)

    @abc.abstractmethod
    def _attack(self, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        """The attack proper, on fresh tensors inside :func:`attack_context`."""

    def _tracker(self, x: Tensor, y: Tensor, target: Tensor | None) -> BestIterateTracker | None:
        if self.threshold is None:
            return None
        return BestIterateTracker(self.model, self.threshold, x, y, target)


class LinfIterativeAttack(Attack):
    """Sign-gradient L-inf attacks: ``steps`` iterations from ``x`` or a uniform random start.

    Subclasses implement ``_iterate(x, x_adv, y, target) -> (x_next, out)`` where ``out`` is the
    model's detached output on the *incoming* iterate ``x_adv`` (the forward pass the step needed
    anyway), which the best-iterate tracker reuses: iterate i is checked with the forward pass of
    step i+1, the last iterate with one extra no-grad forward.
    """

    random_start = False

    def __init__(self, model, eps, *, step_size: float, steps: int, targeted: bool = False,
                 threshold: float | None = None, random_start: bool = False,
                 generator: torch.Generator | None = None, loss: str = "ce"):
        super().__init__(model, eps, targeted=targeted, threshold=threshold)
        self.loss = check_loss(loss, model)
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        self.step_size = float(step_size)
        self.steps = int(steps)
        self.random_start = bool(random_start)
        self.generator = generator

    def _start(self, x: Tensor) -> Tensor:
        """x, or (random_start) x + U(-eps, eps) clipped to [0, 1] (Madry et al. 2018)."""
        if not self.random_start:
            return x.clone()
        g = self.generator
        u = torch.rand(x.shape, generator=g, dtype=x.dtype, device=g.device if g is not None else x.device)
        return project_linf(x + (2 * u.to(x.device) - 1) * self.eps, x, self.eps)

    def _ce_step(self, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None, scale: float = 1.0):
        """One signed step of size ``step_size * scale`` on the classifier loss, projected.

        ``loss="ce"`` (the paper's): untargeted ascend CE(f(x'), y); targeted descend CE(f(x'), t).
        Other losses (:mod:`.losses`): ascend the attacker's objective. Returns (x_next, out on x_adv).
        """
        xr = x_adv.detach().requires_grad_(True)
        out = self.model(xr)
        if self.loss != "ce":
            (g,) = torch.autograd.grad(objective(self.loss, out.logits, y, target if self.targeted else None).sum(), xr)
            return project_linf(xr.detach() + (self.step_size * scale) * g.sign(), x, self.eps), detached(out)
        label = target if self.targeted else y
        loss = F.cross_entropy(out.logits, label, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
        step = self.step_size * scale
        if self.targeted:
            x_next = xr.detach() - step * g.sign()
        else:
            x_next = xr.detach() + step * g.sign()
        return project_linf(x_next, x, self.eps), detached(out)

    @abc.abstractmethod
    def _iterate(self, x, x_adv, y, target):
        """One iteration: ``(x_next, detached output on x_adv)``."""

    def _attack(self, x, y, target):
        tracker = self._tracker(x, y, target)
        x_adv = self._start(x)
        for i in range(self.steps):
            x_next, out = self._iterate(x, x_adv, y, target)
            if tracker is not None and i > 0:
                tracker.update(x_adv, out)
            x_adv = x_next
        if tracker is None:
            return AttackResult(x_adv.detach(), None, None, self.steps)
        with torch.no_grad():
            tracker.update(x_adv, self.model(x_adv))
        best, x_best = tracker.result(x_adv)
        return AttackResult(x_adv.detach(), best, x_best, self.steps, tracker.first)
