"""Fig. 4 of Qin et al. (Section 6): class-pair success of targeted R-PGD.

``class_pairs``: for each model, ``per_class`` correctly classified test images of every source
class are attacked towards each of the 9 other classes (eps 25/255 on Fashion-MNIST as in the
paper's Fig. 4); the success (and undetected) rate per (source, target) pair, drawn as heat maps
and as the paper's box plot, plus the paper's claim as a number: Spearman's rank correlation, over
the 90 ordered pairs, between the pair's success rate and a similarity of the two classes (i) the
clean model's confusion (symmetrised: how often the one is taken for the other) and (ii) minus the
distance between the class-mean test images. Per-source results are saved as they finish
(resumable); the file is reused when its settings match.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ..attacks import ITERATIONS
from ..config import recipe_env_prefix
from ..evaluation import predict_batched
from ..io import write_json_atomic, write_text_atomic
from ..names import class_names, dataset_name, model_name
from ..reporting.markdown import dur, generation_line
from ..reporting.plots import plot_class_pairs
from ..tracking import log_report
from .cells import MODELS, results_dir, scale_settings
from .diagnosis import attack_towards, prepare, rho


def class_pairs(dataset: str = "fashion_mnist", scale: str = "quick", runs_root="runs", out_dir="results",
                report_dir="reports", models=MODELS, seed: int = 0, *, settings: dict | None = None, eps: float = 25 / 255,
                data_root: str | None = None, train: bool = False, wandb_log: bool = True) -> pd.DataFrame:
    """Fig. 4 -> ``reports/fig4_class_pairs_<dataset>_<scale>.{md,csv}`` and ``figures/fig4_...png``."""
    t0 = time.perf_counter()
    sc = dict(settings) if settings is not None else scale_settings(scale, "fig4")
    per_class, steps = sc["per_class"], sc["steps"]
    steps = ITERATIONS[dataset] if steps is None else min(steps, ITERATIONS[dataset])
    names = class_names(dataset)
    mats, rows, info = {}, [], {}
    for m in models:
        run, model, beta, beta_src, x, y = prepare("class_pairs", dataset, m, scale, seed, runs_root, out_dir,
                                                    train, data_root)
        pred, _ = predict_batched(model, x)
        k = 10
        conf = np.zeros((k, k))
        np.add.at(conf, (y.numpy(), pred.numpy()), 1)
        conf = conf / conf.sum(1, keepdims=True)
        means = torch.stack([x[y == c].mean(0) for c in range(k)]).flatten(1)
        mdist = torch.cdist(means, means).numpy()
        settings = {"dataset": dataset, "model": m, "model_hash": run.model_hash, "eps": eps, "steps": steps,
                    "beta": beta, "per_class": per_class, "seed": seed, "threshold": run.threshold}
        shash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        path = results_dir(out_dir, scale) / dataset / m / f"class_pairs-eps{eps:.4g}-n{per_class}-s{seed}.json"
        state = json.loads(path.read_text()) if path.is_file() else {}
        if state.get("settings_hash") != shash:
            state = {"settings": settings, "settings_hash": shash, "sources": {}}
        rng = np.random.default_rng(seed)
        ok = (pred == y).numpy()
        for s in range(k):
            if str(s) in state["sources"]:
                continue
            pool = np.flatnonzero((y.numpy() == s) & ok)
            idx = np.sort(rng.permutation(pool)[:per_class]) if len(pool) else pool
            ts = [t for t in range(k) if t != s]
            if len(idx) == 0:  # the model gets no image of this class right: nothing to attack
                state["sources"][str(s)] = {"indices": [], "targets": ts, "success": [float("nan")] * len(ts),
                                            "undetected": [float("nan")] * len(ts), "wall_time_s": 0.0}
                continue
            xs = x[idx].repeat(len(ts), 1, 1, 1)
            ys = y[idx].repeat(len(ts))
            tt = torch.tensor(ts).repeat_interleave(len(idx))
            tc = time.perf_counter()
            _, p, d = attack_towards(model, xs, ys, tt, eps=eps, steps=steps, beta=beta, threshold=run.threshold,
                              seed=seed * 1000 + s)
            succ = (p == tt).float().view(len(ts), len(idx)).mean(1).tolist()
            und = ((p == tt) & (d <= run.threshold)).float().view(len(ts), len(idx)).mean(1).tolist()
            state["sources"][str(s)] = {"indices": idx.tolist(), "targets": ts, "success": succ, "undetected": und,
                                        "wall_time_s": time.perf_counter() - tc}
            write_json_atomic(path, state)
            print(f"[fig4 {dataset}/{scale}] {m} source {names[s]}: success {100 * np.mean(succ):.1f}% "
                  f"({time.perf_counter() - tc:.1f}s)", flush=True)
        S = np.full((k, k), np.nan)
        U = np.full((k, k), np.nan)
        for s, e in state["sources"].items():
            for t, a, b in zip(e["targets"], e["success"], e["undetected"]):
                S[int(s), t], U[int(s), t] = a, b
        off = ~np.eye(k, dtype=bool)
        conf_sym = (conf + conf.T) / 2
        r_conf = spearmanr(S[off], conf_sym[off], nan_policy="omit")
        r_mean = spearmanr(S[off], -mdist[off], nan_policy="omit")
        mats[model_name(m)] = S
        info[m] = (beta_src, run)
        rows.append({"dataset": dataset, "scale": scale, "model": m, "beta": beta, "eps": eps, "steps": steps,
                     "per_class": per_class, "pairs": int(off.sum()), "mean_success_pct": round(100 * np.nanmean(S[off]), 1),
                     "mean_undetected_pct": round(100 * np.nanmean(U[off]), 1),
                     "median_success_pct": round(100 * np.nanmedian(S[off]), 1),
                     "spearman_success_vs_confusion": round(float(r_conf.statistic), 3),
                     "p_confusion": float(r_conf.pvalue),
                     "spearman_success_vs_mean_image_similarity": round(float(r_mean.statistic), 3),
                     "p_mean_image": float(r_mean.pvalue),
                     "attack_wall_time_s": round(sum(e["wall_time_s"] for e in state["sources"].values()), 1),
                     "result": str(path), "model_hash": run.model_hash})
        rows[-1]["pairs_table"] = json.dumps({f"{names[s]}->{names[t]}": round(100 * S[s, t], 1)
                                              for s in range(k) for t in range(k) if s != t})
    stem = f"fig4_class_pairs_{dataset}_{scale}"
    png = Path(report_dir) / "figures" / f"{stem}.png"
    plot_class_pairs(mats, names, png, f"{dataset_name(dataset)}: targeted R-PGD success per class pair "
                     f"(eps {eps * 255:.0f}/255, {steps} iterations, {per_class} images per source class)")
    df = pd.DataFrame(rows)
    md = [f"# Fig. 4: class-pair success of targeted R-PGD ({dataset_name(dataset)}, scale `{scale}`)", "",
          f"Generated by `{recipe_env_prefix()}lit-caps reproduce fig4 --data {dataset} --scale {scale}`. ![Fig. 4](figures/{png.name})", "",
          f"For each model, {per_class} correctly classified test images of each source class (seeded) are attacked "
          f"towards each of the other 9 classes: targeted R-PGD, eps {eps * 255:.0f}/255 (the paper's Fig. 4), step "
          f"0.01, {steps} iterations (paper, Appendix C: {ITERATIONS[dataset]}), beta as below. Success = classified "
          "as the target; undetected = also d(x') <= threshold. The paper's claim (Section 6): CapsNet's pairwise "
          "success follows the visual similarity of the classes (e.g. shirt/T-shirt/pullover/coat), the CNNs' much "
          "less. As numbers: Spearman's rank correlation over the 90 ordered pairs between the pair's success rate and "
          "(i) the clean model's symmetrised confusion between the two classes, (ii) minus the L2 distance between "
          "the two classes' mean test images.", "",
          "| model | beta | mean success % | median success % | mean undetected % | Spearman vs confusion (p) | "
          "Spearman vs mean-image similarity (p) | attack wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {model_name(r['model'])} | {info[r['model']][0]} | {r['mean_success_pct']:.1f} | "
                  f"{r['median_success_pct']:.1f} | {r['mean_undetected_pct']:.1f} | "
                  f"{rho(r['spearman_success_vs_confusion'], r['p_confusion'])} | "
                  f"{rho(r['spearman_success_vs_mean_image_similarity'], r['p_mean_image'])} | "
                  f"{dur(r['attack_wall_time_s'])} |")
    caps = next((r for r in rows if r["model"] == "capsnet"), None)
    cnns = [r for r in rows if r["model"] != "capsnet"]
    if caps and cnns and all(np.isfinite(r["spearman_success_vs_confusion"]) for r in rows):
        key = "spearman_success_vs_confusion"
        more = all(caps[key] > r[key] for r in cnns)
        md += ["", f"**The paper's claim, measured here:** CapsNet's rank correlation with the confusion similarity "
               f"is {caps[key]:+.3f}, the CNNs' " + ", ".join(f"{r[key]:+.3f}" for r in cnns) + ": "
               + ("CapsNet's pairwise success follows class similarity more than the CNNs', as the paper says."
                  if more else "at this scale CapsNet's pairwise success does *not* follow class similarity more "
                  "than the CNNs' (the paper's claim is not reproduced).")]
    md += ["", "Pairwise success rates (%) per model: the CSV's `pairs_table`; the heat maps above (rows: source, "
           "columns: target).", "", generation_line(time.perf_counter() - t0)]
    write_text_atomic(Path(report_dir) / f"{stem}.csv", df.to_csv(index=False))
    write_text_atomic(Path(report_dir) / f"{stem}.md", "\n".join(md) + "\n")
    print(f"[fig4 {dataset}/{scale}] report: {Path(report_dir) / f'{stem}.md'}", flush=True)
    if wandb_log:
        log_report(f"fig4-{dataset}", scale, df.drop(columns=["pairs_table"]), {"fig4": png}, {},
                   results_dir(out_dir, scale))
    return df


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce fig4``: :func:`class_pairs` for each dataset (default Fashion-MNIST)."""
    for d in ctx.datasets_or(("fashion_mnist",)):
        class_pairs(d, ctx.scale, ctx.runs_root, ctx.out_dir, ctx.report_dir, ctx.models, ctx.seed, settings=sc,
                    data_root=ctx.data_root, train=ctx.train, wandb_log=ctx.wandb)
