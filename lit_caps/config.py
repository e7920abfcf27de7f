"""Configs grouped by concern: ``configs/arch``, ``configs/data``, ``configs/train``.

An experiment config is ``{model, arch_name, arch, data, train, logger, seed}``, composed from one
YAML per group plus ``key.sub=value`` overrides (values parsed as YAML), or read whole from a YAML
file (``--config``). ``config_key`` names what identifies a trained model: two configs with the
same key describe the same checkpoint, so finished runs are reused and a changed setting never
silently writes over an old run.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
from importlib import resources
from pathlib import Path

import yaml

#: The arch each dataset trains with unless --arch / ``arch=NAME`` says otherwise. Fashion-MNIST uses the
#: MNIST sizes with a wider first convolution (arch/mnist_wide.yaml: chosen on validation, README
#: "Fashion-MNIST: the wider first convolution"); MNIST-C evaluates the MNIST models.
DEFAULT_ARCH = {"mnist": "mnist", "fashion_mnist": "mnist_wide", "mnist_c": "mnist", "svhn": "svhn",
                "cifar10": "cifar10"}

#: Settings that do not change what a trained model is (hardware, logging, how often to save).
VOLATILE = {
    "train": {"max_epochs", "checkpoint_every_n_steps", "accelerator", "devices", "limit_val_batches", "limit_test_batches"},
    "data": {"num_workers", "eval_batch_size", "root", "download"},
}

#: Arch settings that only the CNN baselines use: they do not identify a CapsNet.
CNN_ONLY_ARCH = {"cnn_dropout"}

#: Options added after the first runs, "off" at 0 / false: off, they are left out of the key, so
#: runs made before an option existed and runs that switch it off explicitly share one hash.
OFF_WHEN_FALSY = {"train": {"ema_decay", "select_best"}, "data": {"hflip"}}


def config_dir() -> Path:
    return Path(str(resources.files("lit_caps") / "configs"))


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def load_group(group: str, name: str) -> dict:
    path = Path(name)
    if not path.suffix:
        path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {group} config {name!r}; available: {', '.join(available(group))} "
                                f"(or give a path to a YAML file)")
    return yaml.safe_load(path.read_text()) or {}


def set_dotted(cfg: dict, key: str, value) -> None:
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, object]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value (e.g. train.max_epochs=5)")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def recipe_overrides() -> list[str]:
    """``LIT_CAPS_RECIPE``: overrides applied to every composed config before the command line's, so
    a whole pipeline (training, and which runs the tables use) follows one recipe, e.g.
    ``LIT_CAPS_RECIPE="train.ema_decay=0"`` for the models trained before the weight average became
    the default. Empty (the default): the shipped configs."""
    return shlex.split(os.environ.get("LIT_CAPS_RECIPE", ""))


def recipe_env_prefix() -> str:
    """``LIT_CAPS_RECIPE='...' `` when a recipe is set (else empty): reports put it before the command
    that generated them, so a report of another recipe's models says how to regenerate it."""
    r = " ".join(recipe_overrides())
    return f"LIT_CAPS_RECIPE={shlex.quote(r)} " if r else ""


def compose(model: str = "capsnet", data: str = "mnist", arch: str | None = None, train: str = "default",
            seed: int = 0, overrides: list[str] | None = None, config_file: str | None = None) -> dict:
    """Build the full experiment config."""
    if config_file:
        cfg = yaml.safe_load(Path(config_file).read_text())
    else:
        overrides = recipe_overrides() + list(overrides or [])
        # ``arch=NAME`` among the overrides (e.g. in LIT_CAPS_RECIPE) picks a whole arch config, as --arch
        # does; later ``arch.k=v`` overrides still apply on top of it
        named = [v for k, v in parse_overrides(overrides) if k == "arch"]
        overrides = [o for o in overrides if o.split("=", 1)[0].strip() != "arch"]
        if named:
            arch = str(named[-1])
        arch_name = arch or DEFAULT_ARCH[data] if data in DEFAULT_ARCH else arch
        if arch_name is None:
            raise ValueError(f"unknown dataset {data!r}; choose one of {', '.join(DEFAULT_ARCH)}")
        cfg = {
            "model": model,
            "arch_name": Path(arch_name).stem,
            "arch": load_group("arch", arch_name),
            "data": load_group("data", data),
            "train": load_group("train", train),
            "train_profile": Path(train).stem,
            "logger": {"wandb": True, "csv": True, "project": "lit_caps"},
            "seed": seed,
        }
    for k, v in parse_overrides(overrides or []):
        set_dotted(cfg, k, v)
    return cfg


def config_key(cfg: dict) -> dict:
    """The part of a config that identifies a trained model."""
    c = copy.deepcopy(cfg)
    c.pop("logger", None)
    c.pop("train_profile", None)
    c.pop("progress_bar", None)
    for group, keys in VOLATILE.items():
        for k in keys:
            c.get(group, {}).pop(k, None)
    for group, keys in OFF_WHEN_FALSY.items():
        for k in keys:
            if k in c.get(group, {}) and not c[group][k]:
                c[group].pop(k)
    arch = c.get("arch", {})
    for k in CNN_ONLY_ARCH:
        # not identifying a CapsNet; nor, at its default 0, a CNN (configs from before the setting
        # existed keep their hash)
        if str(c.get("model", "")).startswith("capsnet") or not arch.get(k):
            arch.pop(k, None)
    return c


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(config_key(cfg), sort_keys=True).encode()).hexdigest()[:8]


def run_dir_for(cfg: dict, root: str | Path = "runs") -> Path:
    """runs/<dataset>/<model>-<arch>-s<seed>-<hash of the identifying settings>."""
    return Path(root) / cfg["data"]["name"] / f"{cfg['model']}-{cfg['arch_name']}-s{cfg['seed']}-{config_hash(cfg)}"
