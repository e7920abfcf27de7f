"""The attack-evaluation callback inside Lightning's test loop, and `lit-caps evaluate --ckpt`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from lit_caps.evaluation.callback import AttackEvaluation, expand_attack_specs
from lit_caps.config import compose
from lit_caps.training.fit import build, fit


@pytest.fixture(scope="module")
def smoke_run(data_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = compose("cnn_cr", "mnist", train="smoke",
                  overrides=["logger.wandb=false", "progress_bar=false", f"data.root={data_root}",
                             "train.limit_train_batches=40"])
    return cfg, fit(cfg, runs_root=runs)


def test_expand_attack_specs():
    specs = expand_attack_specs(["pgd", "r_pgd"], betas=(0.2, 0.8), steps=5)
    assert len(specs) == 2 + 4
    assert {(s["name"], s["targeted"], s["beta"]) for s in specs} >= {("pgd", True, None), ("r_pgd", False, 0.8)}
    assert all(s["steps"] == 5 for s in specs)


@pytest.mark.parametrize("inference_mode", [False, True])
def test_callback_in_the_test_loop(smoke_run, tmp_path, inference_mode):
    cfg, summary = smoke_run
    from lit_caps.training.module import LitReconstructionClassifier

    dm, _ = build(cfg)
    module = LitReconstructionClassifier.load_from_checkpoint(summary["checkpoint"])
    assert module.threshold == pytest.approx(summary["threshold"])
    specs = [{"name": "pgd", "targeted": False, "steps": 5}, {"name": "r_pgd", "targeted": True, "beta": 0.5, "steps": 5}]
    cb = AttackEvaluation(specs, n=30, chunk_size=15, out_dir=str(tmp_path / "results"), progress=False)
    trainer = L.Trainer(accelerator="cpu", inference_mode=inference_mode, logger=False, callbacks=[cb],
                        enable_progress_bar=False, limit_test_batches=1)
    trainer.test(module, datamodule=dm, verbose=False)
    assert len(cb.results) == 2
    for r in cb.results:
        s = r["summary"]
        assert s["n"] == 30 and 0 <= s["undetected_rate"] <= s["success_rate"] <= 1
        assert s["best_undetected_rate"] >= s["undetected_rate"]
        assert Path(r["path"]).is_file()
    assert {p.name for p in cb.figures} == {"undetected_vs_fpr.png", "distance_histograms.png"}
    # the untargeted PGD should fool a 40-step model on a good share of inputs at eps 0.3
    assert cb.results[0]["summary"]["success_rate"] > 0.3


def test_evaluate_cli_with_wandb_offline(smoke_run, tmp_path):
    _, summary = smoke_run
    out = subprocess.run(
        [sys.executable, "-m", "lit_caps.cli", "evaluate", "--ckpt", summary["checkpoint"], "--attacks", "fgsm",
         "r_fgsm", "--targeted", "false", "--n", "20", "--chunk-size", "10", "--out", str(tmp_path),
         "--limit-test-batches", "2", "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fgsm-untargeted" in out.stdout and "r_fgsm-untargeted-beta0.5" in out.stdout
    files = sorted(p.name for p in (tmp_path / "mnist" / "cnn_cr").glob("*.json"))
    assert files == ["fgsm-untargeted-eps0.3-n20-s0.json", "r_fgsm-untargeted-beta0.5-eps0.3-n20-s0.json"]
    r = json.loads((tmp_path / "mnist" / "cnn_cr" / files[0]).read_text())
    assert r["settings"]["attack_settings"]["step_size"] == 0.05
    # paths in the file are relative to the store (a copied results folder still names its own checkpoint)
    from lit_caps.evaluation import load_result
    assert r["settings"]["checkpoint"] == Path(os.path.relpath(summary["checkpoint"], tmp_path)).as_posix()
    assert load_result(tmp_path / "mnist" / "cnn_cr" / files[0])["settings"]["checkpoint"] == summary["checkpoint"]
    (ev,) = (tmp_path / "mnist" / "cnn_cr" / "evaluate").iterdir()  # outputs keyed by run and settings
    assert list((ev / "wandb").glob("offline-run-*")) and (ev / "figures" / "undetected_vs_fpr.png").is_file()
