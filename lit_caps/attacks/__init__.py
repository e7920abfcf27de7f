"""Adversarial attacks of Qin et al., ICLR 2020 (Sections 3, 5.1, 5.3; Appendix C).

Standard attacks: FGSM, BIM, PGD (L-inf) and CW-L2; defense-aware reconstructive attacks R-FGSM,
R-BIM, R-PGD. All share one API (:class:`~lit_caps.attacks.base.Attack`)::

    attack = build_attack("r_pgd", model, **preset("mnist", "r_pgd"), beta=0.5, targeted=True,
                          threshold=theta)
    res = attack(x, y, target)   # AttackResult(x_adv, best_undetected, x_best, iterations)

``PRESETS[dataset][attack]`` holds the Appendix C settings:

* eps (L-inf bound): MNIST 0.3, Fashion-MNIST 0.1, SVHN 0.1 ("following previous work");
  CIFAR-10 8/255 (Section 5.4, Fig. 3).
* FGSM / R-FGSM: one step of size c = 0.05 (read literally: also when eps is larger, e.g. MNIST's
  0.3; on CIFAR-10 the 0.05 step is clipped to eps = 8/255, i.e. the classic FGSM).
* BIM / PGD / R-BIM / R-PGD: step size c = 0.01; 1000 / 500 / 200 iterations on MNIST /
  Fashion-MNIST / SVHN. CIFAR-10: 200 iterations, our choice (the paper gives none).
* CW: 1000 iterations (Appendix C); binary search 9 steps from c = 1e-3, Adam lr 0.01, kappa 0
  (the released code's defaults); no eps (``eps`` is None).
* beta (R-* attacks) is not part of the presets: the paper tunes it per model and dataset; the
  class default is 0.5.
"""
from __future__ import annotations

import copy

from .base import (Attack, AttackResult, BestIterateTracker, LinfIterativeAttack, attack_context, project_linf,
                   random_targets, success_mask)
from .apgd import APGDJoint
from .bim import BIM
from .detector_aware import DetectorAwareAttack, LowestDistanceTracker
from .losses import LOSSES
from .orthogonal import OrthogonalPGD
from .selective import SelectivePGD
from .cw import CW
from .fgsm import FGSM
from .pgd import PGD
from .reconstructive import RBIM, RFGSM, RPGD
from ..names import ATTACKS as ATTACK_DISPLAY_NAMES
from ..validate import check_attack_args  # argument checks without torch (re-exported)

#: name -> attack class
ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "bim": BIM,
    "pgd": PGD,
    "cw": CW,
    "r_fgsm": RFGSM,
    "r_bim": RBIM,
    "r_pgd": RPGD,
    # detector-aware (adaptive) attacks beyond the paper: they know the threshold
    "selective_pgd": SelectivePGD,
    "orthogonal_pgd": OrthogonalPGD,
    "apgd_joint": APGDJoint,
}
#: the detector-aware attacks (built with the threshold; the adaptive report)
ADAPTIVE = ("selective_pgd", "orthogonal_pgd", "apgd_joint")
#: APGD's iterations: Croce & Hein use 100 (its schedule converges in fewer than PGD's fixed steps)
APGD_STEPS = 100

PAPER_NAMES = dict(ATTACK_DISPLAY_NAMES)  # one copy of the names: lit_caps.names

#: Appendix C: L-inf bound per dataset (CIFAR-10: Section 5.4).
EPSILON = {"mnist": 0.3, "fashion_mnist": 0.1, "svhn": 0.1, "cifar10": 8 / 255}
#: Appendix C: BIM/PGD iterations per dataset (CIFAR-10: ours).
ITERATIONS = {"mnist": 1000, "fashion_mnist": 500, "svhn": 200, "cifar10": 200}
FGSM_STEP = 0.05
ITERATIVE_STEP = 0.01
CW_SETTINGS = {"steps": 1000, "binary_search_steps": 9, "initial_const": 1e-3, "lr": 0.01, "kappa": 0.0}


def _presets() -> dict[str, dict[str, dict]]:
    out = {}
    for ds, eps in EPSILON.items():
        it = ITERATIONS[ds]
        single = {"eps": eps, "step_size": FGSM_STEP}
        multi = {"eps": eps, "step_size": ITERATIVE_STEP, "steps": it}
        out[ds] = {
            "fgsm": dict(single), "bim": dict(multi), "pgd": dict(multi), "cw": {"eps": None, **CW_SETTINGS},
            "r_fgsm": dict(single), "r_bim": dict(multi), "r_pgd": dict(multi),
            "selective_pgd": dict(multi), "orthogonal_pgd": dict(multi), "apgd_joint": {"eps": eps, "steps": APGD_STEPS},
        }
    return out


#: PRESETS[dataset][attack] -> settings for :func:`build_attack` (see the module docstring).
PRESETS: dict[str, dict[str, dict]] = _presets()


def preset(dataset: str, attack_name: str) -> dict:
    """A copy of the Appendix C settings of ``attack_name`` on ``dataset`` (ValueError if unknown)."""
    if dataset not in PRESETS:
        raise ValueError(f"no attack presets for dataset {dataset!r}; known: {sorted(PRESETS)}")
    if attack_name not in PRESETS[dataset]:
        raise ValueError(f"unknown attack {attack_name!r}; choose one of {sorted(ATTACKS)}")
    return copy.deepcopy(PRESETS[dataset][attack_name])


def build_attack(name: str, model, **settings) -> Attack:
    """``ATTACKS[name](model, **settings)``; settings are the class's keyword arguments
    (eps, targeted, threshold, step_size, steps, beta, ...)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](model, **settings)


__all__ = ["ATTACKS", "PAPER_NAMES", "PRESETS", "EPSILON", "ITERATIONS", "preset", "build_attack", "Attack",
           "AttackResult", "LinfIterativeAttack", "BestIterateTracker", "FGSM", "BIM", "PGD", "CW", "RFGSM", "RBIM",
           "RPGD", "SelectivePGD", "OrthogonalPGD", "APGDJoint", "DetectorAwareAttack", "LowestDistanceTracker",
           "ADAPTIVE", "APGD_STEPS", "LOSSES", "success_mask", "random_targets", "project_linf", "attack_context", "check_attack_args"]
