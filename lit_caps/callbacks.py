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
    file per attack setting), and logs ``success_rate`` / ``undetected_rate`` (last and best
    iterate), the undetected-rate-vs-FPR curves and the clean-vs-adversarial distance histograms
    (paper Fig. 1b, Fig. 2) to every logger, to W&B as line plots / tables / images, and as PNG.

    Each spec: ``{"name": "r_pgd", "targeted": True, "beta": 0.5, "eps": ..., "steps": ..., ...}``;
    unspecified settings come from the Appendix C preset of the dataset. The Trainer needs
    ``inference_mode=False`` for the test loop (gradients are enabled inside the attacks; the
    callback also leaves inference mode locally).
    """

    def __init__(self, attacks: list[dict], n: int | None = 1000, seed: int = 0, out_dir: str = "results",
                 chunk_size: int = 100, when: tuple[str, ...] = ("test",), dataset_name: str | None = None,
                 model_name: str | None = None, figures_dir: str | None = None, checkpoint: str | None = None,
                 progress: bool = True):
        self.specs = [dict(s) for s in attacks]
        self.n, self.seed, self.out_dir, self.chunk_size = n, seed, out_dir, chunk_size
        self.when, self.dataset_name, self.model_name = tuple(when), dataset_name, model_name
        self.figures_dir, self.checkpoint, self.progress = figures_dir, checkpoint, progress
        self.results: list[dict] = []

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
                    fpr=pl_module.hparams.fpr, checkpoint=self.checkpoint, wait_s=600.0)
                if res.get("status") == "complete":
                    self.results.append(res)
        if trainer.is_global_zero and self.results:
            self._log(trainer, dataset_name, model_name)
        return self.results

    # -- logging ---------------------------------------------------------------------------------
    def _log(self, trainer, dataset_name: str, model_name: str) -> None:
        from pathlib import Path

        from .plots import plot_distance_histograms, plot_undetected_vs_fpr

        fig_dir = Path(self.figures_dir or Path(self.out_dir) / dataset_name / model_name / "figures")
        curves, hists = {}, {}
        metrics = {}
        for r in self.results:
            s, key = r["summary"], r["name"]
            for m in ("success_rate", "undetected_rate", "best_undetected_rate", "roc_auc"):
                if s.get(m) is not None:
                    metrics[f"attack/{key}/{m}"] = s[m]
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

    def _log_wandb(self, run, curves, fpr_png, hist_png) -> None:
        import wandb

        rows = [[k, 100 * f, 100 * u] for k, (fs, us) in curves.items() for f, u in zip(fs, us) if u is not None]
        table = wandb.Table(data=rows, columns=["attack", "fpr_pct", "undetected_pct"])
        summary = wandb.Table(columns=["attack", "targeted", "beta", "n", "success_rate", "undetected_rate",
                                       "best_undetected_rate", "roc_auc"],
                              data=[[r["settings"]["attack"], r["settings"]["targeted"], r["settings"]["beta"],
                                     r["summary"]["n"], r["summary"]["success_rate"], r["summary"]["undetected_rate"],
                                     r["summary"]["best_undetected_rate"], r["summary"]["roc_auc"]]
                                    for r in self.results])
        run.log({"attack/undetected_vs_fpr": wandb.plot.line(table, "fpr_pct", "undetected_pct", stroke="attack",
                                                             title="Undetected rate vs FPR"),
                 "attack/rates": summary,
                 "attack/undetected_vs_fpr_png": wandb.Image(str(fpr_png)),
                 "attack/distance_histograms": wandb.Image(str(hist_png))})
