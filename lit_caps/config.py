"""Configs grouped by concern: ``configs/arch``, ``configs/data``, ``configs/train``.

An experiment config is ``{model, arch_name, arch, data, train, logger, seed}``, composed from one
YAML per group plus ``key.sub=value`` overrides (values parsed as YAML), or read whole from a YAML
file (``--config``). ``config_key`` names what identifies a trained model: two configs with the
same key describe the same checkpoint, so finished runs are reused and a changed setting never
silently writes over an old run.

Configs are strict: every key of an override, of ``LIT_CAPS_RECIPE``, of a ``--config`` file or of a
group file given as a path must be one the code reads, with a value of its type; anything else is a
:class:`~lit_caps.errors.ConfigError` that names the key, the closest valid key and the expected type.
The schema is the union of the shipped group files' keys, typed by their values, plus
:data:`EXTRA_TYPES` for what those files cannot tell (keys no shipped file sets, null defaults).
Checking never changes a valid config, so run hashes stay what they were.
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import math
import os
import shlex
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError, ConfigNotFoundError

#: The arch each dataset trains with unless --arch / ``arch=NAME`` says otherwise. Fashion-MNIST uses the
#: MNIST sizes with a wider first convolution (arch/mnist_wide.yaml: chosen on validation, README
#: "Fashion-MNIST: the wider first convolution"); MNIST-C evaluates the MNIST models.
DEFAULT_ARCH = {"mnist": "mnist", "fashion_mnist": "mnist_wide", "mnist_c": "mnist", "svhn": "svhn",
                "cifar10": "cifar10"}

#: The model registry's names (``lit_caps.models.MODELS``), here so that a config is checked without
#: importing torch; tests/test_config.py keeps the two equal.
MODEL_NAMES = ("capsnet", "cnn_cr", "cnn_r", "capsnet_all", "capsnet_winner")

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

RECIPE_ENV = "LIT_CAPS_RECIPE"
GROUPS = ("arch", "data", "train")


def config_dir() -> Path:
    return Path(str(resources.files("lit_caps") / "configs"))


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


# -- types -----------------------------------------------------------------------------------------
class Spec:
    """A value type: ``ok(value)``, its description for messages (``text``, ``plural``) and an
    optional ``coerce`` for text a user means as that type (``1e-3`` is a YAML string, a number here)."""

    def __init__(self, text: str, plural: str, ok, coerce=None):
        self.text, self.plural, self.ok, self.coerce = text, plural, ok, coerce

    def __repr__(self) -> str:
        return f"Spec({self.text})"


def _to_float(v):
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return f if math.isfinite(f) else v
    return v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


BOOL = Spec("true or false", "true/false values", lambda v: isinstance(v, bool))
INT = Spec("an integer (int)", "integers", _is_int)
FLOAT = Spec("a number (float)", "numbers", lambda v: _is_int(v) or isinstance(v, float), _to_float)
STR = Spec("a string (str)", "strings", lambda v: isinstance(v, str))
NULL = Spec("null", "nulls", lambda v: v is None)
ANY = Spec("any value", "values", lambda v: True)


def list_of(inner: Spec) -> Spec:
    return Spec(f"a list of {inner.plural}", f"lists of {inner.plural}",
                lambda v: isinstance(v, (list, tuple)) and all(inner.ok(x) for x in v))


def one_of(*specs: Spec) -> Spec:
    def join(parts):
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    coercers = [s.coerce for s in specs if s.coerce]

    def coerce(v):
        for c in coercers:
            w = c(v)
            if any(s.ok(w) for s in specs):
                return w
        return v

    return Spec(join([s.text for s in specs]), join([s.plural for s in specs]),
                lambda v: any(s.ok(v) for s in specs), coerce if coercers else None)


def _spec_of(values: list) -> Spec:
    """The type of a key from its values in the shipped files (ints and floats together: a number)."""
    vals = [v for v in values if v is not None]
    if not vals:
        raise TypeError("null everywhere")
    if all(isinstance(v, bool) for v in vals):
        return BOOL
    if all(_is_int(v) for v in vals):
        return INT
    if all(_is_int(v) or isinstance(v, float) for v in vals):
        return FLOAT
    if all(isinstance(v, str) for v in vals):
        return STR
    if all(isinstance(v, list) for v in vals):
        items = [x for v in vals for x in v]
        return list_of(_spec_of(items) if items else ANY)
    kinds: dict[str, list] = {}
    for v in vals:
        kinds.setdefault("bool" if isinstance(v, bool) else "num" if isinstance(v, (int, float)) else
                         type(v).__name__, []).append(v)
    return one_of(*(_spec_of(vs) for vs in kinds.values()))


#: Types the shipped group files do not tell: keys the code reads that no shipped file sets (their
#: consumers: lit_caps/train.py ``_trainer_kwargs`` / ``build``, lit_caps/data.py ``CapsDataModule``,
#: the constructors in lit_caps/models/), and keys whose shipped default is null or that take more
#: than one kind of value. These win over the types read from the files.
_LIMIT = one_of(INT, FLOAT, NULL)  # Lightning's limit_*_batches: a number of batches or a fraction
EXTRA_TYPES: dict[str, dict[str, Spec]] = {
    "train": {
        "limit_train_batches": _LIMIT, "limit_val_batches": _LIMIT, "limit_test_batches": _LIMIT,
        "fast_dev_run": one_of(BOOL, INT), "log_every_n_steps": INT, "capsule_lr_scale": FLOAT, "select_best": BOOL,
        "devices": one_of(INT, STR, list_of(INT)), "precision": one_of(STR, INT), "accelerator": STR,
    },
    "data": {
        "root": one_of(STR, NULL), "download": BOOL, "hflip": BOOL, "corruption_seed": INT,
        "cifar10_test_holdout": INT, "limit_train": one_of(INT, NULL),
    },
    "arch": {
        "num_classes": INT, "bias_init": FLOAT, "decoder_input": STR,
        "mean": one_of(list_of(FLOAT), NULL), "std": one_of(list_of(FLOAT), NULL),
    },
}

#: Top-level keys that are not groups of the configs/ folders.
TOP_TYPES: dict[str, Spec] = {"model": STR, "arch_name": STR, "train_profile": STR, "seed": INT, "progress_bar": BOOL}
LOGGER_TYPES: dict[str, Spec] = {"wandb": BOOL, "csv": BOOL, "project": STR}

#: Arch keys that only some models' constructors take (the others' constructors refuse them).
#: Every other arch key is taken by all of them: one arch config describes the three models
#: (CapsNet ignores ``cnn_dropout``, the CNNs ignore ``routing_iterations`` and ``init_gain``).
ARCH_ONLY_FOR = {
    "bias_init": ("capsnet", "capsnet_all", "capsnet_winner"),
    "decoder_input": ("capsnet",),  # capsnet_all / capsnet_winner fix it
}

#: Keys every config must have (read with ``cfg[...]``, not ``.get``).
REQUIRED = ("model", "arch_name", "arch", "data", "train", "seed", "data.name", "train.max_epochs", "train.lr",
            "train.recon_weight")

#: Allowed values of some keys, and ranges: (test, text).
CHOICES = {"arch.decoder_input": ("masked", "all", "winner")}
RANGES = {
    "train.max_epochs": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.fpr": (lambda v: 0 < v < 1, "in (0, 1)"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 = off)"),
    "train.checkpoint_every_n_steps": (lambda v: v >= 1, ">= 1"),
    "data.batch_size": (lambda v: v >= 1, ">= 1"),
    "data.eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "data.val_size": (lambda v: v >= 1, ">= 1"),
    "data.shift": (lambda v: v >= 0, ">= 0"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "arch.cnn_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def _read_yaml(path: Path, what: str):
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigNotFoundError(f"{what} {path} not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read ({type(e).__name__}: {e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise ConfigError(f"{what} {path} is not valid YAML ({first})") from None


@functools.lru_cache(maxsize=None)
def schema() -> dict[str, dict[str, Spec]]:
    """{group: {key: Spec}} for arch, data, train (from the shipped files + EXTRA_TYPES), and logger."""
    out = {}
    for group in GROUPS:
        values: dict[str, list] = {}
        for name in available(group):
            for k, v in (_read_yaml(config_dir() / group / f"{name}.yaml", f"{group} config") or {}).items():
                values.setdefault(k, []).append(v)
        specs = {}
        for k, vs in values.items():
            if k in EXTRA_TYPES[group]:
                specs[k] = EXTRA_TYPES[group][k]
                continue
            try:
                specs[k] = _spec_of(vs)
            except TypeError:
                raise RuntimeError(f"configs/{group}: {k} is null in every shipped file; give its type in "
                                   f"config.EXTRA_TYPES") from None
        for k, s in EXTRA_TYPES[group].items():
            specs.setdefault(k, s)
        out[group] = specs
    out["logger"] = dict(LOGGER_TYPES)
    return out


def valid_keys() -> list[str]:
    """Every valid dotted key (``train.lr``) and top-level key."""
    keys = list(TOP_TYPES) + [g for g in schema()]
    keys += [f"{g}.{k}" for g, ks in schema().items() for k in ks]
    return sorted(keys)


def _suggest(word: str, choices, what: str = "key") -> str:
    """'; did you mean X?' for the closest of ``choices`` (difflib), else '; valid ...: a, b, c'."""
    choices = sorted(choices)
    best = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if best:
        return f"; did you mean {best[0]!r}?"
    if len(choices) <= 20:
        return f"; valid {what}s: {', '.join(choices)}"
    return ""


def _in(where: str | None) -> str:
    return f" in {where}" if where else ""


def _unknown_key(key: str, where: str | None) -> ConfigError:
    group = key.split(".", 1)[0]
    dotted = [k for k in valid_keys() if "." in k]
    if group in schema() and "." in key:
        sub = key.split(".", 1)[1]
        elsewhere = [f"{g}.{sub}" for g in schema() if g != group and sub in schema()[g]]
        best = elsewhere or [f"{group}.{k}" for k in difflib.get_close_matches(sub, list(schema()[group]), n=1,
                                                                                 cutoff=0.6)]
        choices = [f"{group}.{k}" for k in schema()[group]]
        hint = f"; did you mean {best[0]!r}?" if best else f"; valid {group} keys: {', '.join(sorted(choices))}"
    else:
        hint = _suggest(key, dotted if "." in key else valid_keys())
        if "did you mean" not in hint:
            hint = f"; valid top-level keys: {', '.join(list(TOP_TYPES) + list(schema()))}"
    return ConfigError(f"unknown config key {key!r}{_in(where)}{hint}")


def spec_for(key: str) -> Spec | None:
    """The type of a dotted key, None for a group key (``train``), ConfigError if unknown."""
    parts = key.split(".")
    if len(parts) == 1:
        if key in TOP_TYPES:
            return TOP_TYPES[key]
        if key in schema():
            return None
    elif len(parts) == 2 and parts[0] in schema() and parts[1] in schema()[parts[0]]:
        return schema()[parts[0]][parts[1]]
    raise _unknown_key(key, None)


def _check_value(key: str, value, spec: Spec, label: str):
    """``value`` if it is of ``spec`` (after its coercion), else ConfigError '<label>: expected ..., got ...'."""
    if spec.coerce is not None and not spec.ok(value):
        value = spec.coerce(value)
    if not spec.ok(value):
        raise ConfigError(f"{label}: expected {spec.text}, got {value!r}")
    return value


def check_override(key: str, value, raw: str | None = None, where: str | None = None):
    """The value of one ``key=value`` override, checked (and ``1e-3`` read as a number); ConfigError
    for an unknown key, a group set as a whole or a value of the wrong type."""
    try:
        spec = spec_for(key)
    except ConfigError:
        raise _unknown_key(key, where) from None
    label = f"{'' if where is None else where + ': '}{key}={value if raw is None else raw}"
    if spec is None:
        hint = {"data": "; pick a dataset with --data NAME", "train": "; pick a training profile with --train NAME",
                "arch": ""}.get(key, "")
        raise ConfigError(f"{label}: {key} is a group of settings; set one with {key}.<name>=value{hint}")
    return _check_value(key, value, spec, label)


def check_group(group: str, values, where: str | None = None) -> dict:
    """A group's mapping (a group file, or the group of a whole config) with every key known and typed."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where or group}: {group} must be a mapping of settings, got {values!r}")
    specs = schema()[group]
    for k in list(values):
        if k not in specs:
            raise _unknown_key(f"{group}.{k}", where)
        values[k] = _check_value(f"{group}.{k}", values[k], specs[k], f"{_prefix(where)}{group}.{k}")
    return values


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def check_tree(cfg, where: str | None = None) -> dict:
    """A whole config (a --config file): known keys, right types; groups checked by :func:`check_group`."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where or 'config'}: a config must be a YAML mapping, got {type(cfg).__name__}")
    for k in list(cfg):
        if k in schema():
            cfg[k] = check_group(k, cfg[k], where)
        elif k in TOP_TYPES:
            cfg[k] = _check_value(k, cfg[k], TOP_TYPES[k], f"{_prefix(where)}{k}")
        else:
            raise _unknown_key(str(k), where)
    return cfg


def _get(cfg: dict, key: str):
    node = cfg
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            raise KeyError(key)
        node = node[p]
    return node


def check_config(cfg: dict, where: str | None = None) -> dict:
    """What a composed config needs beyond known keys and types: the required keys, a known model and
    dataset, arch keys the model's constructor takes, and values in range. Returns ``cfg``."""
    for key in REQUIRED:
        try:
            _get(cfg, key)
        except KeyError:
            raise ConfigError(f"config key {key!r} is missing{_in(where)}") from None
    model = cfg["model"]
    if model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {model!r}{_in(where)}; choose one of {', '.join(MODEL_NAMES)}"
                          + _did_you_mean(model, MODEL_NAMES))
    name = cfg["data"]["name"]
    if name not in DEFAULT_ARCH:
        raise ConfigError(f"unknown dataset {name!r}{_in(where)}; choose one of {', '.join(DEFAULT_ARCH)}"
                          + _did_you_mean(name, DEFAULT_ARCH))
    for k in cfg["arch"]:
        only = ARCH_ONLY_FOR.get(k)
        if only is not None and model not in only:
            raise ConfigError(f"config key 'arch.{k}'{_in(where)} does not apply to model {model!r} (taken only by "
                              f"{', '.join(only)}); remove it")
    for key, choices in CHOICES.items():
        try:
            v = _get(cfg, key)
        except KeyError:
            continue
        if v not in choices:
            raise ConfigError(f"{key}={v}{_in(where)}: expected one of {', '.join(choices)}")
    for key, (ok, text) in RANGES.items():
        try:
            v = _get(cfg, key)
        except KeyError:
            continue
        if (_is_int(v) or isinstance(v, float)) and not ok(v):
            raise ConfigError(f"{key}={v}{_in(where)}: must be {text}")
    return cfg


