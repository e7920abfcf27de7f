"""Diagnosing adversarial examples (Qin et al., Section 6): Fig. 4 (class-pair success of targeted
R-PGD) and the galleries of Fig. 5 / 11 (successful, undetected R-PGD examples towards class 0) and
Fig. 10 (clean, its reconstruction, adversarial, its reconstruction).

Both attack with R-PGD at the beta of the model's worst case in Table 3 at the same scale (read from
the Table 3 result files; 0.5, the class default, when Table 3 has not been run), and say which.

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

from . import experiments as ex
from .config import recipe_env_prefix
from .evaluation import predict_batched
from .io import write_json_atomic
from .reports import DATASET_NAMES, generation_line, write_atomic

CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(i) for i in range(10)),
}
#: scale -> (images per source class, R-PGD iterations (None: Appendix C's), gallery candidates)
DIAG_SCALES = {"smoke": (2, 3, 20), "quick": (20, 100, 100), "paper": (100, None, 1000)}


def worst_beta(run, dataset: str, model: str, scale: str, out_dir="results", targeted: bool = True) -> tuple[float, str]:
    """(beta, where it came from): the worst-case beta of Table 3's finished result files at ``scale``."""
    from .worst_case import Search, search_beta

    sc = ex.scale_settings(scale, "table3")
    s = search_beta(run, Search(dataset, model, "r_pgd", targeted), sc, out_dir=ex.results_dir(out_dir, scale),
                    device="cpu", attack_seed=0, only_report=True, progress=False)
    w = s.worst
    if w is None:
        return 0.5, "0.5 (no Table 3 result at this scale: the attack's default)"
    return float(w.beta), f"{w.beta:g} (Table 3's worst targeted beta at scale {scale}, {len(s.done())} betas)"


def _attack(model, x, y, t, *, eps, steps, beta, threshold, seed):
    from .attacks import build_attack

    atk = build_attack("r_pgd", model, eps=eps, steps=steps, step_size=0.01, beta=beta, targeted=True,
                       threshold=threshold, generator=torch.Generator().manual_seed(seed))
    with torch.enable_grad():
        res = atk(x, y, t)
    pred, dist = predict_batched(model, res.x_adv)
    return res.x_adv, pred, dist


def _test_tensors(run):
    from .evaluation import _load_examples

    return _load_examples(run.test_set, np.arange(len(run.test_set)))[:2]


def _prepare(what, dataset, model_name, scale, seed, runs_root, out_dir, train, data_root):
    """(run, model in eval mode on the CPU, worst beta, where it came from, test x, test y)."""
    from .worst_case import ensure_run

    run = ensure_run(dataset, model_name, scale, seed=seed, runs_root=runs_root, train=train, data_root=data_root)
    if isinstance(run, str):
        raise ex.RunNotFoundError(f"{what}: no trained {model_name} on {dataset}; train it with:\n    {run}")
    beta, beta_src = worst_beta(run, dataset, model_name, scale, out_dir)
    x, y = _test_tensors(run)
    return run, run.model.eval().cpu(), beta, beta_src, x, y


def _rho(rho: float, p: float) -> str:
    """A rank correlation for the report; undefined (NaN) when the success rates do not vary."""
    if not np.isfinite(rho):
        return "undefined (the pair success rates do not vary)"
    return f"{rho:+.3f} ({p:.2g})"


