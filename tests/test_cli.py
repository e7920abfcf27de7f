"""The console entry point and config composition."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lit_caps.config import available, compose, config_key


def test_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "lit_caps.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fit" in out.stdout and "bench" in out.stdout


def test_config_groups_and_overrides():
    assert {"mnist", "mnist_wide", "sabour", "svhn", "cifar10"} <= set(available("arch"))
    cfg = compose("cnn_r", "fashion_mnist", overrides=["train.max_epochs=3", "arch.decoder_hidden=[64,128]"])
    assert cfg["arch_name"] == "mnist_wide" and cfg["train"]["max_epochs"] == 3
    assert compose("cnn_r", "mnist")["arch_name"] == compose("cnn_r", "mnist_c")["arch_name"] == "mnist"
    assert cfg["arch"]["decoder_hidden"] == [64, 128] and cfg["data"]["name"] == "fashion_mnist"
    assert compose("capsnet", "svhn")["arch_name"] == "svhn"
    # volatile settings do not change what identifies a trained model
    assert config_key(compose(overrides=["train.max_epochs=1"])) == config_key(compose())
    assert config_key(compose(overrides=["train.lr=0.1"])) != config_key(compose())


def test_arch_override_picks_a_whole_arch_config(monkeypatch):
    """``arch=NAME`` (command line or LIT_CAPS_RECIPE) selects an arch config as --arch does, so a recipe
    can name the models of an older default; ``arch.k=v`` after it still applies."""
    from lit_caps.config import config_hash, load_group

    wide = compose("capsnet", "mnist", overrides=["arch=mnist_wide"])
    assert wide["arch_name"] == "mnist_wide" and wide["arch"] == load_group("arch", "mnist_wide")
    assert config_hash(wide) == config_hash(compose("capsnet", "mnist", arch="mnist_wide"))
    tweaked = compose("capsnet", "mnist", overrides=["arch=mnist_wide", "arch.routing_iterations=2"])
    assert tweaked["arch"]["routing_iterations"] == 2 and tweaked["arch"]["conv_channels"] == 64
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=sabour train.ema_decay=0")
    old = compose("capsnet", "fashion_mnist")
    assert old["arch_name"] == "sabour" and old["train"]["ema_decay"] == 0
    # the command line comes after the recipe
    assert compose("capsnet", "fashion_mnist", overrides=["arch=mnist"])["arch_name"] == "mnist"


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="key.sub=value"):
        compose(overrides=["max_epochs"])
    with pytest.raises(FileNotFoundError, match="available: "):
        compose(arch="nope")
    from lit_caps.models import build_model

    with pytest.raises(ValueError, match="capsnet"):
        build_model("resnet")


def test_bench_runs_and_writes_tables(tmp_path):
    """Not a timing test: the benchmark runs end to end and prints both tables."""
    from lit_caps.cli import main

    out = tmp_path / "bench.md"
    assert main(["bench", "--archs", "mnist", "--models", "cnn_r", "--steps", "1", "--attack-steps", "1",
                 "--devices", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| cpu | mnist | cnn_r | 2167400 | 128 |" in text
    assert "torchattacks_pgd" in text and "| cnn_r | r_pgd |" in text


def test_attack_flop_count_matches_the_layer_arithmetic():
    """PGD on a one-layer linear model: one iteration is a forward mm (2*B*in*out FLOPs) and the
    input-gradient mm of the backward (the same again; no weight gradient is computed)."""
    import torch

    from lit_caps.attacks import build_attack
    from lit_caps.bench import attack_flops_per_iteration, count_flops
    from lit_caps.models import ModelOutput

    lin = torch.nn.Linear(784, 10, bias=False)
    assert count_flops(lambda: lin(torch.rand(4, 784))) == 2 * 4 * 784 * 10

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            logits = self.lin(x.flatten(1))
            return ModelOutput(logits=logits, poses=logits.unsqueeze(-1))

    atk = build_attack("pgd", Tiny(), eps=0.3, step_size=0.01, steps=5, random_start=False)
    assert attack_flops_per_iteration(atk, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)) == 2 * 2 * 784 * 10
    assert atk.steps == 5  # restored