def _did_you_mean(word, choices) -> str:
    best = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {best[0]!r}?)" if best else ""


def load_group(group: str, name: str) -> dict:
    path = Path(name)
    if not path.suffix:
        path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigNotFoundError(f"no {group} config {name!r}; available: {', '.join(available(group))} "
                                  f"(or give a path to a YAML file){_did_you_mean(name, available(group))}")
    where = None if path.parent == config_dir() / group else str(path)
    return check_group(group, _read_yaml(path, f"{group} config"), where or f"{group} config {name}")


def load_config_file(path: str | os.PathLike) -> dict:
    """A whole experiment config (``--config``, e.g. a run's config.yaml), checked."""
    p = Path(path)
    if not p.is_file():
        raise ConfigNotFoundError(f"--config {p}: no such file")
    return check_tree(_read_yaml(p, "config file"), str(p))


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
        raise ConfigError(f"{_prefix(where)}override {item!r} must look like key.sub=value (e.g. train.max_epochs=5)")
    k, v = item.split("=", 1)
    try:
        value = yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise ConfigError(f"{_prefix(where)}{item}: the value is not valid YAML ({' '.join(str(e).split())})") from None
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
                raise type(e)(f"{_prefix(where)}arch={raw}: {e}") from None
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
                              + _did_you_mean(data, DEFAULT_ARCH))
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