def class_pairs(dataset: str = "fashion_mnist", scale: str = "quick", runs_root="runs", out_dir="results",
                report_dir="reports", models=ex.MODELS, seed: int = 0, *, eps: float = 25 / 255,
                data_root: str | None = None, train: bool = False, wandb_log: bool = True) -> pd.DataFrame:
    """Fig. 4 -> ``reports/fig4_class_pairs_<dataset>_<scale>.{md,csv}`` and ``figures/fig4_...png``."""
    from scipy.stats import spearmanr

    from .attacks import ITERATIONS
    from .plots import plot_class_pairs

    t0 = time.perf_counter()
    per_class, steps, _ = DIAG_SCALES[scale]
    steps = ITERATIONS[dataset] if steps is None else min(steps, ITERATIONS[dataset])
    names = CLASS_NAMES.get(dataset, tuple(str(i) for i in range(10)))
    mats, rows, info = {}, [], {}
    for m in models:
        run, model, beta, beta_src, x, y = _prepare("class_pairs", dataset, m, scale, seed, runs_root, out_dir,
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
        path = ex.results_dir(out_dir, scale) / dataset / m / f"class_pairs-eps{eps:.4g}-n{per_class}-s{seed}.json"
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
            _, p, d = _attack(model, xs, ys, tt, eps=eps, steps=steps, beta=beta, threshold=run.threshold,
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
        mats[ex._model_name(m)] = S
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
    plot_class_pairs(mats, names, png, f"{DATASET_NAMES.get(dataset, dataset)}: targeted R-PGD success per class pair "
                     f"(eps {eps * 255:.0f}/255, {steps} iterations, {per_class} images per source class)")
    df = pd.DataFrame(rows)
    md = [f"# Fig. 4: class-pair success of targeted R-PGD ({DATASET_NAMES.get(dataset, dataset)}, scale `{scale}`)", "",
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
        md.append(f"| {ex._model_name(r['model'])} | {info[r['model']][0]} | {r['mean_success_pct']:.1f} | "
                  f"{r['median_success_pct']:.1f} | {r['mean_undetected_pct']:.1f} | "
                  f"{_rho(r['spearman_success_vs_confusion'], r['p_confusion'])} | "
                  f"{_rho(r['spearman_success_vs_mean_image_similarity'], r['p_mean_image'])} | "
                  f"{ex._dur(r['attack_wall_time_s'])} |")
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
    write_atomic(Path(report_dir) / f"{stem}.csv", df.to_csv(index=False))
    write_atomic(Path(report_dir) / f"{stem}.md", "\n".join(md) + "\n")
    print(f"[fig4 {dataset}/{scale}] report: {Path(report_dir) / f'{stem}.md'}", flush=True)
    if wandb_log:
        from .worst_case import _wandb_log

        _wandb_log(f"fig4-{dataset}", scale, df.drop(columns=["pairs_table"]), {"fig4": png}, {},
                   ex.results_dir(out_dir, scale))
    return df


def galleries(dataset: str = "mnist", scale: str = "quick", runs_root="runs", out_dir="results",
              report_dir="reports", models=ex.MODELS, seed: int = 0, *, target: int = 0, show: int = 10,
              data_root: str | None = None, train: bool = False, wandb_log: bool = True) -> pd.DataFrame:
    """Fig. 5 / 11 and Fig. 10 -> ``reports/figures/fig5_gallery_<dataset>_<scale>.png``,
    ``fig10_reconstructions_<dataset>_<scale>.png`` and ``reports/galleries_<dataset>_<scale>.md``."""
    from .attacks import EPSILON, ITERATIONS
    from .plots import plot_gallery, plot_reconstruction_pairs

    t0 = time.perf_counter()
    _, steps, n_cand = DIAG_SCALES[scale]
    steps = ITERATIONS[dataset] if steps is None else min(steps, ITERATIONS[dataset])
    eps = EPSILON[dataset]
    names = CLASS_NAMES.get(dataset, tuple(str(i) for i in range(10)))
    picked, pairs, rows = {}, {}, []
    for m in models:
        run, model, beta, beta_src, x, y = _prepare("galleries", dataset, m, scale, seed, runs_root, out_dir,
                                                    train, data_root)
        rng = np.random.default_rng(seed)
        pool = np.flatnonzero(y.numpy() != target)
        idx = np.sort(rng.permutation(pool)[:n_cand])
        xs, ys = x[idx], y[idx]
        tt = torch.full_like(ys, target)
        xa, p, d = _attack(model, xs, ys, tt, eps=eps, steps=steps, beta=beta, threshold=run.threshold, seed=seed)
        good = np.flatnonzero(((p == tt) & (d <= run.threshold)).numpy())
        sel = np.sort(rng.permutation(good)[:show]) if len(good) else good
        with torch.no_grad():  # reconstructions from the predicted class: clean, then adversarial
            if len(sel):
                out = model(xs[sel])
                rc = model.reconstruct(out.poses, out.logits.argmax(1))
                ra = model.reconstruct(model(xa[sel]).poses, p[sel])
            else:
                rc = ra = xs[sel]
        name = ex._model_name(m)
        picked[name] = [(xa[i, 0].numpy() if xa.shape[1] == 1 else xa[i].permute(1, 2, 0).numpy(),
                         f"{names[int(ys[i])]}->{names[target]}") for i in sel]
        shape = xs.shape[1:]
        pairs[name] = [tuple(v[j].reshape(shape).permute(1, 2, 0).squeeze(-1).numpy()
                             for v in (xs[sel], rc, xa[sel], ra)) for j in range(min(3, len(sel)))]
        rows.append({"dataset": dataset, "scale": scale, "model": m, "beta": beta, "beta_source": beta_src, "eps": eps,
                     "steps": steps, "candidates": len(idx), "success_and_undetected": int(len(good)),
                     "success_and_undetected_pct": round(100 * len(good) / len(idx), 1), "shown": int(len(sel)),
                     "indices_shown": [int(idx[i]) for i in sel], "model_hash": run.model_hash})
        print(f"[galleries {dataset}/{scale}] {m}: {len(good)}/{len(idx)} successful and undetected towards "
              f"{names[target]} (beta {beta:g})", flush=True)
    fig_dir = Path(report_dir) / "figures"
    dn = DATASET_NAMES.get(dataset, dataset)
    f5 = plot_gallery(picked, fig_dir / f"fig5_gallery_{dataset}_{scale}.png",
                      f"{dn}: successful and undetected targeted R-PGD towards '{names[target]}' (random sample)")
    f10 = plot_reconstruction_pairs(pairs, fig_dir / f"fig10_reconstructions_{dataset}_{scale}.png",
                                    f"{dn}: clean, its reconstruction, adversarial (target '{names[target]}'), "
                                    "its reconstruction")
    df = pd.DataFrame(rows)
    md = [f"# Fig. 5 / 11 and Fig. 10: galleries ({dn}, scale `{scale}`)", "",
          f"Generated by `{recipe_env_prefix()}lit-caps reproduce galleries --data {dataset} --scale {scale}`.", "",
          f"![Fig. 5](figures/{f5.name})", "", f"![Fig. 10](figures/{f10.name})", "",
          f"{n_cand} random test images (seeded, true class != {names[target]}) attacked with targeted R-PGD towards "
          f"'{names[target]}' (eps {eps:g}, step 0.01, {steps} iterations; paper, Appendix C: {ITERATIONS[dataset]}); "
          f"up to {show} of the successful and undetected ones are drawn at random (the paper's Fig. 5 / 11 protocol "
          "on SVHN; SVHN is not available here). Fig. 10: the first three of them with their reconstructions from "
          "the predicted class. How many there are says how often the attack fools the detector.", "",
          "| model | beta | successful and undetected | shown |", "|---|---|---|---|"]
    for r in rows:
        md.append(f"| {ex._model_name(r['model'])} | {r['beta_source']} | {r['success_and_undetected']}/"
                  f"{r['candidates']} ({r['success_and_undetected_pct']:.1f}%) | {r['shown']} |")
    md += ["", generation_line(time.perf_counter() - t0)]
    write_atomic(Path(report_dir) / f"galleries_{dataset}_{scale}.md", "\n".join(md) + "\n")
    write_atomic(Path(report_dir) / f"galleries_{dataset}_{scale}.csv", df.to_csv(index=False))
    if wandb_log:
        from .worst_case import _wandb_log

        _wandb_log(f"galleries-{dataset}", scale, df.astype(str), {"fig5": f5, "fig10": f10}, {},
                   ex.results_dir(out_dir, scale))
    return df
