"""Checks of a command's arguments that run before anything heavy: before a folder, a W&B run or a
model is created, and before any data is loaded.

Each raises a :class:`~lit_caps.errors.UserError` whose message names the fix (the CLI prints it as one
line and exits 2). Config keys and types are checked by :mod:`lit_caps.config` (no torch import);
attack arguments by :func:`lit_caps.attacks.check_attack_args`; here: names, data files on disk,
writable output folders, checkpoints, run folders.
"""
from __future__ import annotations

import difflib
import math
import numbers
import os
import tempfile
from pathlib import Path

import yaml

from .config import DEFAULT_ARCH, MODEL_NAMES, config_key, run_dir_for
from .data import IDX_FILES, IMAGE_SHAPES, CapsDataModule, data_root
from .errors import DamagedFileError, InvalidArgumentError, NotWritableError


def _did_you_mean(word, choices) -> str:
    best = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {best[0]!r}?)" if best else ""


def check_choice(what: str, value, choices) -> None:
    """InvalidArgumentError 'unknown <what> X; choose one of ... (did you mean Y?)'."""
    choices = list(choices)
    if value not in choices:
        raise InvalidArgumentError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}"
                                   + _did_you_mean(value, choices))


def check_model(name: str) -> None:
    check_choice("model", name, MODEL_NAMES)


def check_dataset(name: str) -> None:
    check_choice("dataset", name, DEFAULT_ARCH)


def check_positive_int(flag: str, value, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InvalidArgumentError(f"{flag} {value}: must be an integer >= {minimum}")


# -- attack arguments ------------------------------------------------------------------------------
#: The attack registry's names (``lit_caps.attacks.ATTACKS``) and the datasets with Appendix C presets
#: (``lit_caps.attacks.PRESETS``), here so that arguments are checked without importing torch;
#: tests/test_config.py keeps them equal.
ATTACK_NAMES = ("fgsm", "bim", "pgd", "cw", "r_fgsm", "r_bim", "r_pgd", "selective_pgd", "orthogonal_pgd", "apgd_joint")
ATTACK_DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10")


def check_attack_args(name: str | None = None, *, dataset: str | None = None, beta: float | None = None,
                      eps: float | None = None, steps: int | None = None, step_size: float | None = None,
                      n: int | None = None, chunk_size: int | None = None) -> None:
    """Refuse, before any model or data is loaded, attack arguments that cannot work: an unknown
    attack or a dataset without presets, beta outside [0, 1], eps < 0, step_size <= 0, steps < 1,
    n < 1, chunk_size < 1 (None: not given, not checked). Raises
    :class:`~lit_caps.errors.InvalidArgumentError` (a :class:`~lit_caps.errors.UserError`: the CLI
    prints it as one line); the message names the argument and the fix."""
    def number(what, v, ok, text, integer=False):
        if v is None:
            return
        good = isinstance(v, numbers.Integral) if integer else isinstance(v, numbers.Real)
        if isinstance(v, bool) or not good or not math.isfinite(v) or not ok(v):
            kind = "an integer" if integer else "a number"
            raise InvalidArgumentError(f"{what}={v!r}: must be {kind} {text}")

    if name is not None:
        check_choice("attack", name, ATTACK_NAMES)
    if dataset is not None and dataset not in ATTACK_DATASETS:
        best = difflib.get_close_matches(str(dataset), list(ATTACK_DATASETS), n=1, cutoff=0.6)
        raise InvalidArgumentError(f"no attack settings (Appendix C presets) for dataset {dataset!r}; choose one of "
                                   f"{', '.join(ATTACK_DATASETS)}" + (f" (did you mean {best[0]!r}?)" if best else ""))
    number("beta", beta, lambda v: 0 <= v <= 1, "in [0, 1] (the weight of the detector's term; 0.5 by default)")
    number("eps", eps, lambda v: v >= 0, ">= 0 (the L-inf bound, e.g. 0.3 on MNIST)")
    number("step_size", step_size, lambda v: v > 0, "> 0")
    number("steps", steps, lambda v: v >= 1, ">= 1", integer=True)
    number("n", n, lambda v: v >= 1, ">= 1 (examples of the test subset)", integer=True)
    number("chunk_size", chunk_size, lambda v: v >= 1, ">= 1", integer=True)


# -- data ------------------------------------------------------------------------------------------
def required_files(name: str, cifar10_split_test: bool = False) -> list[list[str]]:
    """Alternatives (any one suffices) of the paths each split of ``name`` needs, as the loaders in
    lit_caps/data/sources.py reads them (tests/test_config.py keeps the two in step)."""
    if name in ("mnist", "mnist_c", "fashion_mnist"):
        folder = "FashionMNIST" if name == "fashion_mnist" else "MNIST"
        return [[f"{folder}/raw/{f}"] for f in IDX_FILES]
    if name == "svhn":
        return [["SVHN/train_32x32.mat"], ["SVHN/test_32x32.mat"]]
    splits = ("test",) if cifar10_split_test else ("train", "test")
    return [[f"CIFAR10_png/{s}", "cifar-10-batches-py"] for s in splits]


def check_data(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
               cifar10_split_test: bool = False) -> None:
    """Raise :class:`lit_caps.data.DataNotFoundError` (what is missing, where, how to get it) unless
    the files of ``name`` are under ``root`` (default $LIT_CAPS_DATA or ./data). Only looks at which
    files exist (loading CIFAR-10's PNGs takes a while); nothing to check with ``download``."""
    if download:
        return
    r = data_root(root)
    need = required_files(name, cifar10_split_test)
    if all(any((r / p).exists() for p in alts) for alts in need):
        return
    # the data module's own loader says what is missing and how to get it
    dm = CapsDataModule(name=name, root=None if root is None else str(root), cifar10_split_test=cifar10_split_test)
    dm.load_split(False)
    dm.load_split(True)


def check_config_data(cfg: dict) -> None:
    """:func:`check_data` for a config's data group."""
    d = cfg["data"]
    check_data(d["name"], d.get("root"), download=bool(d.get("download")),
               cifar10_split_test=bool(d.get("cifar10_split_test")))


# -- folders and files ------------------------------------------------------------------------------
def check_writable(path: str | os.PathLike, flag: str) -> None:
    """NotWritableError unless ``path`` (an output folder, existing or not) can be created and written
    to: tries a temporary file in the nearest existing folder (os.access is wrong for root, ACLs and
    read-only mounts). Creates nothing that stays."""
    p = Path(path).expanduser().absolute()
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise NotWritableError(f"{flag} {path}: {anc} is a file, not a folder; choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as e:
        raise NotWritableError(f"{flag} {path}: cannot write to {anc} ({e.strerror or e}); choose a writable "
                               f"{flag} or fix the folder's permissions") from None


def read_yaml_file(path: Path, what: str):
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path} ({what}) cannot be read: {' '.join(str(e).split())[:200]}; restore it or "
                               f"remove the run folder") from None


