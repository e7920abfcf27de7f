"""Training callbacks: wall time, atomic last/best checkpoints, and the resume state (RNG states, the
loader's position) that makes a resumed run bit-exact."""
from __future__ import annotations

import time

import lightning as L

from ..io import atomic_write


class WallClock(L.Callback):
    """Training wall time, accumulated across resumes (kept in the checkpoint)."""

    def __init__(self):
        self.elapsed = 0.0
        self._t0: float | None = None

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def _tick(self):
        if self._t0 is not None:
            now = time.perf_counter()
            self.elapsed += now - self._t0
            self._t0 = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._tick()

    def on_train_end(self, trainer, pl_module):
        self._tick()
        self._t0 = None

    def state_dict(self):
        self._tick()
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state_dict):
        self.elapsed = state_dict.get("elapsed", 0.0)


def _write_checkpoint(trainer, checkpoint: dict, path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a per-process temp file, fsync, rename: a kill at
    any moment leaves the previous file or the new one, never a truncated one), on rank 0."""
    import torch

    if trainer.is_global_zero:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
    trainer.strategy.barrier("lit_caps_checkpoint")


class LastCheckpoint(L.Callback):
    """Keeps one resumable ``last.ckpt``: every ``every_n_steps`` training steps (mid-epoch) and after
    each validation (so it carries the current detection threshold).

    The state is taken where Lightning's own checkpoints take it (the end of a training batch, the
    end of validation), but the file is written a moment later, once Lightning has logged that
    batch's (or that epoch's) CSV rows: at the start of the next batch or epoch, or at the end of
    training. A checkpoint on disk thus never covers a step whose row is not on disk; a kill between
    taking and writing costs only the steps since the previous file (they are redone). Nothing is
    changed between the two moments (no optimizer step runs in between). A pending state is dropped
    if training stops with an exception. The last batch of an epoch gets no mid-epoch checkpoint
    (the one after that epoch's validation follows at once)."""

    def __init__(self, path, every_n_steps: int = 100):
        from pathlib import Path

        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._pending: dict | None = None
        self.writes = 0  # files written by this process

    def capture(self, trainer) -> dict:
        for lg in trainer.loggers:  # rows logged so far are on disk before the state that follows them
            lg.save()
        return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)

    def write(self, trainer, checkpoint: dict) -> None:
        _write_checkpoint(trainer, checkpoint, self.path)
        self.writes += 1

    def save(self, trainer) -> None:
        self.write(trainer, self.capture(trainer))

    def flush(self, trainer) -> None:
        if self._pending is not None:
            checkpoint, self._pending = self._pending, None
            for lg in trainer.loggers:
                lg.save()
            self.write(trainer, checkpoint)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = self.every_n_steps
        last_of_epoch = (trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
                         or batch_idx + 1 >= trainer.num_training_batches)
        if n and trainer.global_step % n == 0 and not last_of_epoch:
            self._pending = self.capture(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.flush(trainer)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.flush(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._pending = self.capture(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        self.flush(trainer)

    def on_train_end(self, trainer, pl_module):
        self.flush(trainer)

    def on_exception(self, trainer, pl_module, exception):
        self._pending = None  # taken before the failure, but maybe not consistent with what followed


class BestCheckpoint(LastCheckpoint):
    """``best.ckpt``: the checkpoint after the validation epoch with the highest ``monitor``
    (default ``val/acc``: the evaluated model's validation accuracy), written atomically with that
    epoch's detection state. Model selection on the held-out validation split (``train.select_best``),
    never on test data. ``best_epoch`` counts the epochs completed at that point (1-based). The
    best score and epoch travel in every checkpoint, so a resumed fit keeps them."""

    def __init__(self, path, monitor: str = "val/acc"):
        super().__init__(path, every_n_steps=0)
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pass

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self.best is None or score > self.best:  # ties keep the earlier epoch
            self.best, self.best_epoch = score, int(trainer.current_epoch) + 1  # epochs completed
            self.save(trainer)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "monitor": self.monitor}

    def load_state_dict(self, state_dict):
        self.best, self.best_epoch = state_dict.get("best"), state_dict.get("best_epoch")


def _rng_state() -> dict:
    """The global RNG states (torch CPU and CUDA, numpy, python), as plain tensors and tuples (a
    checkpoint stays loadable with ``weights_only=True``)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(L.Callback):
    """What a bit-exact resume needs besides Lightning's own state and the training loader's
    position (:class:`lit_caps.data.ResumableDataLoader`): the global RNG states as of the
    checkpoint, set again when training restarts (dropout draws from them), and the record of the
    resumes so far (``resumes``: ``{"from_step", "epoch", "at"}`` each, kept in every later
    checkpoint and reported in summary.json)."""

    def __init__(self):
        self.resumes: list[dict] = []
        self._rng: dict | None = None
        self._loaded = False

    def state_dict(self):
        return {"rng": _rng_state(), "resumes": [dict(r) for r in self.resumes]}

    def load_state_dict(self, state_dict):
        self._rng = state_dict.get("rng")
        self.resumes = [dict(r) for r in state_dict.get("resumes", [])]
        self._loaded = True

    def on_train_start(self, trainer, pl_module):
        if trainer.ckpt_path is None:
            return
        from datetime import datetime, timezone

        self.resumes.append({"from_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                             "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        if self._rng is not None:
            _set_rng_state(self._rng)
            self._rng = None
        elif not self._loaded:
            import warnings

            warnings.warn(f"{trainer.ckpt_path} was written by an earlier lit_caps: this resume is not bit-exact "
                          f"(no RNG state; an interrupted epoch restarts from its first batch)", stacklevel=2)
