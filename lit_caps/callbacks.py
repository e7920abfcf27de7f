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


def _write_checkpoint(trainer, checkpoint: dict, path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a per-process temp file, fsync, rename: a kill at
    any moment leaves the previous file or the new one, never a truncated one), on rank 0."""
    import torch

    from .io import atomic_write

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


def expand_attack_specs(attacks, targeted=("targeted", "untargeted"), betas=(0.5,), **common) -> list[dict]:
    """Attack names (or dicts) -> one spec per (attack, targeted, beta). R-* attacks get every beta."""
    specs = []
    for a in attacks:
        spec = dict(a) if isinstance(a, dict) else {"name": a}
        tlist = [spec.pop("targeted")] if "targeted" in spec else [t in (True, "targeted") for t in targeted]
        blist = [spec.pop("beta")] if "beta" in spec else (list(betas) if spec["name"].startswith("r_") else [None])
        for t in tlist:
            for b in blist:
                specs.append({**common, **spec, "targeted": bool(t), "beta": b})
    return specs


class AttackEvaluation(L.Callback):
    """Runs a list of attacks on a fixed, seeded test subset of ``n`` examples after ``fit`` and/or
    ``test`` (``when``), through :func:`lit_caps.evaluation.evaluate_attack` (one resumable result
    file per attack setting), and logs ``<result name>/success_rate`` / ``undetected_rate`` /
    ``best_undetected_rate`` / ``roc_auc``, the undetected-rate-vs-FPR curves and the
    clean-vs-adversarial distance histograms (paper Fig. 1b, Fig. 2) to every logger, to W&B as
    series over ``fpr`` (``wandb.define_metric``), a line plot, tables and images with the attack
    settings in the run config, and as PNG.

    Each spec: ``{"name": "r_pgd", "targeted": True, "beta": 0.5, "eps": ..., "steps": ..., ...}``;
    unspecified settings come from the Appendix C preset of the dataset. The Trainer needs
    ``inference_mode=False`` for the test loop (gradients are enabled inside the attacks; the
    callback also leaves inference mode locally).

    ``figures_dir`` (default ``<out_dir>/<dataset>/<model>/figures/<key>``, ``key`` a hash of the
    results' settings hashes, so another model or attack list never writes over these figures).
    Processes sharing ``out_dir`` split the chunks (``claim_wait_s``: see ``evaluate_attack``).
    """

    def __init__(self, attacks: list[dict], n: int | None = 1000, seed: int = 0, out_dir: str = "results",
                 chunk_size: int = 100, when: tuple[str, ...] = ("test",), dataset_name: str | None = None,
                 model_name: str | None = None, figures_dir: str | None = None, checkpoint: str | None = None,
                 progress: bool = True, claim_wait_s: float | None = None):
        self.specs = [dict(s) for s in attacks]
        self.n, self.seed, self.out_dir, self.chunk_size = n, seed, out_dir, chunk_size
        self.when, self.dataset_name, self.model_name = tuple(when), dataset_name, model_name
        self.figures_dir, self.checkpoint, self.progress = figures_dir, checkpoint, progress
        self.claim_wait_s = claim_wait_s
        self.results: list[dict] = []
        self.figures: list = []

    def on_fit_end(self, trainer, pl_module):
        if "fit" in self.when:
            self.run(trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        if "test" in self.when:
            self.run(trainer, pl_module)

    def run(self, trainer, pl_module) -> list[dict]:
        import torch

        from .evaluation import evaluate_attack

        dm = trainer.datamodule
        if pl_module.threshold is None or pl_module.val_distances is None:
            raise RuntimeError("AttackEvaluation needs the detection threshold: fit the model (validation sets it) "
                               "or load a checkpoint saved after validation")
        dm.setup("test")
        dataset_name = self.dataset_name or dm.name
        model_name = self.model_name or pl_module.hparams.model
        self.results = []
        with torch.inference_mode(False), torch.enable_grad():
            for spec in self.specs:
                spec = dict(spec)
                name = spec.pop("name")
                targeted = spec.pop("targeted", False)
                beta = spec.pop("beta", None)
                eps = spec.pop("eps", None)
                res = evaluate_attack(
                    pl_module.eval_model(), dm.test_set, name, dataset_name=dataset_name, model_name=model_name,
                    targeted=targeted, eps=eps, beta=beta, seed=self.seed, n=self.n,
                    threshold=pl_module.threshold, val_distances=pl_module.val_distances, settings=spec or None,
                    out_dir=self.out_dir, chunk_size=self.chunk_size, device=pl_module.device,
                    progress=self.progress, rank=trainer.global_rank, world_size=trainer.world_size,
                    fpr=pl_module.hparams.fpr, checkpoint=self.checkpoint, wait_s=600.0,
                    claim_wait_s=self.claim_wait_s)
                if res.get("status") == "complete":
                    self.results.append(res)
        if trainer.is_global_zero and self.results:
            self._log(trainer, dataset_name, model_name)
        return self.results

    # -- logging ---------------------------------------------------------------------------------
    METRICS = ("success_rate", "undetected_rate", "best_undetected_rate", "roc_auc")

    def figures_key(self) -> str:
        """A hash of the results' settings hashes (model weights, threshold, attack settings, ...)."""
        import hashlib

        return hashlib.sha256(" ".join(r["settings_hash"] for r in self.results).encode()).hexdigest()[:8]

    def _log(self, trainer, dataset_name: str, model_name: str) -> None:
        from pathlib import Path

        from .plots import plot_distance_histograms, plot_undetected_vs_fpr

        fig_dir = Path(self.figures_dir or
                       Path(self.out_dir) / dataset_name / model_name / "figures" / self.figures_key())
        curves, hists = {}, {}
        metrics = {}
        for r in self.results:
            s, key = r["summary"], r["name"]
            for m in self.METRICS:
                if s.get(m) is not None:
                    metrics[f"{key}/{m}"] = s[m]
            curves[key] = (s["undetected_vs_fpr"]["fpr"], s["undetected_vs_fpr"]["undetected_rate"])
            ex = r["examples"]
            hists[key] = [d for d, ok in zip(ex["adv_dist"], ex["success"]) if ok and d is not None]
        clean = self.results[0]["examples"]["clean_dist"]
        title = f"{dataset_name} / {model_name}"
        fpr_png = plot_undetected_vs_fpr(curves, fig_dir / "undetected_vs_fpr.png", title)
        hist_png = plot_distance_histograms(clean, hists, self.results[0]["settings"]["threshold"],
                                            fig_dir / "distance_histograms.png", title)
        self.figures = [fpr_png, hist_png]
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
            if lg.__class__.__name__ == "WandbLogger":
                self._log_wandb(lg.experiment, curves, fpr_png, hist_png)

    def wandb_config(self) -> dict:
        """The attack settings of every result (W&B run config ``attacks``), keyed by result name."""
        keep = ("attack", "targeted", "beta", "eps", "attack_settings", "n", "seed", "chunk_size", "threshold",
                "fpr", "model_hash", "checkpoint")
        return {"attacks": {r["name"]: dict({k: r["settings"].get(k) for k in keep}, settings_hash=r["settings_hash"])
                            for r in self.results},
                "attack_n": self.n, "attack_seed": self.seed, "attack_chunk_size": self.chunk_size}

    def _log_wandb(self, run, curves, fpr_png, hist_png) -> None:
        import wandb

        run.config.update(self.wandb_config(), allow_val_change=True)
        # the undetected-rate-vs-FPR curves as series over `fpr` (one chart per attack, fpr on the x-axis)
        run.define_metric("fpr")
        for key in curves:
            run.define_metric(f"{key}/undetected_at_fpr", step_metric="fpr")
        points: dict = {}
        for key, (fs, us) in curves.items():
            for f, u in zip(fs, us):
                if u is not None:
                    points.setdefault(float(f), {})[f"{key}/undetected_at_fpr"] = u
        for f in sorted(points):
            run.log({"fpr": f, **points[f]})
        rows = [[k, 100 * f, 100 * u] for k, (fs, us) in curves.items() for f, u in zip(fs, us) if u is not None]
        table = wandb.Table(data=rows, columns=["attack", "fpr_pct", "undetected_pct"])
        summary = wandb.Table(columns=["attack", "targeted", "beta", "n", *self.METRICS],
                              data=[[r["settings"]["attack"], r["settings"]["targeted"], r["settings"]["beta"],
                                     r["summary"]["n"], *(r["summary"].get(m) for m in self.METRICS)]
                                    for r in self.results])
        run.log({"undetected_vs_fpr": wandb.plot.line(table, "fpr_pct", "undetected_pct", stroke="attack",
                                                      title="Undetected rate vs FPR"),
                 "rates": summary,
                 "undetected_vs_fpr_png": wandb.Image(str(fpr_png)),
                 "distance_histograms": wandb.Image(str(hist_png))})
        for r in self.results:
            for m in self.METRICS:
                if r["summary"].get(m) is not None:
                    run.summary[f"{r['name']}/{m}"] = r["summary"][m]
