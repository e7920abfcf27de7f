"""Configs grouped by concern: ``configs/arch``, ``configs/data``, ``configs/train``; experiment
scales in ``configs/scales``.

An experiment config is ``{model, arch_name, arch, data, train, logger, seed}``, composed from one
YAML per group plus ``key.sub=value`` overrides (values parsed as YAML), or read whole from a YAML
file (``--config``). ``config_key`` names what identifies a trained model: two configs with the
same key describe the same checkpoint, so finished runs are reused and a changed setting never
silently writes over an old run.

Configs are strict: every key of an override, of ``LIT_CAPS_RECIPE``, of a ``--config`` file or of a
group file given as a path must be one the code reads, with a value of its type; anything else is a
:class:`~lit_caps.errors.ConfigError` that names the key, the closest valid key and the expected type.
The schema and those checks live in :mod:`lit_caps.config_schema`; checking never changes a valid
config, so run hashes stay what they were.

An experiment scale (``smoke``, ``quick``, ``paper``) is one YAML file of ``configs/scales`` with a
section per experiment (``table1``, ``rpgd_beta``, ``table7``, ``table3``, ``fig1``, ``table2``,
``fig3``, ``fig4``, ``galleries``): :func:`load_scale`, :func:`scale_section`. YAML has no tuples:
sequences come back as lists.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import shlex
from pathlib import Path

import yaml

from .config_schema import (DEFAULT_ARCH, MODEL_NAMES, available, check_config, check_group, check_override,
                            check_tree, config_dir, did_you_mean, read_yaml, where_prefix)
from .errors import ConfigError, ConfigNotFoundError

__all__ = [
    # re-exported from lit_caps.config_schema (imported from here by other modules)
    "DEFAULT_ARCH", "MODEL_NAMES", "available", "check_config",
    # composing, overrides, the recipe
    "RECIPE_ENV", "load_group", "load_config_file", "set_dotted", "parse_overrides", "recipe_overrides",
    "recipe_env_prefix", "check_overrides", "check_recipe", "compose",
    # run identity
    "VOLATILE", "CNN_ONLY_ARCH", "OFF_WHEN_FALSY", "config_key", "config_hash", "run_dir_for",
    # experiment scales
    "SCALE_NAMES", "load_scale", "scale_section",
]

#: Settings that do not change what a trained model is (hardware, logging, how often to save).
VOLATILE = {
    # compile: the training forward through torch.compile; the same fp32 arithmetic in another order,
    # like another accelerator (5-epoch check: reports/training_check.md)
    "train": {"max_epochs", "checkpoint_every_n_steps", "accelerator", "devices", "limit_val_batches", "limit_test_batches",
              "compile"},
    "data": {"num_workers", "eval_batch_size", "root", "download"},
}

#: Arch settings that only the CNN baselines use: they do not identify a CapsNet.
CNN_ONLY_ARCH = {"cnn_dropout"}

#: Options added after the first runs, "off" at 0 / false: off, they are left out of the key, so
#: runs made before an option existed and runs that switch it off explicitly share one hash.
OFF_WHEN_FALSY = {"train": {"ema_decay", "select_best"}, "data": {"hflip"}, "arch": {"backbone"}}

#: Options added after the first runs whose default is not falsy: at that default they are left out
#: of the key too (a run that names the default shares the hash of one that does not).
OMIT_AT_DEFAULT = {"train": {"lr_schedule": "exponential"}}

RECIPE_ENV = "LIT_CAPS_RECIPE"

#: The experiment scales, smallest first: configs/scales/<name>.yaml.
SCALE_NAMES = ("smoke", "quick", "paper")


def load_group(group: str, name: str) -> dict:
    path = Path(name)
    if not path.suffix:
        path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigNotFoundError(f"no {group} config {name!r}; available: {', '.join(available(group))} "
                                  f"(or give a path to a YAML file){did_you_mean(name, available(group))}")
    where = None if path.parent == config_dir() / group else str(path)
    return check_group(group, read_yaml(path, f"{group} config"), where or f"{group} config {name}")


def load_config_file(path: str | os.PathLike) -> dict:
    """A whole experiment config (``--config``, e.g. a run's config.yaml), checked."""
    p = Path(path)
    if not p.is_file():
        raise ConfigNotFoundError(f"--config {p}: no such file")
    return check_tree(read_yaml(p, "config file"), str(p))


def set_dotted(cfg: dict, key: str, value) -> None:
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _parse_one(item: str, where: str | None = None) -> tuple[str, object, str]:
    if "=" not in item:
        raise ConfigError(f"{where_prefix(where)}override {item!r} must look like key.sub=value (e.g. train.max_epochs=5)")
    k, v = item.split("=", 1)
    try:
        value = yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where_prefix(where)}{item}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    return k.strip(), value, v


def parse_overrides(items: list[str]) -> list[tuple[str, object]]:
    """``key.sub=value`` items -> (key, value parsed as YAML); the keys are not checked here."""
    return [(k, v) for k, v, _ in (_parse_one(i) for i in items)]


