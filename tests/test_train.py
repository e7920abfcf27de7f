"""Training: fast_dev_run of each model, checkpoints with the detection threshold, reuse, resume
(kill -9 and resume, the run lock, damaged checkpoints: tests/test_resume.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_caps.config import compose, config_hash, run_dir_for
from lit_caps.training.fit import build, fit

SMOKE = ["logger.wandb=false", "progress_bar=false"]


def smoke_cfg(model="capsnet", data="mnist", extra=(), root=None):
    over = list(SMOKE) + list(extra)
    if root is not None:
        over.append(f"data.root={root}")
    return compose(model, data, train="smoke", overrides=over)


@pytest.mark.parametrize("model", ["capsnet", "cnn_cr", "cnn_r"])
def test_fast_dev_run(model, data_root, tmp_path):
    cfg = smoke_cfg(model, root=data_root)
    dm, module = build(cfg)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False,
                        logger=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1
    assert module.threshold is not None and module.val_distances.numel() > 0


def test_fit_writes_summary_checkpoint_and_threshold(data_root, tmp_path):
    cfg = smoke_cfg("cnn_cr", root=data_root)
    s = fit(cfg, runs_root=tmp_path)
    run = Path(s["run_dir"])
    assert run == run_dir_for(cfg, tmp_path)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["complete"] and saved["epochs"] == 1 and 0 <= saved["test_error"] <= 1
    assert saved["config_hash"] == config_hash(cfg)
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    det = ck["detection"]
    assert det["fpr"] == 0.05
    assert abs(det["threshold"] - torch.quantile(det["val_distances"].double(), 0.95).item()) < 1e-6
    assert det["val_distances"].numel() == 2 * 500  # limit_val_batches=2 of 500
    assert (run / "csv" / "metrics.csv").is_file() and (run / "config.yaml").is_file()
    # the same command again reuses the finished run instead of training
    t0 = time.perf_counter()
    again = fit(cfg, runs_root=tmp_path)
    assert again == saved and time.perf_counter() - t0 < 2


def test_changed_settings_never_overwrite_a_run(data_root, tmp_path):
    cfg = smoke_cfg("cnn_r", root=data_root)
    other = smoke_cfg("cnn_r", root=data_root, extra=["train.lr=0.0005"])
    assert run_dir_for(cfg, tmp_path) != run_dir_for(other, tmp_path)
    # max_epochs does not identify a model: more epochs continue the same run
    longer = smoke_cfg("cnn_r", root=data_root, extra=["train.max_epochs=3"])
    assert run_dir_for(cfg, tmp_path) == run_dir_for(longer, tmp_path)
    fit(cfg, runs_root=tmp_path)
    with pytest.raises(RuntimeError, match="different settings"):
        fit(other, runs_root=tmp_path, run_dir=run_dir_for(cfg, tmp_path))


def test_wandb_offline_run(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose("cnn_cr", "mnist", train="smoke",
                  overrides=["progress_bar=false", f"data.root={data_root}", "logger.wandb=true"])
    s = fit(cfg, runs_root=tmp_path)
    runs = list((Path(s["run_dir"]) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_wandb_mode_defaults(monkeypatch, tmp_path):
    from lit_caps.tracking import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_capsule_lr_scale_param_groups():
    """train.capsule_lr_scale: the routed capsule weights get lr x k; k = 1 keeps one group (old checkpoints)."""
    from lit_caps.config import load_group
    from lit_caps.training.module import LitReconstructionClassifier

    arch = load_group("arch", "mnist")
    one = LitReconstructionClassifier("capsnet", arch=arch).configure_optimizers()
    assert len(one.param_groups) == 1
    m = LitReconstructionClassifier("capsnet", arch=arch, lr=1e-3, capsule_lr_scale=30.0)
    opt = m.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, pytest.approx(3e-2)]
    caps = {id(p) for p in opt.param_groups[1]["params"]}
    named = dict(m.model.named_parameters())
    assert caps == {id(named["capsules.0.weight"]), id(named["capsules.1.weight"])}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in m.parameters())
    cnn = LitReconstructionClassifier("cnn_cr", arch=arch, capsule_lr_scale=30.0).configure_optimizers()
    assert len(cnn.param_groups) == 1  # no capsule layers: nothing to scale


def test_weight_average_is_what_is_evaluated_and_resume_keeps_raw_weights(data_root, tmp_path):
    """train.ema_decay: the average is validated/tested/thresholded and is what a loaded checkpoint's
    ``model`` holds; the raw weights are validated too (val/acc_raw) and are what a resumed fit continues."""
    from lit_caps.training.module import LitReconstructionClassifier

    base = smoke_cfg("cnn_cr", root=data_root)
    cfg = smoke_cfg("cnn_cr", root=data_root, extra=["train.ema_decay=0.9"])
    assert config_hash(cfg) != config_hash(base)
    s = fit(cfg, runs_root=tmp_path)
    ck = torch.load(s["checkpoint"], weights_only=False)
    sd = ck["state_dict"]
    ema = {k[len("ema."):]: v for k, v in sd.items() if k.startswith("ema.")}
    raw = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    assert ema.keys() == raw.keys() and int(sd["ema_updates"]) == 10
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    header = (Path(s["run_dir"]) / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/acc_raw" in header and "val/acc" in header
    loaded = LitReconstructionClassifier.load_from_checkpoint(s["checkpoint"], map_location="cpu")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    assert loaded.eval_model() is loaded.ema and loaded.threshold == s["threshold"]

    class Capture(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.raw = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            self.ema = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}

    cap = Capture()
    cfg2 = smoke_cfg("cnn_cr", root=data_root, extra=["train.ema_decay=0.9", "train.max_epochs=2"])
    s2 = fit(cfg2, runs_root=tmp_path, extra_callbacks=[cap])
    assert s2["run_dir"] == s["run_dir"] and s2["epochs"] == 2
    for k in raw:
        assert torch.equal(cap.raw[k], raw[k]) and torch.equal(cap.ema[k], ema[k]), k


def test_weight_average_update():
    """ema <- d * ema + (1 - d) * model after every step, d = min(decay, (1 + n) / (10 + n))."""
    from lit_caps.config import load_group
    from lit_caps.training.module import LitReconstructionClassifier

    m = LitReconstructionClassifier("cnn_r", arch=load_group("arch", "mnist"), ema_decay=0.99)
    p_ema, p = next(m.ema.parameters()), next(m.model.parameters())
    before = p_ema.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
    m.update_average()
    d = min(0.99, 2 / 11)
    assert torch.allclose(p_ema, d * before + (1 - d) * p.detach(), atol=1e-6)
    assert int(m.ema_updates) == 1 and not p_ema.requires_grad
    opt = m.configure_optimizers()  # the average is never optimized
    ids = {id(q) for g in opt.param_groups for q in g["params"]}
    assert id(p_ema) not in ids and id(p) in ids
    with pytest.raises(ValueError, match="ema_decay"):
        LitReconstructionClassifier("cnn_r", arch=load_group("arch", "mnist"), ema_decay=1.0)


def test_select_best_keeps_the_best_validation_epoch(data_root, tmp_path):
    """train.select_best: best.ckpt holds the epoch with the highest val/acc and its threshold; the
    summary's checkpoint (what every report and attack loads) is that one."""
    import pandas as pd

    cfg = smoke_cfg("cnn_r", root=data_root, extra=["train.select_best=true", "train.max_epochs=3"])
    s = fit(cfg, runs_root=tmp_path)
    run = Path(s["run_dir"])
    assert s["checkpoint"] == str(run / "checkpoints" / "best.ckpt") and s["epochs"] == 3
    m = pd.concat(pd.read_csv(f) for f in run.glob("csv/**/metrics.csv")).dropna(subset=["val/acc"])
    per_epoch = m.groupby("epoch")["val/acc"].last()
    assert s["selected_epoch"] == int(per_epoch.idxmax()) + 1
    assert s["selected_val_acc"] == pytest.approx(per_epoch.max(), abs=1e-6)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["detection"]["threshold"] == s["threshold"] and best["epoch"] == s["selected_epoch"] - 1
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    cb = [v for k, v in last["callbacks"].items() if k.startswith("BestCheckpoint")][0]
    assert cb["best_epoch"] == s["selected_epoch"]  # a resumed fit keeps the best score


