"""Trained models for the experiments: find, load and (when asked) train the run of a config.

A model is either a local ``lit-caps fit`` run folder (``runs/<dataset>/<run>/``: config.yaml,
checkpoints/, summary.json) or a committed model card (``reports/models/<dataset>/<run>/``, see
:mod:`lit_caps.store`), used when no local run of the same config exists. Both load into a
:class:`LoadedRun`: the evaluated model with its detection threshold (5% FPR on the validation
split), validation distances and the dataset's test split.

    find_run(runs_root, dataset, model, seed)   the summary of the complete run (or RunNotFoundError
                                                naming the ``lit-caps fit`` command that makes it)
    load_run(ckpt)                              (config, datamodule, module) of a run's checkpoint
    load_trained(summary)                       a LoadedRun of a found run
    ensure_run(dataset, model, scale)           the run of a scale's training config: reused,
                                                trained when ``train``, else its fit command (a str)
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import store
from .config import (DEFAULT_ARCH, compose, config_hash, parse_overrides, recipe_overrides, run_dir_for,
                     scale_section, set_dotted)
from .data import CapsDataModule, DataNotFoundError
from .errors import UserError
from .evaluation import model_hash
from .io import load_checkpoint
from .training.fit import fit, recover_hint
from .training.module import LitReconstructionClassifier


class RunNotFoundError(FileNotFoundError, UserError):
    """No complete ``lit-caps fit`` run for (dataset, model, seed[, arch])."""


def fit_command(dataset: str, model: str, seed: int, arch: str | None = None) -> str:
    """The ``lit-caps fit`` command that trains (or resumes) the default run of (dataset, model, seed)."""
    cmd = f"lit-caps fit --model {model} --data {dataset} --seed {seed}"
    if arch is not None and arch != DEFAULT_ARCH.get(dataset):
        cmd += f" --arch {arch}"
    return cmd + "".join(f" {o}" for o in recipe_overrides())


def default_config(dataset: str, model: str, seed: int, arch: str | None) -> dict | None:
    """The config ``lit-caps fit --model M --data D --seed S [--arch A]`` composes now (LIT_CAPS_RECIPE
    included, which may name an arch), or None for an unknown dataset / arch."""
    try:
        return compose(model, dataset, arch=arch, seed=seed)
    except (FileNotFoundError, ValueError):
        return None


def find_run(runs_root: str | os.PathLike, dataset: str, model: str, seed: int = 0, arch: str | None = None) -> dict:
    """The ``summary.json`` of the complete run of (dataset, model, seed[, arch]) under ``runs_root``.

    Several: with ``arch=None`` the dataset's default arch is preferred when one of them has it;
    then the run of the default config (``lit-caps fit --model M --data D --seed S``, by config
    hash) when there is one, so a newer experimental run never replaces it in a table; else the
    newest (summary.json modification time). ``run_dir`` and ``checkpoint`` in the returned
    dict point to where the run was found (they may have been written relative to another working
    directory); ``summary_path`` is added. Raises :class:`RunNotFoundError` naming the
    ``lit-caps fit`` command that makes the run (or resumes an unfinished one).
    """
    root = Path(runs_root)
    found, unfinished = [], []
    for p in sorted((root / dataset).glob(f"{model}-*-s{int(seed)}-*/summary.json")):
        try:
            s = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if s.get("model") != model or s.get("dataset") != dataset or int(s.get("seed", -1)) != int(seed):
            continue
        if arch is not None and s.get("arch") != arch:
            continue
        (found if s.get("complete") else unfinished).append((p, s))
    for p in sorted((root / dataset).glob(f"{model}-*-s{int(seed)}-*/config.yaml")):
        if not (p.parent / "summary.json").is_file():
            unfinished.append((p.parent / "summary.json", None))
    # the committed model cards (lit_caps.store) count where no local run of the same config exists
    local = {p.parent.name for p, _ in found}
    found += [(p, s) for p, s in store.card_summaries(dataset, model, seed)
              if p.parent.name not in local and (arch is None or s.get("arch") == arch)]
    if not found:
        msg = f"no complete run of {model} on {dataset} with seed {seed}" + (f" and arch {arch}" if arch else "") + \
            f" under {root}/. Train it with:\n    {fit_command(dataset, model, seed, arch)}"
        if root != Path("runs"):
            msg += f" --runs {root}"
        if unfinished:
            msg += "\n(unfinished run(s) there: " + ", ".join(str(p.parent) for p, _ in unfinished) + \
                   "; the same command resumes it)"
        raise RunNotFoundError(msg)
    cfg = default_config(dataset, model, seed, arch)
    preferred = cfg["arch_name"] if cfg else DEFAULT_ARCH.get(dataset)  # LIT_CAPS_RECIPE may name the arch
    if arch is None and any(s.get("arch") == preferred for _, s in found):
        found = [(p, s) for p, s in found if s.get("arch") == preferred]
    default = config_hash(cfg) if cfg else None
    recipe = recipe_overrides()
    if any(s.get("config_hash") == default for _, s in found):  # the default config's run, however old
        found = [(p, s) for p, s in found if s.get("config_hash") == default]
    elif recipe:  # an explicit recipe never falls back to another recipe's model
        raise RunNotFoundError(f"no complete run of {model} on {dataset} with seed {seed} and LIT_CAPS_RECIPE="
                               f"{' '.join(recipe)!r} (config {default}) under {root}/. Train it with:\n"
                               f"    {fit_command(dataset, model, seed, arch)}")
    # the newest local run; a committed model card only when no local run is left (its files'
    # modification times are those of the checkout)
    p, s = max(found, key=lambda ps: (not in_store(ps[0]), ps[0].stat().st_mtime_ns))
    if default is not None and s.get("config_hash") != default:
        print(f"[lit-caps] warning: no complete run of the default config ({default}) for {model} on {dataset} "
              f"(seed {seed}); using the newest complete run {p.parent} (config {s.get('config_hash')}). "
              f"Train the default with `{fit_command(dataset, model, seed, arch)}`, or set LIT_CAPS_RECIPE "
              f"to use one recipe's runs only.", file=sys.stderr)
    return located(p, s)


def in_store(summary_path: Path) -> bool:
    """A committed model card (its model.pt, no Lightning checkpoints) rather than a run folder."""
    return (summary_path.parent / store.MODEL_FILE).is_file() and not (summary_path.parent / "checkpoints").is_dir()


def located(summary_path: Path, s: dict) -> dict:
    """A summary with ``run_dir``, ``checkpoint`` and ``summary_path`` pointing to where it was found
    (a run folder: checkpoints/last.ckpt, or best.ckpt for runs that select the best validation
    epoch; a committed model card: its model.pt)."""
    if in_store(summary_path):
        ckpt = summary_path.parent / store.MODEL_FILE
    else:
        ckpt = summary_path.parent / "checkpoints" / Path(s.get("checkpoint") or "last.ckpt").name
    return dict(s, run_dir=str(summary_path.parent), checkpoint=str(ckpt), summary_path=str(summary_path))


@dataclass
class LoadedRun:
    """A trained model with its detection state and the dataset's test split."""

    summary: dict
    model: Any  # ReconstructionClassifier
    threshold: float
    val_distances: Any
    fpr: float
    test_set: Any
    model_hash: str = ""

    @property
    def name(self) -> str:
        return self.summary["model"]

    @property
    def checkpoint(self) -> str:
        return self.summary["checkpoint"]