def recipe_overrides() -> list[str]:
    """``LIT_CAPS_RECIPE``: overrides applied to every composed config before the command line's, so
    a whole pipeline (training, and which runs the tables use) follows one recipe, e.g.
    ``LIT_CAPS_RECIPE="train.ema_decay=0"`` for the models trained before the weight average became
    the default. Empty (the default): the shipped configs."""
    try:
        return shlex.split(os.environ.get(RECIPE_ENV, ""))
    except ValueError as e:
        raise ConfigError(f"{RECIPE_ENV}: {e} (it holds key.sub=value items, shell-quoted)") from None


def recipe_env_prefix() -> str:
    """``LIT_CAPS_RECIPE='...' `` when a recipe is set (else empty): reports put it before the command
    that generated them, so a report of another recipe's models says how to regenerate it."""
    r = " ".join(recipe_overrides())
    return f"LIT_CAPS_RECIPE={shlex.quote(r)} " if r else ""


def check_overrides(items: list[str], where: str | None = None) -> None:
    """Refuse unknown keys and wrong types among ``key.sub=value`` items (``arch=NAME`` must name an
    arch config), without composing a config: for overrides applied to a stored config."""
    for k, v, raw in (_parse_one(i, where) for i in items):
        if k == "arch" and not (v is None or isinstance(v, (dict, list))):
            try:
                load_group("arch", str(v))
            except ConfigError as e:
                raise type(e)(f"{where_prefix(where)}arch={raw}: {e}") from None
        else:
            check_override(k, v, raw, where)


def check_recipe() -> None:
    """``LIT_CAPS_RECIPE`` checked on its own (the CLI does it first, for every command)."""
    check_overrides(recipe_overrides(), RECIPE_ENV)


def compose(model: str = "capsnet", data: str = "mnist", arch: str | None = None, train: str = "default",
            seed: int = 0, overrides: list[str] | None = None, config_file: str | None = None) -> dict:
    """Build the full experiment config (checked: ConfigError for unknown keys, wrong types, unknown names)."""
    items = [(o, None) for o in overrides or []]
    if config_file:
        cfg = load_config_file(config_file)
        where_file = str(config_file)
    else:
        where_file = None
        items = [(o, RECIPE_ENV) for o in recipe_overrides()] + items
    parsed = [(*_parse_one(o, w), w) for o, w in items]
    if not config_file:
        # ``arch=NAME`` among the overrides (e.g. in LIT_CAPS_RECIPE) picks a whole arch config, as --arch
        # does; later ``arch.k=v`` overrides still apply on top of it
        named = [v for k, v, _, _ in parsed if k == "arch"]
        for k, v, raw, w in parsed:
            if k == "arch" and (v is None or isinstance(v, (dict, list))):
                check_override(k, v, raw, w)  # a group set as a whole: refused with the fix
        parsed = [p for p in parsed if p[0] != "arch"]
        if named:
            arch = str(named[-1])
        arch_name = arch or DEFAULT_ARCH[data] if data in DEFAULT_ARCH else arch
        if arch_name is None:
            raise ConfigError(f"unknown dataset {data!r}; choose one of {', '.join(DEFAULT_ARCH)}"
                              + did_you_mean(data, DEFAULT_ARCH))
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
    for k, v, raw, w in parsed:
        if k == "arch" and config_file:
            raise ConfigError(f"arch={raw}: picking an arch config needs a composed config, not --config "
                              f"{config_file}; set arch.<name>=value instead")
        set_dotted(cfg, k, check_override(k, v, raw, w))
    return check_config(cfg, where_file)


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
    for group, defaults in OMIT_AT_DEFAULT.items():
        for k, v in defaults.items():
            if c.get(group, {}).get(k, v) == v:
                c.get(group, {}).pop(k, None)
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


# -- experiment scales -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _read_scale(scale: str) -> dict:
    if scale not in SCALE_NAMES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALE_NAMES)}"
                          + did_you_mean(scale, SCALE_NAMES))
    path = config_dir() / "scales" / f"{scale}.yaml"
    data = read_yaml(path, "scale config")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"scale config {path} must map each experiment to a mapping of settings")
    return data


def load_scale(scale: str) -> dict[str, dict]:
    """Every section of configs/scales/<scale>.yaml, {experiment: {setting: value}} (a fresh copy: the
    caller may change it). ConfigError for an unknown scale."""
    return copy.deepcopy(_read_scale(scale))


def scale_section(scale: str, section: str) -> dict:
    """One experiment's settings at ``scale`` (a fresh copy); ConfigError for an unknown scale or section."""
    sections = _read_scale(scale)
    if section not in sections:
        raise ConfigError(f"no section {section!r} in scale {scale!r} (configs/scales/{scale}.yaml); choose one "
                          f"of {', '.join(sections)}" + did_you_mean(section, sections))
    return copy.deepcopy(sections[section])
