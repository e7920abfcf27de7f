"""The attack evaluation as a Lightning callback: after ``fit`` and/or ``test``, every attack of a list on
a fixed, seeded test subset through :func:`lit_caps.evaluation.evaluate.evaluate_attack` (one resumable
result file per setting), its rates and curves logged to every logger and to W&B."""
from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch

from ..reporting.plots import plot_distance_histograms, plot_undetected_vs_fpr
from ..tracking import log_attack_evaluation
from .evaluate import evaluate_attack


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
    ``test`` (``when``), through :func:`lit_caps.evaluation.evaluate.evaluate_attack` (one resumable result
    file per attack setting), and logs ``<result name>/success_rate`` / ``undetected_rate`` /
    ``best_undetected_rate`` / ``roc_auc``, the undetected-rate-vs-FPR curves and the
    clean-vs-adversarial distance histograms (paper Fig. 1b, Fig. 2) to every logger, to W&B as
    series over ``fpr`` (:func:`lit_caps.tracking.log_attack_evaluation`), a line plot, tables and images with the attack
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
        return hashlib.sha256(" ".join(r["settings_hash"] for r in self.results).encode()).hexdigest()[:8]

    def _log(self, trainer, dataset_name: str, model_name: str) -> None:
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
        log_attack_evaluation(run, self.results, curves, fpr_png, hist_png, self.wandb_config(), self.METRICS)