_TEST_SETS: dict = {}


def load_run(ckpt: str, overrides: list[str] | None = None):
    """(config, datamodule, module) of a finished run from its checkpoint (config.yaml beside checkpoints/)."""
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt_path}; train one with `lit-caps fit` first")
    cfg_path = ckpt_path.parent.parent / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: --ckpt must point into a run folder made by `lit-caps fit`")
    cfg = yaml.safe_load(cfg_path.read_text())
    for k, v in parse_overrides(overrides or []):
        set_dotted(cfg, k, v)
    # read back with weights_only=True first: a damaged file is one line (DamagedFileError) naming the
    # command that trains the run again, never a traceback from deep inside torch
    run = ckpt_path.parent.parent
    load_checkpoint(ckpt_path, recover_hint=recover_hint(run, ckpt_path) + ", then rerun this command")
    module = LitReconstructionClassifier.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True)
    return cfg, CapsDataModule(**cfg["data"]), module


def load_trained(summary: dict, data_root: str | None = None) -> LoadedRun:
    """Load a run found by :func:`find_run` (:func:`load_run`) with its test split."""
    overrides = [f"data.root={data_root}"] if data_root else []
    if store.is_model_card(summary["checkpoint"]):
        cfg, dm, module = store.load_model_card(summary["checkpoint"], overrides)
    else:
        cfg, dm, module = load_run(summary["checkpoint"], overrides)
    if module.threshold is None or module.val_distances is None:
        raise RuntimeError(f"{summary['checkpoint']} holds no detection threshold (saved before validation?); "
                           "finish the run with "
                           f"`{fit_command(summary['dataset'], summary['model'], summary['seed'])}`")
    key = json.dumps({k: v for k, v in cfg["data"].items() if k not in ("batch_size", "eval_batch_size",
                                                                         "num_workers")}, sort_keys=True, default=str)
    if key not in _TEST_SETS:
        dm.setup("test")
        _TEST_SETS.clear()  # keep one dataset in memory
        _TEST_SETS[key] = dm.test_set
    model = module.eval_model().eval()
    return LoadedRun(summary=summary, model=model, threshold=float(module.threshold),
                     val_distances=module.val_distances, fpr=float(module.hparams.fpr), test_set=_TEST_SETS[key],
                     model_hash=model_hash(model))



