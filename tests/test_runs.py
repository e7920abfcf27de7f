"""Finding, loading and training the models of the experiments (lit_caps.runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_caps.runs import RunNotFoundError, data_unavailable, find_run

MODEL = "cnn_cr"  # the model of the `runs` fixture (tests/conftest.py)


def test_unavailable_dataset_is_reported(tmp_path):
    why = data_unavailable("svhn", str(tmp_path))
    assert why is not None and "svhn" in why.lower() and str(tmp_path) in why
    assert data_unavailable("mnist", str(tmp_path)) is not None


def test_find_run(runs):
    s = find_run(runs, "mnist", MODEL, seed=0)
    assert s["complete"] and s["model"] == MODEL and s["seed"] == 0 and s["epochs"] == 1
    assert Path(s["checkpoint"]).is_file() and Path(s["run_dir"]).parent == runs / "mnist"
    assert find_run(runs, "mnist", MODEL, seed=1)["run_dir"] != s["run_dir"]
    assert find_run(runs, "mnist", MODEL, seed=0, arch="mnist")["run_dir"] == s["run_dir"]
    with pytest.raises(RunNotFoundError, match=r"lit-caps fit --model cnn_r --data mnist --seed 0"):
        find_run(runs, "mnist", "cnn_r")
    with pytest.raises(RunNotFoundError, match=r"lit-caps fit --model cnn_cr --data mnist --seed 5"):
        find_run(runs, "mnist", MODEL, seed=5)
    with pytest.raises(RunNotFoundError, match="--arch sabour"):
        find_run(runs, "mnist", MODEL, arch="sabour")


def test_find_run_prefers_the_default_config_over_a_newer_experiment(tmp_path, capsys):
    """A newer run of another recipe (e.g. `arch.cnn_dropout=0.5`) never replaces the default
    config's run in the tables; without a default run the newest is used."""
    import os
    import time

    from lit_caps.config import compose, config_hash

    default = config_hash(compose("cnn_cr", "mnist"))
    other = config_hash(compose("cnn_cr", "mnist", overrides=["arch.cnn_dropout=0.5"]))
    for i, h in enumerate((default, other)):
        d = tmp_path / "mnist" / f"cnn_cr-mnist-s0-{h}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"model": "cnn_cr", "dataset": "mnist", "seed": 0, "arch": "mnist",
                                                    "complete": True, "config_hash": h}))
        os.utime(d / "summary.json", (time.time() + 10 * i, time.time() + 10 * i))  # the experiment is newer
    assert find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == default
    (tmp_path / "mnist" / f"cnn_cr-mnist-s0-{default}" / "summary.json").unlink()
    assert find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == other
    assert f"no complete run of the default config ({default})" in capsys.readouterr().err  # never silently


def test_recipe_naming_an_arch_selects_that_arch_s_runs(tmp_path, monkeypatch):
    """``LIT_CAPS_RECIPE="arch=NAME ..."`` finds the runs of that arch (e.g. the models of an older
    default), not the dataset's default arch's, and never falls back to them."""
    from lit_caps.config import compose, config_hash

    hashes = {a: config_hash(compose("cnn_cr", "mnist", arch=a)) for a in ("mnist", "mnist_wide")}
    for a, h in hashes.items():
        d = tmp_path / "mnist" / f"cnn_cr-{a}-s0-{h}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"model": "cnn_cr", "dataset": "mnist", "seed": 0, "arch": a,
                                                    "complete": True, "config_hash": h}))
    assert find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == hashes["mnist"]
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist_wide")
    assert find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == hashes["mnist_wide"]
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist_wide train.ema_decay=0")
    with pytest.raises(RunNotFoundError, match="arch=mnist_wide train.ema_decay=0"):
        find_run(tmp_path, "mnist", "cnn_cr")


def test_recipe_selects_its_runs_strictly_and_best_checkpoints_are_used(tmp_path, monkeypatch):
    """LIT_CAPS_RECIPE composes every config with its overrides; the tables then take that recipe's
    runs and never fall back to another recipe's. A run that selected its best validation epoch is
    used through best.ckpt."""
    from lit_caps.config import compose, config_hash

    default = config_hash(compose("cnn_cr", "mnist"))
    monkeypatch.setenv("LIT_CAPS_RECIPE", "train.ema_decay=0")
    before = config_hash(compose("cnn_cr", "mnist"))
    assert before != default and compose("cnn_cr", "mnist")["train"]["ema_decay"] == 0
    assert compose("cnn_cr", "mnist", overrides=["train.ema_decay=0.5"])["train"]["ema_decay"] == 0.5  # CLI wins
    d = tmp_path / "mnist" / f"cnn_cr-mnist-s0-{default}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"model": "cnn_cr", "dataset": "mnist", "seed": 0, "arch": "mnist",
                                                "complete": True, "config_hash": default,
                                                "checkpoint": "elsewhere/checkpoints/best.ckpt"}))
    with pytest.raises(RunNotFoundError, match=r"train.ema_decay=0"):
        find_run(tmp_path, "mnist", "cnn_cr")  # only the default recipe's run exists
    monkeypatch.delenv("LIT_CAPS_RECIPE")
    s = find_run(tmp_path, "mnist", "cnn_cr")
    assert s["config_hash"] == default and s["checkpoint"] == str(d / "checkpoints" / "best.ckpt")
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(compose("cnn_cr", "mnist")))
    monkeypatch.setenv("LIT_CAPS_RECIPE", "train.ema_decay=0")
    assert config_hash(compose(config_file=str(cfg_file))) == default  # a run's own config is taken as is