def test_options_switched_off_keep_the_hash_of_runs_made_before_them():
    """train.ema_decay=0, train.select_best=false and data.hflip=false identify the same model as a
    config without those keys (runs made before the options existed keep their hash)."""
    old = compose("cnn_cr", "fashion_mnist")
    old["train"].pop("ema_decay", None)
    off = compose("cnn_cr", "fashion_mnist", overrides=["train.ema_decay=0", "train.select_best=false",
                                                       "data.hflip=false"])
    assert config_hash(off) == config_hash(old)
    assert config_hash(compose("cnn_cr", "fashion_mnist", overrides=["train.ema_decay=0.99"])) != config_hash(old)
    assert compose("capsnet", "mnist")["train"]["ema_decay"] == 0.999  # the default keeps a weight average


def test_one_cycle_schedule_over_the_whole_run(data_root, tmp_path):
    """train.lr_schedule=onecycle: per optimizer step, from lr/10 up to lr at a quarter of the run's
    steps, then linear down to lr/1e4 after its last step; the default (exponential) is not part of a
    run's identity, so naming it keeps the hash."""
    from lit_caps.config import ConfigError

    cfg = smoke_cfg("cnn_cr", root=data_root, extra=["train.lr_schedule=onecycle", "train.max_epochs=2",
                                                     "train.limit_train_batches=4", "train.lr=0.002"])
    dm, module = build(cfg)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, accelerator="cpu", logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_checkpointing=False,
                        callbacks=[Record()])
    trainer.fit(module, datamodule=dm)
    assert len(lrs) == 8 and lrs[0] == pytest.approx(2e-4)
    peak = lrs.index(max(lrs))
    assert peak == 2 and 1.5e-3 < lrs[peak] <= 2e-3  # the peak near a quarter of the 8 (+1) steps
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rising to it
    assert all(a > b > 0 for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then falling, never below 0
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-3 / 10 / 1e3, rel=1e-6)
    assert config_hash(smoke_cfg("cnn_cr", extra=["train.lr_schedule=exponential"])) == config_hash(smoke_cfg("cnn_cr"))
    assert config_hash(smoke_cfg("cnn_cr", extra=["train.lr_schedule=onecycle"])) != config_hash(smoke_cfg("cnn_cr"))
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        smoke_cfg("cnn_cr", extra=["train.lr_schedule=cosine"])
