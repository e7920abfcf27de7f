"""``lit-caps store save | restore | verify``: the committed store (:mod:`lit_caps.store`).

    lit-caps store save                  # results/ and the default models' cards -> reports/{results,models}
    lit-caps store restore               # reports/results -> results/ (files results/ lacks)
    lit-caps store verify --sample 3     # recompute 3 committed cells from the committed models
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import store
from .config import compose, run_dir_for
from .tracking import log_model_artifact
from .trust import format_checks, verify

#: the default models: the three models on MNIST and Fashion-MNIST, seed 0, default configs
DEFAULT_MODELS = [(d, m) for d in ("mnist", "fashion_mnist") for m in ("capsnet", "cnn_cr", "cnn_r")]


def _default_run_dirs(runs_root: str) -> list[Path]:
    out = []
    for d, m in DEFAULT_MODELS:
        run = run_dir_for(compose(m, d, seed=0), runs_root)
        if (run / "summary.json").is_file():
            out.append(run)
        else:
            print(f"[lit-caps store] no local run {run} (default {m} on {d}): not saved", file=sys.stderr)
    return out


def cmd_store(args) -> int:
    if args.action == "save":
        if not args.results_only:
            for run in args.run_dir or _default_run_dirs(args.runs):
                card = store.save_model(run)
                print(f"[lit-caps store] model card {card}")
                if args.wandb:
                    log_model_artifact(card)
        if not args.models_only:
            written = store.save_results(args.out)
            print(f"[lit-caps store] {len(written)} result file(s) new or changed in {store.results_root()}")
        return 0
    if args.action == "restore":
        store.restore_results(args.out)
        return 0
    if args.action == "verify":
        checks = verify(sample=args.sample, seed=args.seed, paths=args.paths, atol=args.atol,
                        data_root=args.data_root, progress=args.progress)
        print(format_checks(checks))
        bad = [c for c in checks if c.status == "DISAGREE"]
        print(f"[lit-caps store verify] {len(checks)} cell(s): {sum(c.status == 'agree' for c in checks)} agree, "
              f"{len(bad)} disagree, {sum(c.status not in ('agree', 'DISAGREE') for c in checks)} not checkable")
        return 1 if bad else 0
    raise AssertionError(args.action)


def add_parser(sub) -> None:
    p = sub.add_parser("store", help="the committed store of results and models (reports/results, reports/models)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["save", "restore", "verify"])
    p.add_argument("--out", default="results", help="the local results folder")
    p.add_argument("--runs", default="runs", help="the local runs folder (save: the default models' runs)")
    p.add_argument("--run-dir", nargs="+", default=None, help="save: these run folders instead of the defaults")
    p.add_argument("--models-only", action="store_true")
    p.add_argument("--results-only", action="store_true")
    p.add_argument("--wandb", action="store_true", help="save: also log each model card as a W&B model artifact")
    p.add_argument("--sample", type=int, default=3, help="verify: how many committed cells to recompute")
    p.add_argument("--seed", type=int, default=0, help="verify: the seed of the sample")
    p.add_argument("--paths", nargs="+", default=None, help="verify: these store files instead of a sample")
    p.add_argument("--atol", type=float, default=1e-4, help="verify: tolerance on distances and norms")
    p.add_argument("--data-root", default=None)
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_store)
