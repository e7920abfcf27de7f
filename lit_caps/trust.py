"""The trust check (``lit-caps store verify``): recompute a seeded sample of committed result cells
from the committed models and compare the per-example outcomes, as RobustBench re-evaluates the
models on its leaderboard. A committed number that our own code cannot reproduce from our own
committed model is a number nobody should trust.

For each sampled result the model card with the result's ``model_hash`` is loaded from the store,
the attack is rerun with the recorded settings (same subset, targets, seed, chunking) into a
temporary folder, and every example's clean prediction, adversarial prediction, success,
undetected and best-iterate undetected flags must be equal, and its distances equal to
``atol``. A result whose model is not in the store cannot be checked and is listed as such.
"""
from __future__ import annotations

import gzip
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import store
from .evaluation import evaluate_attack

#: per-example fields that must match exactly
EXACT = ("index", "y", "target", "clean_pred", "adv_pred", "success", "undetected", "best_undetected")
#: per-example fields compared to a tolerance (float rounding of distances and norms)
CLOSE = ("clean_dist", "adv_dist", "linf", "l2")


@dataclass
class Check:
    path: str
    cell: str
    status: str  # "agree", "DISAGREE", "no model", "skipped"
    n: int = 0
    mismatched: int = 0
    max_abs_diff: float = 0.0
    wall_s: float = 0.0
    detail: str = ""


def committed_results(store_root: Path | None = None) -> list[Path]:
    """The store's attack result files (those with per-example outcomes)."""
    root = Path(store_root) / "results" if store_root is not None else store.results_root()
    return sorted(p for p in root.rglob("*.json.gz") if "class_pairs" not in p.name)


def _model_cards() -> dict:
    """model hash -> model.pt of every committed model card."""
    out = {}
    for sp in sorted(store.models_root().glob("*/*/summary.json")):
        s = json.loads(sp.read_text())
        if s.get("model_hash") and (sp.parent / store.MODEL_FILE).is_file():
            out[s["model_hash"]] = sp.parent / store.MODEL_FILE
    return out


def compare(old: dict, new: dict, atol: float = 1e-4) -> tuple[int, float, str]:
    """(examples that differ, largest distance difference, first difference) of two results."""
    eo, en = old["examples"], new["examples"]
    n = len(eo["index"])
    bad, worst, first = set(), 0.0, ""
    for k in EXACT:
        for i, (a, b) in enumerate(zip(eo[k], en[k])):
            if a != b:
                bad.add(i)
                first = first or f"example {eo['index'][i]}: {k} {a} -> {b}"
    for k in CLOSE:
        for i, (a, b) in enumerate(zip(eo[k], en[k])):
            if a is None or b is None:
                if a is not b:
                    bad.add(i)
                continue
            d = abs(float(a) - float(b))
            worst = max(worst, d)
            if d > atol:
                bad.add(i)
                first = first or f"example {eo['index'][i]}: {k} {a} -> {b}"
    if len(en["index"]) != n:
        bad.add(-1)
        first = first or f"{n} examples -> {len(en['index'])}"
    return len(bad), worst, first


def verify(sample: int = 3, seed: int = 0, paths: list[str] | None = None, atol: float = 1e-4,
           data_root: str | None = None, progress: bool = False) -> list[Check]:
    """Recompute ``sample`` committed results (a ``seed``-ed choice, or the given ``paths``)."""
    import torch

    files = [Path(p) for p in paths] if paths else committed_results()
    if not paths:
        files = sorted(random.Random(seed).sample(files, min(sample, len(files))))
    cards = _model_cards()
    loaded: dict = {}
    checks = []
    for f in files:
        old = json.loads(gzip.decompress(f.read_bytes()))
        st = old["settings"]
        cell = (f"{st['dataset']}/{st['model']} {st['attack']} {'targeted' if st['targeted'] else 'untargeted'}"
                + (f" beta={st['beta']:g}" if st.get("beta") is not None else "") + f" N={st['n']}")
        if st.get("source_model_hash"):
            checks.append(Check(str(f), cell, "skipped", detail="black-box transfer results are not rechecked"))
            continue
        card = cards.get(st["model_hash"])
        if card is None:
            checks.append(Check(str(f), cell, "no model", detail=f"no committed model with hash {st['model_hash']}"))
            continue
        if card not in loaded:
            cfg, dm, module = store.load_model_card(card, [f"data.root={data_root}"] if data_root else None)
            dm.setup("test")
            loaded = {card: (module, dm.test_set)}  # one model in memory
        module, test_set = loaded[card]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(False):
            new = evaluate_attack(
                module.eval_model(), test_set, st["attack"], dataset_name=st["dataset"], model_name=st["model"],
                targeted=st["targeted"], eps=st["eps"], beta=st.get("beta"), seed=st["seed"], n=st["n"],
                threshold=module.threshold, val_distances=module.val_distances, settings=st["attack_settings"],
                out_dir=tmp, chunk_size=st["chunk_size"], fpr=st.get("fpr"), progress=progress, compile=False)
        wall = time.perf_counter() - t0
        if new.get("settings_hash") != old.get("settings_hash"):
            checks.append(Check(str(f), cell, "DISAGREE", wall_s=wall,
                                detail=f"settings hash {old.get('settings_hash')} -> {new.get('settings_hash')}"))
            continue
        bad, worst, first = compare(old, new, atol)
        checks.append(Check(str(f), cell, "agree" if bad == 0 else "DISAGREE", n=len(old["examples"]["index"]),
                            mismatched=bad, max_abs_diff=worst, wall_s=wall, detail=first))
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = ["| result | cell | status | examples | differing | max distance diff | wall s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| `{Path(c.path).name}` | {c.cell} | {c.status} | {c.n} | {c.mismatched} | "
                     f"{c.max_abs_diff:.2e} | {c.wall_s:.1f} | {c.detail} |")
    return "\n".join(lines)
