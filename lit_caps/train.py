"""Training: ``fit(cfg)`` trains (or resumes, or reuses) one model and tests it.

A run directory holds ``config.yaml``, ``checkpoints/last.ckpt`` (with the validation distances and
the detection threshold), ``csv/metrics.csv``, the offline W&B run and ``summary.json`` (our own
record of the result: offline W&B runs keep no readable summary). Rerunning the same command after
an interruption resumes from ``last.ckpt``; after completion it reuses the finished run.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import config_hash, config_key, run_dir_for
from .io import write_json_atomic
from .logging import make_loggers


def _trainer_kwargs(t: dict) -> dict:
    import torch

    kw = dict(max_epochs=t["max_epochs"], accelerator=t.get("accelerator", "auto"),
              devices=t.get("devices", "auto"), precision=t.get("precision", "32-true"),
              deterministic=t.get("deterministic", False), log_every_n_steps=t.get("log_every_n_steps", 50))
    for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "fast_dev_run"):
        if t.get(k) is not None:
            kw[k] = t[k]
    n_gpu = torch.cuda.device_count()
    if kw["accelerator"] in ("auto", "gpu", "cuda") and n_gpu > 1 and kw["devices"] in ("auto", -1, n_gpu):
        kw["strategy"] = "ddp"  # one process per visible GPU
    return kw


def build(cfg: dict):
    """(datamodule, lightning module) for a config."""
    from .data import CapsDataModule
    from .module import LitReconstructionClassifier

    t = cfg["train"]
    dm = CapsDataModule(**cfg["data"])
    arch = dict(cfg["arch"])
    if tuple(arch.get("image_shape", dm.image_shape)) != tuple(dm.image_shape):
        raise ValueError(f"arch {cfg['arch_name']!r} is for images {arch['image_shape']}, but "
                         f"{dm.name} has {list(dm.image_shape)}; choose a matching arch (e.g. --arch {dm.name})")
    arch["image_shape"] = dm.image_shape
    module = LitReconstructionClassifier(model=cfg["model"], arch=arch, lr=t["lr"], lr_decay=t.get("lr_decay", 1.0),
                                         weight_decay=t.get("weight_decay", 0.0), recon_weight=t["recon_weight"],
                                         fpr=t.get("fpr", 0.05), capsule_lr_scale=t.get("capsule_lr_scale", 1.0),
                                         ema_decay=t.get("ema_decay", 0.0))
    return dm, module


def fit(cfg: dict, runs_root: str | Path = "runs", run_dir: str | Path | None = None, test: bool = True,
        extra_callbacks: list | None = None) -> dict:
    """Train one model per ``cfg``; returns the summary dict (also written to summary.json)."""
    import lightning as L

    from .callbacks import BestCheckpoint, LastCheckpoint, WallClock

    run = Path(run_dir) if run_dir else run_dir_for(cfg, runs_root)
    summary_path = run / "summary.json"
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        old = yaml.safe_load(cfg_path.read_text())
        if config_key(old) != config_key(cfg):
            raise RuntimeError(f"{run} holds a run with different settings (see its config.yaml); "
                               f"choose another --run-dir or remove that folder yourself")
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("epochs") == cfg["train"]["max_epochs"] and summary.get("complete"):
            print(f"[lit-caps] {run}: finished run with these settings found; reusing it "
                  f"(test error {summary['test_error'] * 100:.2f}%)")
            return summary
    run.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    L.seed_everything(cfg["seed"], workers=True)
    dm, module = build(cfg)
    t = cfg["train"]
    last = run / "checkpoints" / "last.ckpt"
    clock = WallClock()
    # a killed run loses at most checkpoint_every_n_steps steps; the final one holds the threshold
    callbacks = [LastCheckpoint(last, t.get("checkpoint_every_n_steps", 100)), clock] + list(extra_callbacks or [])
    best = BestCheckpoint(run / "checkpoints" / "best.ckpt") if t.get("select_best") else None
    if best is not None:  # before LastCheckpoint, so last.ckpt holds the updated best score
        callbacks.insert(0, best)
    loggers = make_loggers(cfg, run)
    trainer = L.Trainer(default_root_dir=str(run), logger=loggers, callbacks=callbacks, enable_checkpointing=False,
                        enable_progress_bar=cfg.get("progress_bar", True), **_trainer_kwargs(t))
    ckpt_path = str(last) if last.is_file() else None
    if ckpt_path:
        print(f"[lit-caps] resuming {run} from {last}")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    wall = clock.elapsed
    checkpoint = last
    if best is not None and best.path.is_file():
        # train.select_best: the model is the best validation epoch's (weights, average, threshold)
        import torch

        ck = torch.load(best.path, map_location="cpu", weights_only=False)
        module.load_state_dict(ck["state_dict"])
        module.val_distances, module.threshold = ck["detection"]["val_distances"], ck["detection"]["threshold"]
        checkpoint = best.path
    summary = {
        "run_dir": str(run), "config_hash": config_hash(cfg), "dataset": cfg["data"]["name"], "model": cfg["model"],
        "arch": cfg["arch_name"], "seed": cfg["seed"], "epochs": trainer.current_epoch,
        "max_epochs": t["max_epochs"], "global_step": trainer.global_step, "train_wall_s": round(wall, 1),
        "threshold": module.threshold, "fpr": module.hparams.fpr,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "device": str(trainer.strategy.root_device), "checkpoint": str(checkpoint),
    }
    if best is not None:
        summary.update(selected_epoch=best.best_epoch, selected_val_acc=best.best, last_checkpoint=str(last))
    if test:
        res = trainer.test(module, datamodule=dm, verbose=False)[0]
        summary.update(test_acc=res["test/acc"], test_error=1.0 - res["test/acc"],
                       test_distance=res["test/distance"], test_size=len(dm.test_set))
    summary["complete"] = trainer.current_epoch >= t["max_epochs"] and not trainer.interrupted
    if trainer.is_global_zero:
        write_json_atomic(summary_path, summary)
    for lg in loggers:
        if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            lg.experiment.finish()
    return summary
