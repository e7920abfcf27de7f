"""What a valid config is: the group files' keys and their types, the known models and datasets,
and the checks that refuse anything else with a :class:`~lit_caps.errors.ConfigError` naming the key,
the closest valid key and the expected type.

The schema is the union of the shipped group files' keys (``configs/arch``, ``configs/data``,
``configs/train``), typed by their values, plus :data:`EXTRA_TYPES` for what those files cannot
tell (keys no shipped file sets, null defaults). Checking never changes a valid config, so run
hashes stay what they were. :mod:`lit_caps.config` composes configs and re-exports what callers use.
"""
from __future__ import annotations

import difflib
import functools
import math
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

GROUPS = ("arch", "data", "train")


def config_dir() -> Path:
    return Path(str(resources.files("lit_caps") / "configs"))


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def read_yaml(path: Path, what: str):
    """A YAML file's content; ConfigNotFoundError / ConfigError (one line) naming ``what`` and the path."""
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


def did_you_mean(word, choices) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``choices``, else empty."""
    best = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {best[0]!r}?)" if best else ""


def where_prefix(where: str | None) -> str:
    """``'<where>: '`` to start a message about a value from ``where``, empty for none."""
    return f"{where}: " if where else ""


def _in(where: str | None) -> str:
    return f" in {where}" if where else ""


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


def spec_of(values: list) -> Spec:
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
        return list_of(spec_of(items) if items else ANY)
    kinds: dict[str, list] = {}
    for v in vals:
        kinds.setdefault("bool" if isinstance(v, bool) else "num" if isinstance(v, (int, float)) else
                         type(v).__name__, []).append(v)
    return one_of(*(spec_of(vs) for vs in kinds.values()))


#: Types the shipped group files do not tell: keys the code reads that no shipped file sets (their
#: consumers: lit_caps/training/fit.py ``_trainer_kwargs`` / ``build``, ``lit_caps.data.CapsDataModule``,
#: the constructors in lit_caps/models/), and keys whose shipped default is null or that take more
#: than one kind of value. These win over the types read from the files.
_LIMIT = one_of(INT, FLOAT, NULL)  # Lightning's limit_*_batches: a number of batches or a fraction
EXTRA_TYPES: dict[str, dict[str, Spec]] = {
    "train": {
        "limit_train_batches": _LIMIT, "limit_val_batches": _LIMIT, "limit_test_batches": _LIMIT,
        "fast_dev_run": one_of(BOOL, INT), "log_every_n_steps": INT, "capsule_lr_scale": FLOAT, "select_best": BOOL,
        "devices": one_of(INT, STR, list_of(INT)), "precision": one_of(STR, INT), "accelerator": STR,
        "lr_schedule": STR,
    },
    "data": {
        "root": one_of(STR, NULL), "download": BOOL, "hflip": BOOL, "corruption_seed": INT,
        "cifar10_test_holdout": INT, "limit_train": one_of(INT, NULL),
    },
    "arch": {
        "num_classes": INT, "bias_init": FLOAT, "decoder_input": STR, "backbone": one_of(list_of(list_of(INT)), NULL),
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
CHOICES = {"arch.decoder_input": ("masked", "all", "winner"), "train.lr_schedule": ("exponential", "onecycle")}
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


@functools.lru_cache(maxsize=None)
def schema() -> dict[str, dict[str, Spec]]:
    """{group: {key: Spec}} for arch, data, train (from the shipped files + EXTRA_TYPES), and logger."""
    out = {}
    for group in GROUPS:
        values: dict[str, list] = {}
        for name in available(group):
            for k, v in (read_yaml(config_dir() / group / f"{name}.yaml", f"{group} config") or {}).items():
                values.setdefault(k, []).append(v)
        specs = {}
        for k, vs in values.items():
            if k in EXTRA_TYPES[group]:
                specs[k] = EXTRA_TYPES[group][k]
                continue
            try:
                specs[k] = spec_of(vs)
            except TypeError:
                raise RuntimeError(f"configs/{group}: {k} is null in every shipped file; give its type in "
                                   f"config_schema.EXTRA_TYPES") from None
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


# -- suggestions -----------------------------------------------------------------------------------
def _suggest(word: str, choices, what: str = "key") -> str:
    """'; did you mean X?' for the closest of ``choices`` (difflib), else '; valid ...: a, b, c'."""
    choices = sorted(choices)
    best = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if best:
        return f"; did you mean {best[0]!r}?"
    if len(choices) <= 20:
        return f"; valid {what}s: {', '.join(choices)}"
    return ""


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


# -- checks ----------------------------------------------------------------------------------------
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
        values[k] = _check_value(f"{group}.{k}", values[k], specs[k], f"{where_prefix(where)}{group}.{k}")
    return values


def check_tree(cfg, where: str | None = None) -> dict:
    """A whole config (a --config file): known keys, right types; groups checked by :func:`check_group`."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where or 'config'}: a config must be a YAML mapping, got {type(cfg).__name__}")
    for k in list(cfg):
        if k in schema():
            cfg[k] = check_group(k, cfg[k], where)
        elif k in TOP_TYPES:
            cfg[k] = _check_value(k, cfg[k], TOP_TYPES[k], f"{where_prefix(where)}{k}")
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
                          + did_you_mean(model, MODEL_NAMES))
    name = cfg["data"]["name"]
    if name not in DEFAULT_ARCH:
        raise ConfigError(f"unknown dataset {name!r}{_in(where)}; choose one of {', '.join(DEFAULT_ARCH)}"
                          + did_you_mean(name, DEFAULT_ARCH))
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
