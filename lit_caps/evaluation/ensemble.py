"""The per-example worst case over several attacks on the same images (AutoAttack's ensemble, Croce &
Hein 2020): an example counts as successful, undetected or best-iterate undetected when *any* member
attack's result says so.

Members are result dicts of :func:`~lit_caps.evaluation.evaluate_attack` (or their ``examples``) for
the same model, threshold and seeded test images (the same indices, and for targeted attacks the
same targets: the targets derive from the attack seed, so the members must share it). Rates:

- ``success_rate``: some member's final iterate fools the classifier;
- ``undetected_rate``: some member's final iterate fools the classifier and has ``d <= threshold``;
- ``best_undetected_rate``: some member's best (or final) iterate does (the headline number);
- ``undetected_vs_fpr``: per example the lowest final-iterate distance among the members whose
  final iterate succeeded, against the thresholds at each FPR of the validation distances (a lower
  bound on the ensemble's curve: the best iterates were chosen at the 5% threshold only).

``correct_only=True`` restricts every rate to the images the model classifies correctly when clean.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..detection import undetected_vs_fpr, wilson_interval

FLAGS = ("success", "undetected", "best_undetected")


def _examples(member) -> dict:
    return member.get("examples", member) if isinstance(member, dict) else member


def _check_same_images(names, exs) -> None:
    ref = exs[0]
    for name, ex in zip(names[1:], exs[1:]):
        for k in ("index", "y", "target"):
            if list(ex[k]) != list(ref[k]):
                raise ValueError(f"ensemble member {name!r} attacked other images or targets ({k} differs from "
                                 f"{names[0]!r}); members must share the seeded subset and the attack seed")


def rate_block(mask: Tensor, n: int) -> dict:
    k = int(mask.sum())
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else float("nan"), "count": k, "ci": [lo, hi]}


def ensemble(members: dict, *, val_distances: Tensor | None = None, correct_only: bool = False) -> dict:
    """The union over ``members`` ({name: result or examples}) per example; see the module docstring.

    Returns {"n", "members": [names], "<flag>": rate block, "per_member": {name: {"<flag>": block}},
    "first_member": [name of the first member (in order) whose best iterate is undetected, or None],
    "examples": {"index", "target", "<flag>": the union per example} (the kept images, for paired tests),
    "undetected_vs_fpr": {...} (with ``val_distances``)}."""
    names = list(members)
    if not names:
        raise ValueError("an ensemble needs at least one member")
    exs = [_examples(members[k]) for k in names]
    _check_same_images(names, exs)
    keep = torch.ones(len(exs[0]["index"]), dtype=torch.bool)
    if correct_only:
        keep = torch.as_tensor(exs[0]["clean_pred"]) == torch.as_tensor(exs[0]["y"])
    n = int(keep.sum())
    flags = {f: torch.stack([torch.as_tensor(ex[f], dtype=torch.bool)[keep] for ex in exs]) for f in FLAGS}
    out = {"n": n, "members": names, "correct_only": bool(correct_only)}
    for f in FLAGS:
        out[f] = rate_block(flags[f].any(0), n)
    out["per_member"] = {name: {f: rate_block(flags[f][i], n) for f in FLAGS} for i, name in enumerate(names)}
    best = flags["best_undetected"]
    first = torch.where(best.any(0), best.float().argmax(0), torch.full((n,), -1))
    out["first_member"] = [names[i] if i >= 0 else None for i in first.tolist()]
    out["examples"] = {k: [v for v, kept in zip(exs[0][k], keep.tolist()) if kept] for k in ("index", "target")}
    out["examples"].update({f: flags[f].any(0).tolist() for f in FLAGS})
    if val_distances is not None and n:
        dist = torch.stack([torch.as_tensor(ex["adv_dist"], dtype=torch.float64)[keep] for ex in exs])
        succ = flags["success"]
        lowest = torch.where(succ, dist, torch.full_like(dist, float("inf"))).amin(0)
        f, r = undetected_vs_fpr(val_distances, lowest.clamp(max=1e30), succ.any(0))
        out["undetected_vs_fpr"] = {"fpr": f.tolist(), "undetected_rate": r.tolist()}
    return out
