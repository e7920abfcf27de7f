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
                 "--devices", "cpu", "--batch-size", "16", "--train-paths", "eager fp32", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| cpu | mnist | cnn_r | 2167400 | 16 |" in text
    # the training table: the reference CapsNet beside ours, Sabour sizes, with the ratio row label
    assert "| cpu | sabour | reference | eager fp32 | 8215568 |" in text
    assert "| cpu | sabour | capsnet | eager fp32 | 8215728 |" in text and "x reference |" in text
    assert "torchattacks_pgd" in text and "| cnn_r | r_pgd |" in text
    # the fast path's rows, with their ratio to the eager fp32 row of the same run
    assert "| cnn_r | pgd_bf16 | eager bf16 |" in text and "x eager fp32 |" in text
    # how the paper-scale Table 3 cost grows, from this run's throughput (one model here: 2 x 2 x 15 cells)
    assert "## How the paper-scale Table 3 cost grows" in text and "| (paper scale) | 1000 | 1000 | 15 | 60 |" in text


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


# -- user errors: one line on stderr, exit 2, nothing created --------------------------------------
import contextlib  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _cli(args, cwd, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("LIT_CAPS_DEBUG", "LIT_CAPS_RECIPE")}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "lit_caps.cli", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=300)


def _assert_user_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("lit-caps: error: "), out.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@contextlib.contextmanager
def _read_only(folder: Path):
    """A folder nobody can write to: chattr +i as root (root ignores modes), else chmod 555."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder as root here (chattr +i failed)")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        yield folder
    finally:
        subprocess.run(undo, check=True)


@pytest.fixture
def work(tmp_path):
    """An empty working folder (the default --runs/--out are relative to it), a fake finished run and
    an empty data root."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = tmp_path / "fake_runs" / "mnist" / "cnn_cr-mnist-s0-test"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not read by the checks")
    cfg = compose("cnn_cr", "mnist")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    empty = tmp_path / "no_data"
    empty.mkdir()
    return {"cwd": cwd, "ckpt": run / "checkpoints" / "last.ckpt", "run": run, "empty": empty, "tmp": tmp_path}


CASES = [
    (["fit", "train.max_epoch=3"], "unknown config key 'train.max_epoch'; did you mean 'train.max_epochs'?"),
    (["fit", "trian.max_epochs=3"], "unknown config key 'trian.max_epochs'; did you mean 'train.max_epochs'?"),
    (["fit", "arch.num_clases=5"], "unknown config key 'arch.num_clases'; did you mean 'arch.num_classes'?"),
    (["fit", "train.lr=abc"], "train.lr=abc: expected a number (float), got 'abc'"),
    (["fit", "--model", "resnet"], "unknown model 'resnet'; choose one of capsnet"),
    (["fit", "--data", "imagenet"], "unknown dataset 'imagenet'; choose one of mnist"),
    (["fit", "--train", "smok"], "did you mean 'smoke'"),
    (["fit", "--model", "cnn_cr", "arch.bias_init=0.1"], "'arch.bias_init' does not apply to model 'cnn_cr'"),
    (["evaluate", "--ckpt", "{tmp}/nope/last.ckpt"], "--ckpt", "no such file"),
    (["evaluate", "--ckpt", "{ckpt}", "--beta", "1.5"], "beta=1.5: must be a number in [0, 1]"),
    (["evaluate", "--ckpt", "{ckpt}", "--eps", "-0.1"], "eps=-0.1: must be a number >= 0"),
    (["evaluate", "--ckpt", "{ckpt}", "--n", "0"], "n=0: must be an integer >= 1"),
    (["evaluate", "--ckpt", "{ckpt}", "--chunk-size", "0"], "chunk_size=0"),
    (["evaluate", "--ckpt", "{ckpt}", "--attacks", "pgdd"], "unknown attack 'pgdd'", "did you mean 'pgd'"),
    (["evaluate", "--ckpt", "{ckpt}", "train.lr=abc"], "train.lr=abc: expected a number"),
    (["attack", "--attack", "r_pdg"], "unknown attack 'r_pdg'"),
    (["attack", "--beta", "1.5"], "beta=1.5"),
    (["attack", "--data", "mnist_c"], "no attack settings (Appendix C presets) for dataset 'mnist_c'"),
    (["reproduce", "table1", "--betas", "0.5", "1.5"], "beta=1.5"),
    (["reproduce", "table1", "--models", "cnn"], "unknown model 'cnn'"),
]


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_errors_are_one_line(work, case):
    args, *fragments = case
    out = _cli([a.format(**work) for a in args], work["cwd"])
    _assert_user_error(out, *fragments)
    assert not any(work["cwd"].iterdir())  # no run folder, results folder or W&B run


