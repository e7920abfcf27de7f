"""Lightning callbacks."""
from __future__ import annotations

import time

import lightning as L


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


class LastCheckpoint(L.Callback):
    """Keeps one resumable ``last.ckpt``, written atomically (temp file + rename, so a kill -9 never
    leaves a truncated checkpoint): every ``every_n_steps`` training steps (mid-epoch) and after each
    validation (so it carries the current detection threshold)."""

    def __init__(self, path, every_n_steps: int = 100):
        from pathlib import Path

        self.path = Path(path)
        self.every_n_steps = every_n_steps

    def save(self, trainer) -> None:
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(str(tmp))
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.save(trainer)
