"""Classifier-stage losses of the L-inf attacks (and of stage 1 of the R-attacks).

Each loss is written as the attacker's objective ``J`` [B], to be *ascended*: larger is closer to
the attacker's goal (untargeted: away from the true label ``y``; targeted: towards ``t``). With
``z`` the class scores [B, K] (a CapsNet's capsule lengths, a CNN's logits):

* ``ce`` (the paper's, the default): untargeted ``CE(z, y)``; targeted ``-CE(z, t)``.
* ``cw``: the C&W margin (Carlini & Wagner 2017): untargeted ``max_{j != y} z_j - z_y``;
  targeted ``z_t - max_{j != t} z_j``.
* ``dlr``: the difference of logits ratio (Croce & Hein, ICML 2020, Eq. 6 / 7): untargeted
  ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)``; targeted
  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (pi: the scores sorted, largest first).
* ``logodds`` (capsule models only): the ``cw`` margin of the log-odds ``log(l / (1 - l))`` of the
  capsule lengths ``l``, monotone in the length (the same decisions) and free of the squash's
  saturation near 0 and 1, where the margin of the lengths themselves has vanishing gradients.

Shapes: scores [B, K], label [B] long (y, or t when targeted) -> [B].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "cw", "dlr", "logodds")
LOGODDS_EPS = 1e-6


def check_loss(name: str, model=None) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; choose one of {', '.join(LOSSES)}")
    if name == "logodds" and model is not None and not getattr(model, "scores_are_lengths", False):
        raise ValueError("loss 'logodds' is for capsule models (class scores are capsule lengths in (0, 1)); "
                         "use cw or dlr for a CNN")
    return name


def _other_max(z: Tensor, label: Tensor) -> Tensor:
    """[B] the largest score among the classes other than ``label``."""
    return z.masked_fill(F.one_hot(label, z.shape[1]).bool(), float("-inf")).amax(1)


def margin(z: Tensor, label: Tensor, targeted: bool) -> Tensor:
    """The C&W margin as the attacker's objective: [B]."""
    own = z.gather(1, label[:, None]).squeeze(1)
    other = _other_max(z, label)
    return own - other if targeted else other - own


def dlr(z: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Croce & Hein's DLR loss (untargeted if ``target`` is None) as the attacker's objective: [B]."""
    s = z.sort(1, descending=True).values
    zy = z.gather(1, y[:, None]).squeeze(1)
    if target is None:
        return -(zy - _other_max(z, y)) / (s[:, 0] - s[:, 2] + 1e-12)
    zt = z.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2 + 1e-12)


def log_odds(lengths: Tensor) -> Tensor:
    l = lengths.clamp(LOGODDS_EPS, 1 - LOGODDS_EPS)
    return torch.log(l) - torch.log1p(-l)


def objective(name: str, z: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The attacker's objective ``J`` [B] of loss ``name`` (targeted when ``target`` is given)."""
    targeted = target is not None
    label = target if targeted else y
    if name == "ce":
        ce = F.cross_entropy(z, label, reduction="none")
        return -ce if targeted else ce
    if name == "cw":
        return margin(z, label, targeted)
    if name == "dlr":
        return dlr(z, y, target)
    if name == "logodds":
        return margin(log_odds(z), label, targeted)
    raise ValueError(f"unknown attack loss {name!r}; choose one of {', '.join(LOSSES)}")
