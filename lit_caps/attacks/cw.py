"""CW-L2: the Carlini-Wagner L2 attack (Carlini & Wagner, "Towards evaluating the robustness of
neural networks", IEEE S&P 2017), following the authors' released ``l2_attack.py`` (which Qin et al.
2020 used, Appendix C: 1000 iterations on every dataset).

Change of variable ``x' = (tanh(w) + 1) / 2`` (always in [0, 1]), ``w`` initialised at
``atanh((2x - 1) * 0.999999)`` (x' = x up to 1e-6) and optimised with Adam (lr 0.01, restarted at
every binary-search step) on, per example,

    ||x' - x||_2^2 + c * f(x'),
    f(x') = max(max_{i != t} Z(x')_i - Z(x')_t, -kappa)      (targeted, target t)
    f(x') = max(Z(x')_y - max_{i != y} Z(x')_i, -kappa)      (untargeted, true label y)

(the released code writes the clamp as ``max(0, ... + kappa)``, equal up to the constant kappa)
with ``Z`` the logits (CapsNet: capsule lengths, used as they are). A binary search over ``c`` per
example (``binary_search_steps``, from ``initial_const``): after each search step, ``c`` is
halved towards the largest failing value if the example was attacked successfully, else raised
(x10 while no success was ever seen, then bisected). With ``binary_search_steps >= 10`` the last
step uses the upper bound (as the released code). ``abort_early``: every ``steps // 10`` iterations
the search step stops if the total loss did not decrease by at least 0.01% (as the released code;
ours starts from ``prev = inf`` instead of 1e6, so a large initial loss does not stop it at once).

Success of an iterate (with ``kappa``, as the released code): ``argmax(Z - kappa*e_t) == t``
(targeted) or ``argmax(Z + kappa*e_y) != y`` (untargeted). Per example the smallest-L2 successful
x' over all iterations and search steps is kept.

Defaults (the released code's, with Appendix C's iteration count): steps 1000, binary_search_steps
9, initial_const 1e-3, lr 0.01, kappa 0, abort_early True. These are slow (up to 9000 forward and
backward passes); the tests use short settings (e.g. steps 50-100, 1-3 search steps, larger c).

No L-inf bound: ``eps`` must be None.

Returns: x_adv [B,C,H,W] = the smallest-L2 successful x' per example, ``x`` itself where the attack
failed; best_undetected [B] bool | None and x_best [B,C,H,W] | None (first successful-and-undetected
iterate, in optimisation order; the detector's statistic uses the plain prediction argmax Z);
iterations = optimizer steps run in total.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Attack, AttackResult, success_mask


class CW(Attack):
    """Carlini & Wagner (2017) L2 attack with a binary search over c (released-code defaults)."""

    name = "cw"
    requires_eps = False

    def __init__(self, model, eps: float | None = None, *, steps: int = 1000, binary_search_steps: int = 9,
                 initial_const: float = 1e-3, lr: float = 0.01, kappa: float = 0.0, abort_early: bool = True,
                 targeted: bool = False, threshold: float | None = None):
        if eps is not None:
            raise ValueError("CW-L2 has no L-inf bound: pass eps=None")
        super().__init__(model, None, targeted=targeted, threshold=threshold)
        if int(steps) < 1 or int(binary_search_steps) < 1:
            raise ValueError("steps and binary_search_steps must be >= 1")
        if not initial_const > 0 or not lr > 0 or not kappa >= 0:
            raise ValueError("need initial_const > 0, lr > 0 and kappa >= 0")
        self.steps = int(steps)
        self.binary_search_steps = int(binary_search_steps)
        self.initial_const = float(initial_const)
        self.lr = float(lr)
        self.kappa = float(kappa)
        self.abort_early = bool(abort_early)

    def _margin(self, z: Tensor, onehot: Tensor) -> Tensor:
        """[B] f(x') of the C&W objective (>= -kappa), label = target (targeted) or y."""
        real = (z * onehot).sum(1)
        other = z.masked_fill(onehot.bool(), float("-inf")).amax(1)
        if self.targeted:
            return torch.clamp(other - real, min=-self.kappa)
        return torch.clamp(real - other, min=-self.kappa)

    def _attack(self, x, y, target):
        b = x.shape[0]
        dev = x.device
        label = target if self.targeted else y
        onehot = None  # [B, K], built from the first logits
        tracker = self._tracker(x, y, target)
        w0 = torch.atanh((2 * x - 1) * 0.999999)
        lower = torch.zeros(b, dtype=torch.float64, device=dev)
        upper = torch.full((b,), 1e10, dtype=torch.float64, device=dev)
        const = torch.full((b,), self.initial_const, dtype=torch.float64, device=dev)
        best_l2 = torch.full((b,), float("inf"), dtype=x.dtype, device=dev)
        best_adv = x.clone()
        total = 0
        for outer in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and outer == self.binary_search_steps - 1:
                const = upper.clone()
            c = const.to(x.dtype)
            mod = torch.zeros_like(x, requires_grad=True)
            opt = torch.optim.Adam([mod], lr=self.lr)
            step_success = torch.zeros(b, dtype=torch.bool, device=dev)
            prev = float("inf")
            for it in range(self.steps):
                x_new = (torch.tanh(w0 + mod) + 1) / 2
                out = self.model(x_new)
                z = out.logits
                if onehot is None:
                    onehot = torch.zeros_like(z.detach()).scatter_(1, label.view(-1, 1), 1.0)
                l2 = (x_new - x).flatten(1).pow(2).sum(1)
                loss = l2.sum() + (c * self._margin(z, onehot)).sum()
                (g,) = torch.autograd.grad(loss, mod)
                mod.grad = g
                opt.step()
                total += 1
                with torch.no_grad():
                    zd = z.detach()
                    adj = zd - self.kappa * onehot if self.targeted else zd + self.kappa * onehot
                    succ = success_mask(adj.argmax(1), y, target)
                    l2d = l2.detach()
                    step_success |= succ
                    better = succ & (l2d < best_l2)
                    best_l2 = torch.where(better, l2d, best_l2)
                    best_adv[better] = x_new.detach()[better]
                    if tracker is not None:
                        tracker.update(x_new.detach(), out)
                if self.abort_early and it % max(self.steps // 10, 1) == 0:
                    lv = float(loss.detach())
                    if lv > prev * 0.9999:
                        break
                    prev = lv
            # binary search over c, per example (released code)
            upper = torch.where(step_success, torch.minimum(upper, const), upper)
            lower = torch.where(step_success, lower, torch.maximum(lower, const))
            bounded = upper < 1e9
            const = torch.where(bounded, (lower + upper) / 2, torch.where(step_success, const, const * 10))
        found = torch.isfinite(best_l2)
        x_adv = torch.where(found.view(-1, *([1] * (x.dim() - 1))), best_adv, x)
        if tracker is None:
            return AttackResult(x_adv.detach(), None, None, total)
        best, x_best = tracker.result(x_adv)
        return AttackResult(x_adv.detach(), best, x_best, total, tracker.first)
