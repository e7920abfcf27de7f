"""Training: ``fit(cfg)`` trains (or resumes, or reuses) one model and tests it.

A run directory holds ``config.yaml``, ``checkpoints/last.ckpt`` (with the validation distances and
the detection threshold), ``csv/metrics.csv``, ``training_curves.png``, the offline W&B run and
``summary.json`` (our own record of the result: offline W&B runs keep no readable summary).

Durability:

* **Resume, bit for bit.** Rerunning the same command after an interruption (even ``kill -9``)
  resumes from ``last.ckpt`` and ends with the same weights as an uninterrupted run: every random
  draw of training derives from the seed and the position (the epoch's permutation from (seed,
  epoch), each example's shift/flip from (seed, epoch, index): :class:`lit_caps.data.EpochSampler`),
  the training loader's position within the epoch is in the checkpoint and a mid-epoch resume
  continues with the next batch (:class:`lit_caps.data.ResumableDataLoader`), and the global RNG
  states are saved and set again (:class:`lit_caps.training.callbacks.ResumeState`; dropout). On a GPU this
  also needs ``train.deterministic=true``. ``summary.json`` lists the resumes (``resumed``).
* **One process per run.** A run folder is locked while it trains (``<run>/.lock``); a second
  ``fit`` of the same run stops at once with :class:`lit_caps.errors.RunBusyError` (or reuses the run
  if the other has finished it).
* **Verified results.** ``summary.json`` says ``complete`` only after the checkpoint it names was
  read back (it loads, holds the detection threshold, its step matches); a finished run is reused
  only after the same check, so a damaged checkpoint is never reused silently
  (:class:`lit_caps.errors.DamagedFileError`, with the command that recovers).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..config import config_hash, config_key, run_dir_for
from ..data import CapsDataModule
from ..errors import DamagedFileError, RunBusyError, UserError
from ..io import load_checkpoint, write_json_atomic, write_text_atomic
from ..reporting.plots import plot_training_curves
from .callbacks import BestCheckpoint, LastCheckpoint, ResumeState, WallClock
from .loggers import make_loggers
from .module import LitReconstructionClassifier


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
    t = cfg["train"]
    dm = CapsDataModule(**cfg["data"], seed=cfg.get("seed", 0))
    arch = dict(cfg["arch"])
    if tuple(arch.get("image_shape", dm.image_shape)) != tuple(dm.image_shape):
        raise ValueError(f"arch {cfg['arch_name']!r} is for images {arch['image_shape']}, but "
                         f"{dm.name} has {list(dm.image_shape)}; choose a matching arch (e.g. --arch {dm.name})")
    arch["image_shape"] = dm.image_shape
    module = LitReconstructionClassifier(model=cfg["model"], arch=arch, lr=t["lr"], lr_decay=t.get("lr_decay", 1.0),
                                         weight_decay=t.get("weight_decay", 0.0), recon_weight=t["recon_weight"],
                                         fpr=t.get("fpr", 0.05), capsule_lr_scale=t.get("capsule_lr_scale", 1.0),
                                         ema_decay=t.get("ema_decay", 0.0), compile=t.get("compile", False),
                                         lr_schedule=t.get("lr_schedule", "exponential"))
    return dm, module


# -- the run folder: lock, recovery commands, verification ---------------------------------------
def refit_command(run: Path) -> str:
    """A command that continues (or redoes) exactly this run, whatever command made it."""
    return f"`lit-caps fit --config {run / 'config.yaml'} --run-dir {run}`"


def recover_hint(run: Path, path: Path) -> str:
    """What to do about a damaged file of a run (one clause, for DamagedFileError messages)."""
    again = f"rerun the same `lit-caps fit` command (or {refit_command(run)})"
    if path.name == "summary.json":
        return f"remove it and {again}: the run is tested again from its checkpoint (or resumes training)"
    if path.name == "best.ckpt":  # the best epoch's weights are gone: only a full retraining brings them back
        return f"remove the run folder {run} and {again}: it trains the run again"
    return f"remove it and {again}: it trains the run again from the start"


@contextmanager
def run_lock(run: Path):
    """Hold ``<run>/.lock`` (filelock: released by the OS if the process dies, even by kill -9);
    ``<run>/.lock.owner`` names the holder. Raises RunBusyError at once if another process holds it."""
    from filelock import FileLock, Timeout

    run.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run / ".lock"))
    owner = run / ".lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            o = json.loads(owner.read_text())
            who = f"pid {o['pid']} on {o['host']}, since {o['since']}"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise RunBusyError(f"{run} is busy: another `lit-caps fit` ({who}) is training this run; wait for it to "
                           f"finish and rerun this command, which then reuses the finished run (or stop that "
                           f"process: a rerun resumes from its last checkpoint)") from None
    try:
        write_text_atomic(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}))
        yield
    finally:
        try:
            owner.unlink()
        except OSError:
            pass
        lock.release()


def _ddp_child() -> bool:
    """A process of rank > 0 (started by Lightning's DDP launcher, torchrun or SLURM): rank 0 holds the lock."""
    return any(int(os.environ.get(k) or 0) > 0 for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def _remove_stale_temp_files(run: Path) -> None:
    """Temp files of killed processes (``.<name>.tmp<pid>-...``): under the lock nobody else writes."""
    for folder in (run, run / "checkpoints", run / "csv"):
        for p in folder.glob(".*.tmp*") if folder.is_dir() else ():
            try:
                p.unlink()
            except OSError:
                pass


def verify_checkpoint(path: Path, run: Path, *, step: int | None = None, epoch: int | None = None,
                      threshold: float | None = None) -> dict:
    """Read back a run's checkpoint: it loads (else DamagedFileError), holds a detection threshold
    (equal to ``threshold`` if given), and its global step (or epoch) is the expected one. A
    mismatch raises UserError saying so."""
    ck = load_checkpoint(path, recover_hint=recover_hint(run, path))
    det = ck.get("detection") or {}
    if det.get("threshold") is None:
        raise DamagedFileError(f"{path} holds no detection threshold (it was not written after a validation); "
                               f"{recover_hint(run, path)}")
    problems = []
    if threshold is not None and not math.isclose(float(det["threshold"]), float(threshold), rel_tol=1e-9,
                                                  abs_tol=1e-12):
        problems.append(f"its threshold {det['threshold']} is not the summary's {threshold}")
    if step is not None and int(ck.get("global_step", -1)) != int(step):
        problems.append(f"its step {ck.get('global_step')} is not the summary's {step}")
    if epoch is not None and int(ck.get("epoch", -1)) != int(epoch):
        problems.append(f"its epoch {ck.get('epoch')} is not the summary's {epoch}")
    if problems:
        raise UserError(f"{path} does not match {run / 'summary.json'} ({'; '.join(problems)}): the run was changed "
                        f"after it finished (e.g. continued to more epochs); rerun with the settings it was continued "
                        f"with, or remove the run folder and rerun {refit_command(run)}")
    return ck


def _summary_checkpoint(run: Path, summary: dict) -> tuple[Path, dict]:
    """The checkpoint a summary names (inside ``run``, wherever the folder was moved) and what it must hold."""
    path = run / "checkpoints" / Path(summary.get("checkpoint") or "last.ckpt").name
    if "checkpoint_step" in summary:
        expect = {"step": summary["checkpoint_step"]}
    elif path.name == "best.ckpt":  # summaries from before checkpoint_step: the selected epoch's file
        expect = {"epoch": int(summary["selected_epoch"]) - 1} if summary.get("selected_epoch") else {}
    else:
        expect = {"step": summary.get("global_step")}
    return path, expect


def _read_summary(run: Path) -> dict | None:
    path = run / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path} is damaged ({type(e).__name__}); {recover_hint(run, path)}") from None
    return summary


def _finished(run: Path, cfg: dict, say: bool = True) -> dict | None:
    """The summary of a finished run with these settings whose checkpoint reads back, else None
    (None also when the checkpoint is missing: the run is trained again; ``say``: print that).
    Raises DamagedFileError for a damaged checkpoint or summary."""
    summary = _read_summary(run)
    if not summary or not summary.get("complete") or summary.get("epochs") != cfg["train"]["max_epochs"]:
        return None
    path, expect = _summary_checkpoint(run, summary)
    if not path.is_file():
        if say:
            print(f"[lit-caps] {run}: summary.json says finished, but {path.name} is missing; training the run "
                  f"again", flush=True)
        return None
    verify_checkpoint(path, run, threshold=summary.get("threshold"), **expect)
    return summary


def write_training_curves(run: Path) -> Path | None:
    """``<run>/training_curves.png`` from the run's CSV metrics (loss, accuracy, threshold per epoch)."""
    csvs = sorted(run.glob("csv/**/metrics.csv"))
    if not csvs:
        return None
    try:
        return plot_training_curves(csvs, run / "training_curves.png", title=f"{run.parent.name}/{run.name}")
    except Exception as e:  # noqa: BLE001 - a figure never costs a trained run; it says what failed
        print(f"[lit-caps] {run}: could not draw training_curves.png ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def fit(cfg: dict, runs_root: str | Path = "runs", run_dir: str | Path | None = None, test: bool = True,
        extra_callbacks: list | None = None) -> dict:
    """Train one model per ``cfg``; returns the summary dict (also written to summary.json)."""
    run = Path(run_dir) if run_dir else run_dir_for(cfg, runs_root)
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        old = yaml.safe_load(cfg_path.read_text())
        if config_key(old) != config_key(cfg):
            raise RuntimeError(f"{run} holds a run with different settings (see its config.yaml); "
                               f"choose another --run-dir or remove that folder yourself")

    def reuse(summary: dict) -> dict:
        err = summary.get("test_error")
        print(f"[lit-caps] {run}: finished run with these settings found; reusing it"
              + (f" (test error {err * 100:.2f}%)" if err is not None else " (not tested)"))
        if not (run / "training_curves.png").is_file():
            write_training_curves(run)
        return summary

    summary = _finished(run, cfg, say=False)  # without the lock: reading a finished run needs none
    if summary is not None:
        return reuse(summary)
    if _ddp_child():  # Lightning's DDP launcher reruns this command per rank; rank 0 holds the lock
        return _train(cfg, run, test, extra_callbacks)
    with run_lock(run):
        summary = _finished(run, cfg)  # another fit may have finished it meanwhile
        if summary is not None:
            return reuse(summary)
        return _train(cfg, run, test, extra_callbacks)


def _train(cfg: dict, run: Path, test: bool, extra_callbacks: list | None) -> dict:
    last = run / "checkpoints" / "last.ckpt"
    ck_info = None
    if last.is_file():
        # read it back first: a damaged file stops here with one line (and the command that recovers)
        # instead of a traceback from inside Lightning; it is not moved aside or replaced, since it
        # may hold hours of training that only the user can decide to give up
        ck = load_checkpoint(last, recover_hint=recover_hint(run, last))
        ck_info = (ck.get("global_step"), ck.get("epoch"))
        del ck
    import lightning as L


    if not _ddp_child():
        _remove_stale_temp_files(run)
        write_text_atomic(run / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    L.seed_everything(cfg["seed"], workers=True)
    dm, module = build(cfg)
    t = cfg["train"]
    clock, resume = WallClock(), ResumeState()
    # a killed run loses at most checkpoint_every_n_steps steps; the final one holds the threshold
    callbacks = [LastCheckpoint(last, t.get("checkpoint_every_n_steps", 100)), clock, resume]
    callbacks += list(extra_callbacks or [])
    best = BestCheckpoint(run / "checkpoints" / "best.ckpt") if t.get("select_best") else None
    if best is not None:  # before LastCheckpoint, so last.ckpt holds the updated best score
        callbacks.insert(0, best)
    ckpt_path = None
    if ck_info is not None:
        ckpt_path = str(last)
        print(f"[lit-caps] resuming {run} from {last} (step {ck_info[0]}, epoch {ck_info[1]})", flush=True)
    loggers = make_loggers(cfg, run)
    trainer = L.Trainer(default_root_dir=str(run), logger=loggers, callbacks=callbacks, enable_checkpointing=False,
                        enable_progress_bar=cfg.get("progress_bar", True), **_trainer_kwargs(t))
    import inspect

    # weights_only: Lightning's own load of last.ckpt runs no code from the file (Lightning >= 2.5)
    safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, **safe)
    wall = clock.elapsed
    checkpoint, checkpoint_step = last, trainer.global_step
    if best is not None and best.best_epoch is not None:
        # train.select_best: the model is the best validation epoch's (weights, average, threshold)
        if not best.path.is_file():
            raise UserError(f"{best.path} is missing, though {last} records epoch {best.best_epoch} as the best; "
                            f"remove the run folder {run} and rerun {refit_command(run)}: it trains the run again")
        ck = load_checkpoint(best.path, recover_hint=recover_hint(run, best.path))
        module.load_state_dict(ck["state_dict"])
        module.val_distances, module.threshold = ck["detection"]["val_distances"], ck["detection"]["threshold"]
        checkpoint, checkpoint_step = best.path, int(ck["global_step"])
    summary = {
        "run_dir": str(run), "config_hash": config_hash(cfg), "dataset": cfg["data"]["name"], "model": cfg["model"],
        "arch": cfg["arch_name"], "seed": cfg["seed"], "epochs": trainer.current_epoch,
        "max_epochs": t["max_epochs"], "global_step": trainer.global_step, "train_wall_s": round(wall, 1),
        "threshold": module.threshold, "fpr": module.hparams.fpr,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "device": str(trainer.strategy.root_device), "checkpoint": str(checkpoint),
        "checkpoint_step": checkpoint_step, "resumed": list(resume.resumes),
        "compiled_forward": bool(module.compile_training),
    }
    if best is not None:
        summary.update(selected_epoch=best.best_epoch, selected_val_acc=best.best, last_checkpoint=str(last))
    if test:
        res = trainer.test(module, datamodule=dm, verbose=False)[0]
        summary.update(test_acc=res["test/acc"], test_error=1.0 - res["test/acc"],
                       test_distance=res["test/distance"], test_size=len(dm.test_set))
    finished = trainer.current_epoch >= t["max_epochs"] and not trainer.interrupted
    summary["complete"] = finished
    if trainer.is_global_zero:
        try:
            if finished:  # `complete` only once the checkpoint it names reads back and matches
                verify_checkpoint(checkpoint, run, step=checkpoint_step, threshold=module.threshold)
        except UserError:
            summary["complete"] = False
            raise
        finally:
            write_json_atomic(run / "summary.json", summary)
            write_training_curves(run)
    for lg in loggers:
        if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            lg.experiment.finish()
    return summary
