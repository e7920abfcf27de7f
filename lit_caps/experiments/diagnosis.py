"""Diagnosing adversarial examples (Qin et al., Section 6): what Fig. 4 (:mod:`.fig4`) and the
galleries of Fig. 5 / 10 / 11 (:mod:`.galleries`) share.

Both attack with R-PGD at the beta of the model's worst case in Table 3 at the same scale (read from
the Table 3 result files; 0.5, the class default, when Table 3 has not been run), and say which.
"""
from __future__ import annotations

import numpy as np
import torch

from ..attacks import build_attack
from ..evaluation import load_examples, predict_batched
from ..runs import RunNotFoundError, ensure_run
from .cells import results_dir, scale_settings
from .search import Search, search_beta


def worst_beta(run, dataset: str, model: str, scale: str, out_dir="results", targeted: bool = True) -> tuple[float, str]:
    """(beta, where it came from): the worst-case beta of Table 3's finished result files at ``scale``."""
    sc = scale_settings(scale, "table3")
    s = search_beta(run, Search(dataset, model, "r_pgd", targeted), sc, out_dir=results_dir(out_dir, scale),
                    device="cpu", attack_seed=0, only_report=True, progress=False)
    w = s.worst
    if w is None:
        return 0.5, "0.5 (no Table 3 result at this scale: the attack's default)"
    return float(w.beta), f"{w.beta:g} (Table 3's worst targeted beta at scale {scale}, {len(s.done())} betas)"


def attack_towards(model, x, y, t, *, eps, steps, beta, threshold, seed):
    atk = build_attack("r_pgd", model, eps=eps, steps=steps, step_size=0.01, beta=beta, targeted=True,
                       threshold=threshold, generator=torch.Generator().manual_seed(seed))
    with torch.enable_grad():
        res = atk(x, y, t)
    pred, dist = predict_batched(model, res.x_adv)
    return res.x_adv, pred, dist


def test_tensors(run):
    return load_examples(run.test_set, np.arange(len(run.test_set)))[:2]


def prepare(what, dataset, model_name, scale, seed, runs_root, out_dir, train, data_root):
    """(run, model in eval mode on the CPU, worst beta, where it came from, test x, test y)."""
    run = ensure_run(dataset, model_name, scale, seed=seed, runs_root=runs_root, train=train, data_root=data_root)
    if isinstance(run, str):
        raise RunNotFoundError(f"{what}: no trained {model_name} on {dataset}; train it with:\n    {run}")
    beta, beta_src = worst_beta(run, dataset, model_name, scale, out_dir)
    x, y = test_tensors(run)
    return run, run.model.eval().cpu(), beta, beta_src, x, y


def rho(rho: float, p: float) -> str:
    """A rank correlation for the report; undefined (NaN) when the success rates do not vary."""
    if not np.isfinite(rho):
        return "undefined (the pair success rates do not vary)"
    return f"{rho:+.3f} ({p:.2g})"
