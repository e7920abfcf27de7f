"""Fig. 1 of Qin et al.: why class-conditional reconstructions detect adversarial inputs.

(a) On clean test images, the reconstruction from the correct class's capsule (CapsNet) or group
(CNN+CR) lies much closer to the input than the reconstructions from the other classes'. (b) For
successful adversarial inputs (targeted PGD, the standard attack), the reconstruction from the
predicted (wrong) class lies far from the input: most are flagged at the 5% FPR threshold.
CNN+R reconstructs from the whole penultimate layer, so (a) does not apply to it.

``fig1(dataset, scale)`` writes ``reports/figures/fig1_<dataset>_<scale>.png`` and
``reports/fig1_<dataset>_<scale>.{md,csv}`` (the numbers behind the histograms). (b) reads Table 1's
targeted PGD result file of the scale (computed, resumable, when missing).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import recipe_env_prefix
from ..evaluation import load_examples, subset_positions
from ..io import write_text_atomic
from ..names import dataset_name, model_name
from ..reporting.markdown import generation_line
from ..reporting.plots import plot_fig1
from ..runs import RunNotFoundError, ensure_run
from ..tracking import log_report
from .cells import MODELS, Cell, evaluate_cell, resolve_device, results_dir, scale_settings


@torch.no_grad()
def capsule_distances(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """Distances ||r_k(x) - x||_2 of the reconstructions from every class k: (correct [N], others [N*(K-1)])."""
    correct, others = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        out = model(xb)
        k = out.logits.shape[1]
        d = torch.stack([(model.reconstruct(out.poses, torch.full_like(yb, c)) - xb).flatten(1).norm(dim=1)
                         for c in range(k)], dim=1)  # [B, K]
        mask = torch.nn.functional.one_hot(yb, k).bool()
        correct.append(d[mask].numpy())
        others.append(d[~mask].numpy())
    return np.concatenate(correct), np.concatenate(others)


def fig1(dataset: str = "mnist", scale: str = "quick", runs_root="runs", out_dir="results", report_dir="reports",
         models=MODELS, seed: int = 0, *, settings: dict | None = None, attack_seed: int = 0, device: str | None = None,
         data_root: str | None = None, train: bool = False, progress: bool = False,
         wandb_log: bool = True) -> pd.DataFrame:
    t0 = time.perf_counter()
    device = resolve_device(device)
    sc = scale_settings(scale, "table1")
    n_a = (dict(settings) if settings is not None else scale_settings(scale, "fig1"))["n"]  # panel (a): test images (seeded subset)
    panels_a, panels_b, rows = {}, {}, []
    for m in models:
        run = ensure_run(dataset, m, scale, seed=seed, runs_root=runs_root, train=train, data_root=data_root)
        if isinstance(run, str):
            raise RunNotFoundError(f"fig1: no trained {m} on {dataset}; train it with:\n    {run}")
        name = model_name(m)
        row = {"dataset": dataset, "scale": scale, "model": m, "threshold": run.threshold,
               "model_hash": run.model_hash, "epochs": run.summary.get("epochs")}
        if getattr(run.model, "conditional", True):
            pos = subset_positions(len(run.test_set), n_a, attack_seed)
            x, y, _ = load_examples(run.test_set, pos)
            correct, others = capsule_distances(run.model.eval().cpu(), x, y)
            panels_a[name] = (correct, others, run.threshold)
            row.update(n_a=len(pos), mean_correct=float(correct.mean()), mean_other=float(others.mean()),
                       correct_above_threshold=float((correct > run.threshold).mean()),
                       other_above_threshold=float((others > run.threshold).mean()))
        res = evaluate_cell(run, Cell(m, "pgd", True), dataset, sc, attack_seed=attack_seed,
                           out_dir=results_dir(out_dir, scale), device=device, only_report=False, progress=progress)
        e = pd.DataFrame(res["examples"])
        succ = e[e["success"].astype(bool)]
        panels_b[name] = (e["clean_dist"].to_numpy(), succ["adv_dist"].to_numpy(), run.threshold)
        row.update(n_b=len(e), pgd_result=res["path"], pgd_steps=res["settings"]["attack_settings"].get("steps"),
                   pgd_success_rate=float(e["success"].mean()), mean_clean=float(e["clean_dist"].mean()),
                   mean_adv_successful=float(succ["adv_dist"].mean()) if len(succ) else None,
                   successful_flagged=float((succ["adv_dist"] > run.threshold).mean()) if len(succ) else None,
                   roc_auc=res["summary"].get("roc_auc"))
        rows.append(row)
    dname = dataset_name(dataset)
    png = Path(report_dir) / "figures" / f"fig1_{dataset}_{scale}.png"
    plot_fig1(panels_a, panels_b, png, f"{dname} ({scale}): reconstruction distances")
    df = pd.DataFrame(rows)
    pct = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}"  # noqa: E731
    num = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731
    md = [f"# Fig. 1 ({dname}, scale `{scale}`): reconstruction distances", "",
          f"Generated by `{recipe_env_prefix()}lit-caps reproduce fig1 --data {dataset} --scale {scale}`. ![Fig. 1](figures/{png.name})", "",
          f"(a) clean test images (N = {n_a}, seeded subset): distance of the reconstruction from the correct "
          "class's capsule / group vs from each of the other 9. (b) the same subset protocol as Table 1: targeted "
          f"PGD (eps {res['settings']['eps']:g}, {rows[-1]['pgd_steps']} iterations, N = {rows[-1]['n_b']}); clean "
          "inputs vs the successful adversarial ones, reconstructed from the predicted class. Threshold: the 95th "
          "percentile of the validation distances.", "",
          "| model | mean d, correct | mean d, others | correct > threshold % | others > threshold % | "
          "mean d, clean | mean d, PGD successful | PGD success % | successful PGD flagged % | ROC-AUC |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {model_name(r['model'])} | {num(r.get('mean_correct'))} | {num(r.get('mean_other'))} | "
                  f"{pct(r.get('correct_above_threshold'))} | {pct(r.get('other_above_threshold'))} | "
                  f"{num(r['mean_clean'])} | {num(r['mean_adv_successful'])} | {pct(r['pgd_success_rate'])} | "
                  f"{pct(r['successful_flagged'])} | {num(r['roc_auc'])} |")
    md += ["", "CNN+R: (a) does not apply (its reconstruction uses the whole penultimate layer, not one class's part).",
           generation_line(time.perf_counter() - t0)]
    write_text_atomic(Path(report_dir) / f"fig1_{dataset}_{scale}.csv", df.to_csv(index=False))
    write_text_atomic(Path(report_dir) / f"fig1_{dataset}_{scale}.md", "\n".join(md) + "\n")
    print(f"[fig1 {dataset}/{scale}] {png}", flush=True)
    if wandb_log:
        log_report(f"fig1-{dataset}", scale, df, {"fig1": png}, {}, results_dir(out_dir, scale))
    return df


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce fig1``: :func:`fig1` for each dataset (default MNIST)."""
    for d in ctx.datasets_or(("mnist",)):
        fig1(d, ctx.scale, ctx.runs_root, ctx.out_dir, ctx.report_dir, ctx.models, ctx.seed, settings=sc,
             attack_seed=ctx.attack_seed, device=ctx.device, data_root=ctx.data_root, train=ctx.train,
             progress=ctx.progress, wandb_log=ctx.wandb)