# -- models --------------------------------------------------------------------------------------------
def data_unavailable(dataset: str, data_root: str | None = None) -> str | None:
    """None when ``dataset``'s test split loads, else the reason (the DataNotFoundError's message)."""
    try:
        CapsDataModule(name=dataset, root=data_root).load_split(False)
    except DataNotFoundError as e:
        return str(e)
    return None


def scale_config(dataset: str, model: str, scale: str, seed: int = 0, overrides=()) -> dict:
    """The ``lit-caps fit`` config of a model at a scale (``quick`` / ``paper``: the default recipe)."""
    sc = scale_section(scale, "table3")
    return compose(model, dataset, train=sc["train"], seed=seed, overrides=list(sc["train_overrides"]) + list(overrides))


def ensure_run(dataset: str, model: str, scale: str, *, seed: int = 0, runs_root="runs", train: bool = True,
               overrides=(), data_root: str | None = None) -> LoadedRun | str:
    """The trained model of the scale's config: reused when its run folder holds a complete run,
    trained (or resumed) when ``train``, else the ``lit-caps fit`` command that makes it (a str)."""
    ov = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    return ensure_run_cfg(scale_config(dataset, model, scale, seed, ov), runs_root=runs_root, train=train,
                          data_root=data_root, shown_overrides=overrides)


def ensure_run_cfg(cfg: dict, *, runs_root="runs", train: bool = True, data_root: str | None = None,
                   shown_overrides=()) -> LoadedRun | str:
    """:func:`ensure_run` for a composed ``lit-caps fit`` config."""
    run = run_dir_for(cfg, runs_root)
    sp = run / "summary.json"
    summary = json.loads(sp.read_text()) if sp.is_file() else {}
    done = summary.get("complete") and summary.get("epochs") == cfg["train"]["max_epochs"]
    card = store.card_for(run.name, cfg["data"]["name"]) if not done and not sp.is_file() else None
    if card is not None:  # no local run: the committed model of this config (same run name = same hash)
        csp = card / "summary.json"
        return load_trained(located(csp, json.loads(csp.read_text())), data_root)
    if not done:
        model, dataset, seed = cfg["model"], cfg["data"]["name"], cfg["seed"]
        if not train:
            prof = cfg.get("train_profile", "default")
            return (f"lit-caps fit --model {model} --data {dataset} --seed {seed}"
                    + (f" --train {prof}" if prof != "default" else "") + "".join(f" {o}" for o in shown_overrides))
        print(f"[lit-caps] training {model} on {dataset} (seed {seed}, train profile {cfg.get('train_profile')}) "
              f"-> {run}", flush=True)
        fit(cfg, runs_root=runs_root)
    s = json.loads(sp.read_text())
    s.update(run_dir=str(run), checkpoint=str(run / "checkpoints" / "last.ckpt"), summary_path=str(sp))
    return load_trained(s, data_root)
