"""Strict, typed configs: unknown keys and wrong types are refused with the fix, the schema matches
what the code reads, and checking never changes a valid config (the run hashes stay pinned); the
experiment scales of configs/scales."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from lit_caps import config as C
from lit_caps import config_schema as S
from lit_caps.config import available, compose, config_hash
from lit_caps.errors import ConfigError, ConfigNotFoundError, InvalidArgumentError, UserError

REPO = Path(__file__).resolve().parents[1]


# -- run hashes ------------------------------------------------------------------------------------
#: (model, data, arch, train, overrides) -> the hash of runs behind the committed reports (reports/*.md, *.csv)
PINNED = [
    (("capsnet", "mnist", None, "default", []), "d3ea9bb4"),
    (("cnn_cr", "mnist", None, "default", []), "6858ee75"),
    (("cnn_r", "mnist", None, "default", []), "f66f4edd"),
    (("capsnet", "fashion_mnist", None, "default", []), "32f3a01d"),
    (("cnn_cr", "fashion_mnist", None, "default", []), "a0e21647"),
    (("cnn_r", "fashion_mnist", None, "default", []), "2a245ed5"),
    (("capsnet", "mnist", None, "default", ["train.ema_decay=0"]), "ea7cf6fa"),
    (("cnn_cr", "mnist", None, "default", ["train.ema_decay=0"]), "3e2c771c"),
    (("cnn_r", "mnist", None, "default", ["train.ema_decay=0"]), "51de5f0f"),
    (("capsnet", "fashion_mnist", None, "default", ["arch=mnist", "train.ema_decay=0"]), "1f23f57a"),
    (("cnn_cr", "fashion_mnist", None, "default", ["arch=mnist", "train.ema_decay=0"]), "b6bf0c3f"),
    (("cnn_r", "fashion_mnist", None, "default", ["arch=mnist", "train.ema_decay=0"]), "e585283b"),
    (("cnn_cr", "fashion_mnist", "mnist", "default", ["train.ema_decay=0", "arch.cnn_dropout=0.5"]), "f874a470"),
    (("cnn_r", "mnist", None, "default", ["train.ema_decay=0", "arch.cnn_dropout=0.5"]), "f46c9792"),
    (("capsnet", "fashion_mnist", "mnist", "default", []), "ab882cd7"),
    # Fig. 3 quick (CIFAR-10 test split), weight average off
    (("capsnet", "cifar10", None, "default", ["data.cifar10_split_test=true", "data.val_size=1000",
                                              "train.max_epochs=5", "train.ema_decay=0"]), "10144909"),
    (("capsnet_winner", "cifar10", None, "default", ["data.cifar10_split_test=true", "data.val_size=1000",
                                                     "train.max_epochs=5", "train.ema_decay=0"]), "c9ba2c92"),
    (("capsnet_all", "cifar10", None, "default", ["data.cifar10_split_test=true", "data.val_size=1000",
                                                  "train.max_epochs=5", "train.ema_decay=0"]), "325d8339"),
]


@pytest.mark.parametrize("args,expected", PINNED, ids=[h for _, h in PINNED])
def test_run_hashes_are_unchanged(args, expected):
    model, data, arch, train, overrides = args
    assert config_hash(compose(model, data, arch, train, overrides=overrides)) == expected


def test_checking_never_changes_a_shipped_config():
    """Every model x dataset x arch x profile composes, and its groups are the shipped files as read."""
    for group in S.GROUPS:
        for name in available(group):
            raw = yaml.safe_load((S.config_dir() / group / f"{name}.yaml").read_text())
            assert C.load_group(group, name) == raw, (group, name)
    for model in C.MODEL_NAMES:
        for data in C.DEFAULT_ARCH:
            for arch in available("arch"):
                for train in available("train"):
                    cfg = compose(model, data, arch, train)
                    assert cfg["arch"] == C.load_group("arch", arch) and cfg["model"] == model


def test_a_config_file_is_taken_as_is(tmp_path):
    cfg = compose("cnn_cr", "mnist", overrides=["progress_bar=false"])
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert compose(config_file=str(p)) == cfg and config_hash(compose(config_file=str(p))) == "6858ee75"


# -- unknown keys ----------------------------------------------------------------------------------
@pytest.mark.parametrize("item,suggestion", [
    ("train.max_epoch=3", "train.max_epochs"),
    ("trian.max_epochs=3", "train.max_epochs"),
    ("arch.num_clases=5", "arch.num_classes"),
    ("data.batchsize=64", "data.batch_size"),
    ("logger.wandbb=false", "logger.wandb"),
    ("train.lr.x=1", "train.lr"),
    ("progressbar=false", "progress_bar"),
    ("train.batch_size=64", "data.batch_size"),  # a key of another group
    ("max_epochs=3", "train.max_epochs"),
])
def test_unknown_override_key_names_the_closest(item, suggestion):
    key = item.split("=")[0]
    with pytest.raises(ConfigError) as e:
        compose(overrides=[item])
    assert str(e.value) == f"unknown config key {key!r}; did you mean {suggestion!r}?"


def test_unknown_key_without_a_close_one_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.zzz'; valid train keys: .*train\.lr,"):
        compose(overrides=["train.zzz=1"])
    with pytest.raises(ConfigError, match="valid top-level keys: model, arch_name"):
        compose(overrides=["qqq=1"])


def test_unknown_key_in_the_recipe_and_in_files(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_CAPS_RECIPE", "train.ema_decy=0")
    with pytest.raises(ConfigError, match=r"^unknown config key 'train.ema_decy' in LIT_CAPS_RECIPE; "
                                          r"did you mean 'train.ema_decay'\?$"):
        compose()
    with pytest.raises(ConfigError, match="in LIT_CAPS_RECIPE"):
        C.check_recipe()
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist_wid")
    with pytest.raises(ConfigNotFoundError, match="LIT_CAPS_RECIPE: arch=mnist_wid: no arch config .*'mnist_wide'"):
        C.check_recipe()
    monkeypatch.setenv("LIT_CAPS_RECIPE", "train.lr='1")
    with pytest.raises(ConfigError, match="LIT_CAPS_RECIPE: No closing quotation"):
        C.check_recipe()
    monkeypatch.delenv("LIT_CAPS_RECIPE")
    cfg = compose()
    cfg["train"]["max_epoch"] = 3
    bad = tmp_path / "run.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=f"^unknown config key 'train.max_epoch' in {re.escape(str(bad))}; "
                                          f"did you mean 'train.max_epochs'"):
        compose(config_file=str(bad))
    group = tmp_path / "mytrain.yaml"
    group.write_text("max_epochs: 2\nlr: 0.01\nrecon_weight: 0.0005\nlr_decy: 0.9\n")
    with pytest.raises(ConfigError, match=f"'train.lr_decy' in {re.escape(str(group))}; did you mean 'train.lr_decay'"):
        compose(train=str(group))
    group.write_text("max_epochs: 2\nlr: 0.01\nrecon_weight: 0.0005\n")
    assert compose(train=str(group))["train_profile"] == "mytrain"


# -- types -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("item,message", [
    ("train.lr=abc", "train.lr=abc: expected a number (float), got 'abc'"),
    ("train.max_epochs=2.5", "train.max_epochs=2.5: expected an integer (int), got 2.5"),
    ("train.max_epochs=true", "train.max_epochs=true: expected an integer (int), got True"),
    ("data.hflip=1", "data.hflip=1: expected true or false, got 1"),
    ("seed=abc", "seed=abc: expected an integer (int), got 'abc'"),
    ("arch.decoder_hidden=512", "arch.decoder_hidden=512: expected a list of integers, got 512"),
    ("arch.capsule_layers=[[49,a]]", "arch.capsule_layers=[[49,a]]: expected a list of lists of integers, "
                                     "got [[49, 'a']]"),
    ("data.root=[1]", "data.root=[1]: expected a string (str) or null, got [1]"),
    ("train.lr=null", "train.lr=null: expected a number (float), got None"),
    ("train.limit_train_batches=x", "train.limit_train_batches=x: expected an integer (int), a number (float) "
                                    "or null, got 'x'"),
])
def test_wrong_type_names_key_and_type(item, message):
    with pytest.raises(ConfigError) as e:
        compose(overrides=[item])
    assert str(e.value) == message


def test_values_of_the_right_type_are_kept():
    cfg = compose(overrides=["train.lr=1e-3", "train.devices=[0, 1]", "train.precision=16", "data.root=null",
                             "train.limit_train_batches=0.5", "train.limit_val_batches=3", "arch.mean=[0.5]",
                             "train.ema_decay=0", "data.hflip=true", "train.select_best=true"])
    t = cfg["train"]
    assert t["lr"] == 0.001 and isinstance(t["lr"], float)  # YAML reads 1e-3 as text; a number is meant
    assert t["devices"] == [0, 1] and t["precision"] == 16 and cfg["data"]["root"] is None
    assert t["limit_train_batches"] == 0.5 and t["limit_val_batches"] == 3 and t["ema_decay"] == 0


@pytest.mark.parametrize("kw,match", [
    (dict(overrides=["data=svhn"]), r"^data=svhn: data is a group of settings; set one with data.<name>=value; "
                                    r"pick a dataset with --data NAME$"),
    (dict(overrides=["arch={a: 1}"]), "arch is a group of settings"),
    (dict(model="resnet"), r"^unknown model 'resnet'; choose one of capsnet, .* \(did you mean 'capsnet'\?\)$"),
    (dict(data="imagenet"), r"^unknown dataset 'imagenet'; choose one of mnist, fashion_mnist"),
    (dict(overrides=["data.name=mnst"]), r"unknown dataset 'mnst'.*did you mean 'mnist'"),
    (dict(model="cnn_cr", overrides=["arch.bias_init=0.2"]), r"'arch.bias_init' does not apply to model 'cnn_cr'"),
    (dict(model="capsnet_all", overrides=["arch.decoder_input=all"]), "does not apply to model 'capsnet_all'"),
    (dict(overrides=["arch.decoder_input=al"]), "arch.decoder_input=al: expected one of masked, all, winner"),
    (dict(overrides=["train.ema_decay=1.5"]), r"train.ema_decay=1.5: must be in \[0, 1\)"),
    (dict(overrides=["train.fpr=0"]), r"train.fpr=0: must be in \(0, 1\)"),
    (dict(overrides=["data.batch_size=0"]), "data.batch_size=0: must be >= 1"),
    (dict(arch="mnist_wid"), r"no arch config 'mnist_wid'; available: .*did you mean 'mnist_wide'"),
    (dict(train="smok"), r"no train config 'smok'.*did you mean 'smoke'"),
    (dict(overrides=["train.lr=[1,"]), r"train.lr=\[1,: the value is not valid YAML"),
])
def test_bad_names_and_values_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        compose(**kw)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigNotFoundError, match="no such file"):
        compose(config_file=str(tmp_path / "nope.yaml"))
    p = tmp_path / "c.yaml"
    p.write_text("model: capsnet\n  bad: [")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        compose(config_file=str(p))
    cfg = compose()
    del cfg["train"]["lr"]
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=f"config key 'train.lr' is missing in {re.escape(str(p))}"):
        compose(config_file=str(p))
    cfg = compose()
    cfg["train"]["lr"] = "fast"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(p))}: train.lr: expected a number"):
        compose(config_file=str(p))
    p.write_text(yaml.safe_dump(compose()))
    with pytest.raises(ConfigError, match="needs a composed config"):
        compose(config_file=str(p), overrides=["arch=mnist"])
    assert compose(config_file=str(p), overrides=["train.lr=0.5"])["train"]["lr"] == 0.5


# -- the schema is what the code reads -------------------------------------------------------------
def test_registries_match_the_light_tables():
    from lit_caps.attacks import ATTACKS, PRESETS
    from lit_caps.data import DATASETS
    from lit_caps.models import MODELS
    from lit_caps.validate import ATTACK_DATASETS, ATTACK_NAMES

    assert set(C.MODEL_NAMES) == set(MODELS)
    assert set(C.DEFAULT_ARCH) == set(DATASETS)
    assert tuple(ATTACK_NAMES) == tuple(ATTACKS) and set(ATTACK_DATASETS) == set(PRESETS)


def test_data_keys_are_the_datamodule_arguments():
    from lit_caps.data import CapsDataModule

    # seed: the run's top-level seed, which fit passes to the datamodule (training order, augmentation)
    params = set(inspect.signature(CapsDataModule.__init__).parameters) - {"self", "seed"}
    assert set(S.schema()["data"]) == params


def test_train_keys_are_what_training_reads():
    src = (REPO / "lit_caps" / "training" / "fit.py").read_text()
    read = set(re.findall(r"""\bt(?:\.get\(|\[)["'](\w+)["']""", src))
    read |= set(re.findall(r'"(\w+)"', re.search(r"for k in \(([^)]*)\)", src).group(1)))
    assert read == set(S.schema()["train"])


def _tiny_arch():
    return {**C.load_group("arch", "sabour"), "conv_channels": 2, "primary_types": 2, "primary_dim": 2,
            "primary_kernel": 9, "decoder_hidden": [4]}


def test_arch_keys_per_model_are_what_the_constructors_take():
    """A key valid for a model in the schema builds that model; any other key is refused by the
    constructor (the CNNs no longer swallow unknown keys)."""
    from lit_caps.models import CapsNet, build_model

    defaults = {k: p.default for k, p in inspect.signature(CapsNet.__init__).parameters.items() if k != "self"}
    base = _tiny_arch()
    for model in C.MODEL_NAMES:
        valid = {k for k in S.schema()["arch"] if model in S.ARCH_ONLY_FOR.get(k, (model,))}
        for k in set(S.schema()["arch"]) | {"conditional", "bogus"}:
            kw = {**base, k: base.get(k, defaults.get(k, True))}
            if k in valid:
                build_model(model, **kw)
                cfg = compose(model, "mnist", overrides=[f"arch.{k}={json.dumps(kw[k])}"])
                assert cfg["arch"][k] == kw[k], (model, k)
            else:
                with pytest.raises(TypeError):
                    build_model(model, **kw)
                with pytest.raises(ConfigError):
                    compose(model, "mnist", overrides=[f"arch.{k}=1"])


def test_null_defaults_have_a_type():
    """A key null in every shipped file needs EXTRA_TYPES; the schema refuses to guess."""
    assert "limit_val_batches" in S.EXTRA_TYPES["train"]
    with pytest.raises(TypeError):
        S.spec_of([None, None])
    assert S.spec_of([1, 0.5]) is S.FLOAT and S.spec_of(["auto", 1]).ok(1) and not S.spec_of(["a", 1]).ok(1.5)
    assert S.spec_of([[], [[49, 16]]]).text == "a list of lists of integers"


def test_the_public_names_and_the_schema_split():
    """Every name of ``config.__all__`` is there, the re-exports are the schema module's own objects,
    and the shipped scale files are not mistaken for a config group."""
    assert all(hasattr(C, n) for n in C.__all__)
    for name in ("DEFAULT_ARCH", "MODEL_NAMES", "available", "check_config"):
        assert getattr(C, name) is getattr(S, name)
    assert "scales" not in S.GROUPS and set(S.schema()) == {*S.GROUPS, "logger"}


# -- experiment scales -----------------------------------------------------------------------------
SECTIONS = ("table1", "rpgd_beta", "table7", "table3", "fig1", "table2", "fig3", "fig4", "galleries", "adaptive")


def test_scale_values_are_pinned():
    """A few values of the shipped scale files, independently of the Python dicts."""
    betas = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    quick = C.load_scale("quick")
    assert quick["table3"] == {"n": 200, "chunk_size": 100, "steps": 100, "betas": betas, "refine": 2,
                               "train": "default", "train_overrides": []}
    assert all(isinstance(b, float) for b in quick["table3"]["betas"])
    assert quick["table1"]["cw"] == {"steps": 100, "binary_search_steps": 4, "initial_const": 1.0, "lr": 0.05}
    assert quick["table2"] == {"n": None} and quick["fig1"] == {"n": 1000}
    assert quick["fig3"]["train"] == "cifar_fast"
    assert quick["fig3"]["overrides"] == ["arch=cifar10_fast", "data.hflip=true"]
    assert quick["fig3"]["n"] >= 500
    paper = C.load_scale("paper")
    assert paper["table1"] == {"n": 1000, "chunk_size": 100, "steps": None, "cw": None, "compile": True}
    assert paper["rpgd_beta"]["betas"] == betas and paper["fig3"]["betas"] == betas
    assert paper["fig4"] == {"per_class": 100, "steps": None} and paper["galleries"] == {"steps": None, "candidates": 1000}
    assert quick["adaptive"]["n"] >= 500 and quick["adaptive"]["steps"] == quick["table3"]["steps"]
    assert paper["adaptive"]["n"] == 1000 and paper["adaptive"]["steps"] is None
    smoke = C.load_scale("smoke")
    assert smoke["table3"]["train"] == "smoke" and smoke["table2"] == {"n": 100}
    assert smoke["galleries"] == {"steps": 3, "candidates": 20} and smoke["rpgd_beta"]["betas"] == [0.0, 0.5, 1.0]
    for scale in C.SCALE_NAMES:
        assert tuple(C.load_scale(scale)) == SECTIONS
        assert C.scale_section(scale, "fig1") == C.load_scale(scale)["fig1"]


def test_scales_are_copies():
    """load_scale is cached, but what it returns (and scale_section) may be changed by the caller."""
    a = C.load_scale("quick")
    a["table3"]["betas"].append(2.0)
    a["fig1"]["n"] = 1
    s = C.scale_section("quick", "table3")
    s["betas"].clear()
    assert len(C.load_scale("quick")["table3"]["betas"]) == 11 and C.load_scale("quick")["fig1"]["n"] == 1000
    assert len(C.scale_section("quick", "table3")["betas"]) == 11


@pytest.mark.parametrize("args,message", [
    (("quik", "table1"), "unknown scale 'quik'; choose one of smoke, quick, paper (did you mean 'quick'?)"),
    (("huge", "table1"), "unknown scale 'huge'; choose one of smoke, quick, paper"),
    (("quick", "gallery"), "no section 'gallery' in scale 'quick' (configs/scales/quick.yaml); choose one of "
                           + ", ".join(SECTIONS) + " (did you mean 'galleries'?)"),
    (("paper", "zzz"), "no section 'zzz' in scale 'paper' (configs/scales/paper.yaml); choose one of "
                       + ", ".join(SECTIONS)),
])
def test_unknown_scale_or_section_is_a_config_error(args, message):
    with pytest.raises(ConfigError) as e:
        C.scale_section(*args)
    assert str(e.value) == message and "\n" not in str(e.value) and isinstance(e.value, UserError)
    if args[0] not in C.SCALE_NAMES:
        with pytest.raises(ConfigError, match="unknown scale"):
            C.load_scale(args[0])


def test_scale_files_are_packaged():
    """configs/scales/*.yaml are shipped with the package (pyproject's package-data)."""
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lit_caps"]
    assert "configs/**/*.yaml" in data
    assert sorted(p.stem for p in (S.config_dir() / "scales").glob("*.yaml")) == sorted(C.SCALE_NAMES)


# -- attack arguments and data --------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(name="r_pdg"), r"unknown attack 'r_pdg'; choose one of .* \(did you mean 'r_pgd'\?\)"),
    (dict(dataset="mnist_c"), "no attack settings .* for dataset 'mnist_c'"),
    (dict(beta=1.5), r"beta=1.5: must be a number in \[0, 1\]"),
    (dict(beta=-0.1), r"beta=-0.1: must be a number in \[0, 1\]"),
    (dict(beta=float("nan")), "beta=nan"),
    (dict(eps=-0.1), "eps=-0.1: must be a number >= 0"),
    (dict(step_size=0), "step_size=0: must be a number > 0"),
    (dict(steps=0), "steps=0: must be an integer >= 1"),
    (dict(steps=2.5), "steps=2.5: must be an integer >= 1"),
    (dict(n=0), "n=0: must be an integer >= 1"),
    (dict(chunk_size=0), "chunk_size=0: must be an integer >= 1"),
])
def test_attack_arguments_are_checked(kw, match):
    from lit_caps.attacks import check_attack_args  # also exported where the attacks live

    with pytest.raises(InvalidArgumentError, match=match):
        check_attack_args(**kw)


def test_good_attack_arguments_pass():
    from lit_caps.validate import check_attack_args

    for a in ("fgsm", "cw", "r_pgd"):
        check_attack_args(a, dataset="cifar10", beta=0, eps=0, steps=1, step_size=0.01, n=1, chunk_size=1)
    check_attack_args(beta=1.0, eps=None)


def _placeholders(root: Path, name: str, **kw) -> None:
    from lit_caps.validate import required_files

    for alts in required_files(name, **kw):
        p = root / alts[0]
        if "." in p.name or "ubyte" in p.name:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
        else:
            p.mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("name,kw", [("mnist", {}), ("fashion_mnist", {}), ("mnist_c", {}), ("svhn", {}),
                                     ("cifar10", {}), ("cifar10", {"cifar10_split_test": True})])
def test_data_check_agrees_with_the_loaders(tmp_path, name, kw):
    """Nothing there: the loader's own DataNotFoundError. The files the check looks for there (empty):
    the check passes, and the loader no longer says files are missing (it fails on their content)."""
    from lit_caps.data import CapsDataModule, DataNotFoundError
    from lit_caps.validate import check_data

    empty = tmp_path / "empty"
    with pytest.raises(DataNotFoundError, match="not found under") as e:
        check_data(name, empty, **kw)
    assert isinstance(e.value, UserError)
    full = tmp_path / "placeholders"
    _placeholders(full, name, **kw)
    check_data(name, full, **kw)
    check_data(name, empty, download=True)  # nothing to check: torchvision downloads
    dm = CapsDataModule(name, root=str(full), **kw)
    for train in ((False,) if kw else (True, False)):
        try:
            dm.load_split(train)
        except DataNotFoundError as err:
            assert "not found under" not in str(err), err
        except Exception:  # noqa: BLE001: empty placeholder files fail to parse, as they should
            pass


def test_data_check_passes_on_the_real_data(data_root):
    from lit_caps.validate import check_data

    check_data("mnist", data_root)
    check_data("fashion_mnist", data_root)