def test_missing_data_is_one_line(work):
    out = _cli(["fit", f"data.root={work['empty']}"], work["cwd"])
    _assert_user_error(out, "mnist: dataset files not found under", "MNIST/raw/train-images-idx3-ubyte", "fix:")
    assert not any(work["cwd"].iterdir())
    cfg = yaml.safe_load((work["run"] / "config.yaml").read_text())
    cfg["data"]["root"] = str(work["empty"])
    (work["run"] / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = _cli(["evaluate", "--ckpt", work["ckpt"]], work["cwd"])
    _assert_user_error(out, "dataset files not found under")
    assert not any(work["cwd"].iterdir())


def test_bad_recipe_and_config_file_are_one_line(work):
    out = _cli(["fit"], work["cwd"], LIT_CAPS_RECIPE="train.ema_decy=0")
    _assert_user_error(out, "unknown config key 'train.ema_decy' in LIT_CAPS_RECIPE; did you mean 'train.ema_decay'?")
    out = _cli(["reproduce", "table1", "--only-report"], work["cwd"], LIT_CAPS_RECIPE="arch=mnist_wid")
    _assert_user_error(out, "LIT_CAPS_RECIPE: arch=mnist_wid: no arch config")
    bad = work["tmp"] / "bad.yaml"
    cfg = compose()
    cfg["train"]["max_epoch"] = 3
    bad.write_text(yaml.safe_dump(cfg))
    out = _cli(["fit", "--config", bad], work["cwd"])
    _assert_user_error(out, f"unknown config key 'train.max_epoch' in {bad}; did you mean 'train.max_epochs'?")
    (work["run"] / "config.yaml").write_text("model: [unclosed\n")
    out = _cli(["evaluate", "--ckpt", work["ckpt"]], work["cwd"])
    _assert_user_error(out, "config.yaml (the run's config) cannot be read")
    assert not any(work["cwd"].iterdir())


def test_unwritable_folders_are_one_line(work):
    ro = work["tmp"] / "ro"
    with _read_only(ro):
        out = _cli(["fit", "--runs", ro / "runs"], work["cwd"])
        _assert_user_error(out, f"--runs {ro}/runs/mnist/capsnet-mnist-s0-", f"cannot write to {ro}")
        out = _cli(["evaluate", "--ckpt", work["ckpt"], "--out", ro / "results"], work["cwd"])
        _assert_user_error(out, f"--out {ro}/results: cannot write to {ro}")
        assert not any(ro.iterdir())
    assert not any(work["cwd"].iterdir())


def test_a_run_folder_with_other_settings_is_refused_before_training(work):
    before = (work["run"] / "config.yaml").read_text()
    out = _cli(["fit", "--model", "cnn_r", "--run-dir", work["run"]], work["cwd"])
    _assert_user_error(out, "holds a run with different settings")
    assert (work["run"] / "config.yaml").read_text() == before
    assert sorted(p.name for p in work["run"].iterdir()) == ["checkpoints", "config.yaml"]


def test_bad_sweep_is_one_line_before_any_run(work):
    text = (REPO / "sweeps" / "rpgd_beta_mnist.yaml").read_text()
    bad = work["tmp"] / "bad_sweep.yaml"
    bad.write_text(text.replace("0.9, 1.0]", "0.9, 1.5]"))
    out = _cli(["sweep", "local", bad], work["cwd"])
    _assert_user_error(out, f"{bad}: beta=1.5: must be a number in [0, 1]")
    bad.write_text(text.replace("  beta:", "  betta:"))
    out = _cli(["sweep", "expand", bad], work["cwd"])
    _assert_user_error(out, "parameter 'betta' is not an option of `lit-caps attack`; did you mean 'beta'?")
    bad.write_text(text.replace("method: grid", "method: gird"))
    out = _cli(["sweep", "local", bad], work["cwd"])
    _assert_user_error(out, "`method` must be one of")
    out = _cli(["sweep", "collect", work["tmp"] / "no_state"], work["cwd"])
    _assert_user_error(out, "no sweep state folder")
    assert not any(work["cwd"].iterdir())
    good = _cli(["sweep", "expand", REPO / "sweeps" / "rpgd_beta_mnist.yaml"], work["cwd"])
    assert good.returncode == 0 and "--beta=1.0" in good.stdout


def test_debug_shows_the_traceback(work):
    out = _cli(["fit", "train.max_epoch=3"], work["cwd"], LIT_CAPS_DEBUG="1")
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr
    assert not any(work["cwd"].iterdir())