def check_ckpt(ckpt: str | os.PathLike) -> dict:
    """The config of the run a ``--ckpt`` belongs to (``<run>/config.yaml`` beside ``checkpoints/``);
    InvalidArgumentError when the checkpoint or that config is missing."""
    p = Path(ckpt)
    if not p.is_file():
        hint = "; list finished runs with `ls runs/*/*/checkpoints/last.ckpt`, or train one with `lit-caps fit`"
        raise InvalidArgumentError(f"--ckpt {ckpt}: no such file" + ("" if p.parent.is_dir() else hint))
    cfg_path = p.parent.parent / "config.yaml"
    if not cfg_path.is_file():
        raise InvalidArgumentError(f"--ckpt {ckpt}: {cfg_path} not found; --ckpt must point into a run folder "
                                   f"made by `lit-caps fit` (<run>/checkpoints/<name>.ckpt)")
    cfg = read_yaml_file(cfg_path, "the run's config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("data"), dict) or "name" not in cfg["data"]:
        raise DamagedFileError(f"{cfg_path} is not a run config (no data.name); restore it or remove the run folder")
    return cfg


def check_run_dir(cfg: dict, run: str | os.PathLike) -> None:
    """A run folder that already holds a run must hold one with the same identifying settings (what
    ``lit_caps.training.fit.fit`` would refuse after loading everything)."""
    cfg_path = Path(run) / "config.yaml"
    if not cfg_path.is_file():
        return
    old = read_yaml_file(cfg_path, "the run's config")
    if not isinstance(old, dict) or config_key(old) != config_key(cfg):
        raise InvalidArgumentError(f"{run} holds a run with different settings (see its config.yaml); choose "
                                   f"another --run-dir or remove that folder yourself")


def check_fit(cfg: dict, runs_root: str | os.PathLike = "runs", run_dir: str | os.PathLike | None = None) -> Path:
    """Everything ``lit-caps fit`` can check before it writes a file: the arch fits the dataset's
    images, the data is on disk, the run folder can be written and holds no other run. The config's
    keys, types and names were checked by :func:`lit_caps.config.compose`. Returns the run folder."""
    run = Path(run_dir) if run_dir else run_dir_for(cfg, runs_root)
    check_writable(run, "--run-dir" if run_dir else "--runs")
    check_run_dir(cfg, run)
    name = cfg["data"]["name"]
    shape = cfg["arch"].get("image_shape")
    if shape is not None and tuple(shape) != tuple(IMAGE_SHAPES[name]):
        raise InvalidArgumentError(f"arch {cfg['arch_name']!r} is for images {list(shape)}, but {name} has "
                                   f"{list(IMAGE_SHAPES[name])}; choose a matching arch (e.g. --arch "
                                   f"{DEFAULT_ARCH[name]})")
    check_config_data(cfg)
    return run
