"""Loggers: CSV always (readable offline), W&B offline unless the user has an API key.

The CSV log of a training run (``<run>/csv/metrics.csv``) is append-only across resumes
(:class:`AppendingCSVLogger`; Lightning's CSVLogger deletes the file when a run resumes): the rows of
every earlier part stay, and a row is written once per (step, set of metrics) - the steps a resumed
run redoes after its last checkpoint log rows that are already there, and those are not written
again (the first-written row is kept; on a CPU the redone step reproduces it bit for bit). Other
jobs (``lit-caps evaluate``) keep Lightning's CSVLogger.

W&B: offline unless the user has an API key (the mode comes from :mod:`lit_caps.tracking`).
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from ..io import atomic_write
from ..tracking import ensure_wandb_mode


def _row_key(row: dict) -> tuple[int, frozenset]:
    """What identifies a logged row: its step and which metrics it holds."""
    return int(float(row["step"])), frozenset(k for k, v in row.items() if k != "step" and v not in ("", None))


_CLASSES: dict = {}


def _csv_classes():
    """(AppendingExperimentWriter, AppendingCSVLogger), defined on first use (Lightning is imported
    only when a logger is made: ``wandb_mode`` and friends stay light)."""
    if _CLASSES:
        return _CLASSES["writer"], _CLASSES["logger"]
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingExperimentWriter(ExperimentWriter):
        """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, never deleted:
        new rows are appended (flushed and fsynced), a row whose (step, metrics) is already in the file
        is not written again, and a new column rewrites the file atomically (temp file + rename) with
        every earlier row kept. A last line cut short by a crash (no newline) is not a row: it is left
        out when the file is next written, with a warning."""

        def _check_log_dir_exists(self) -> None:  # called by __init__, where Lightning deletes the file
            self._seen: set = set()
            self._rewrite = False
            self.skipped = 0  # rows not written again (already in the file)
            if not os.path.isfile(self.metrics_file_path):
                return
            with open(self.metrics_file_path, newline="") as f:
                text = f.read()
            if text and not text.endswith("\n"):
                warnings.warn(f"{self.metrics_file_path}: the last line was cut short (a crash while writing it); "
                              f"it is left out", stacklevel=2)
                text = text[: text.rfind("\n") + 1]
                self._rewrite = True
            reader = csv.DictReader(text.splitlines())
            rows = list(reader)
            self.metrics_keys = list(reader.fieldnames or [])
            for r in rows:
                if r.get("step") not in (None, ""):
                    self._seen.add(_row_key(r))

        def save(self) -> None:
            rows, self.metrics = self.metrics, []
            new = []
            for r in rows:
                key = _row_key(r)
                if key in self._seen:
                    self.skipped += 1
                    continue
                self._seen.add(key)
                new.append(r)
            if not new and not self._rewrite:
                return
            keys = set().union(*new) if new else set()
            new_keys = keys - set(self.metrics_keys)
            if new_keys:
                self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
            path = self.metrics_file_path
            if os.path.isfile(path) and (new_keys or self._rewrite):
                with open(path, newline="") as f:
                    text = f.read()
                old = list(csv.DictReader(text[: text.rfind("\n") + 1].splitlines()))

                def write(fb):
                    import io

                    buf = io.StringIO()
                    w = csv.DictWriter(buf, fieldnames=self.metrics_keys, lineterminator="\n")
                    w.writeheader()
                    w.writerows(old + new)
                    fb.write(buf.getvalue().encode())

                atomic_write(path, write)
                self._rewrite = False
                return
            exists = os.path.isfile(path)
            with open(path, "a" if exists else "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.metrics_keys, lineterminator="\n")
                if not exists:
                    w.writeheader()
                w.writerows(new)
                f.flush()
                os.fsync(f.fileno())

    class AppendingCSVLogger(CSVLogger):
        """``CSVLogger`` whose ``metrics.csv`` survives resumes (see :class:`AppendingExperimentWriter`)."""

        @property
        @rank_zero_experiment
        def experiment(self) -> AppendingExperimentWriter:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
            return self._experiment

    _CLASSES.update(writer=AppendingExperimentWriter, logger=AppendingCSVLogger)
    return AppendingExperimentWriter, AppendingCSVLogger


def AppendingCSVLogger(*args, **kwargs):  # noqa: N802 - a class, made on first use
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` is continued across resumes, never deleted:
    new rows are appended, a (step, metrics) row already in the file is not written again, and a new
    column rewrites the file atomically with every earlier row kept (``AppendingExperimentWriter``)."""
    return _csv_classes()[1](*args, **kwargs)


def make_loggers(cfg: dict, run_dir: Path, job_type: str = "fit") -> list:
    lcfg = cfg.get("logger", {})
    loggers = []
    if lcfg.get("csv", True):
        if job_type == "fit":  # a training run's log is continued across resumes (AppendingCSVLogger)
            loggers.append(AppendingCSVLogger(str(run_dir), name="", version="csv"))
        else:
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(str(run_dir), name="", version="csv"))
    if lcfg.get("wandb", True):
        from lightning.pytorch.loggers import WandbLogger

        mode = ensure_wandb_mode()
        run_id = run_dir.name if job_type == "fit" else f"{cfg['data']['name']}-{run_dir.name}-{job_type}"
        loggers.append(WandbLogger(project=lcfg.get("project", "lit_caps"), save_dir=str(run_dir),
                                   name=f"{cfg['data']['name']}/{run_dir.name}", id=run_id, resume="allow",
                                   mode=mode, config=cfg, group=cfg["data"]["name"], job_type=job_type))
    return loggers
