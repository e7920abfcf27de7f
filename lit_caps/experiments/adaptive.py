"""Beyond the paper: does CapsNet's advantage survive the strongest attacker we can build?

For every model and targeting, the same seeded N test images are attacked by

- the paper's R-PGD at Table 3's worst beta of the same scale (its last iterate, and its best);
- Selective PGD and Orthogonal PGD (Bryniarski et al., ICLR 2022) and an APGD attack on margin +
  lambda * relu(d - theta) (Croce & Hein 2020), which know the detector and its threshold
  (:mod:`lit_caps.attacks.selective`, ``.orthogonal``, ``.apgd``);

and the ensemble takes the per-example worst case over all of them (AutoAttack's protocol;
:func:`lit_caps.evaluation.ensemble`). Rates are at the detector's threshold (5% FPR of the clean
validation distances), with Wilson 95% intervals, over all N images and over the correctly
classified ones only.

    make reproduce-adaptive SCALE=quick DATASETS='mnist fashion_mnist'
        -> reports/adaptive_<dataset>_<scale>.{md,csv}, reports/figures/adaptive_<dataset>_<targeting>_<scale>.png

Every cell is an ordinary resumable result file (``results/<scale>/...``; the classifier loss and
the attack's settings are part of its name and identity).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from ..attacks import ADAPTIVE
from ..evaluation import compile_requested, ensemble, evaluate_attack
from ..io import write_text_atomic
from ..names import dataset_name, model_name
from ..detection import paired_test
from ..reporting.markdown import dur, generation_line, write_report
from ..reporting.plots import plot_rates_vs_iterations, plot_undetected_vs_fpr
from ..runs import data_unavailable, ensure_run
from .cells import MODELS, iterations, report_models, resolve_device, results_dir, scale_settings

#: the ensemble's members, in report order: (label, attack, which flag of its result)
MEMBERS = (("R-PGD (last iterate)", "r_pgd", "undetected"), ("R-PGD (best iterate)", "r_pgd", "best_undetected"),
           ("Selective PGD", "selective_pgd", "best_undetected"),
           ("Orthogonal PGD", "orthogonal_pgd", "best_undetected"), ("APGD joint", "apgd_joint", "best_undetected"))


def table3_name(scale: str) -> str:
    """The stem of Table 3's report at ``scale`` (``table3`` at the paper scale)."""
    return "table3" if scale == "paper" else f"table3_{scale}"


def worst_beta(report_dir, scale: str, dataset: str, model: str, targeted: bool) -> float | None:
    """Table 3's worst beta for the cell at ``scale`` (its report's CSV), None if not there."""
    path = Path(report_dir) / f"{table3_name(scale)}.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    row = df[(df.dataset == dataset) & (df.model == model) & (df.targeted == targeted) & (df.row_kind == "worst")
             & (df.status == "complete")]
    return None if row.empty else float(row.beta.iloc[0])


def member_steps(attack: str, dataset: str, sc: dict) -> int:
    """Iterations of a member: R-PGD ``steps`` (None: Appendix C's), Selective / Orthogonal PGD
    ``detector_aware_steps`` (absent: ``steps``), APGD ``apgd_steps``."""
    if attack == "apgd_joint":
        return int(sc["apgd_steps"])
    return iterations(dataset, sc.get("steps") if attack == "r_pgd" else sc.get("detector_aware_steps", sc.get("steps")))


def apgd_budgets(sc: dict) -> list[int]:
    """The extra APGD budgets of the rate against iterations (``apgd_curve_steps`` but the scale's
    own); their results go to ``<results>/variants/steps<k>/`` (a result's file name does not encode
    its iterations, so they never supersede the scale's run)."""
    return sorted({int(k) for k in sc.get("apgd_curve_steps") or ()} - {int(sc["apgd_steps"])})


def attack_settings(attack: str, dataset: str, sc: dict, apgd_steps: int | None = None) -> dict:
    """The settings of one member at a scale (the classifier loss recorded in the result's name);
    ``apgd_steps`` overrides the scale's for APGD (its rate against its iteration budget)."""
    if attack == "apgd_joint":
        return {"steps": int(apgd_steps or sc["apgd_steps"]), "lam": float(sc["lam"]), "loss": sc["apgd_loss"]}
    out = {"steps": member_steps(attack, dataset, sc), "step_size": float(sc["step_size"])}
    if attack != "r_pgd":
        out["loss"] = sc["loss"]
    return out


def cell(run, dataset, attack, targeted, beta, sc, *, out_dir, device, only_report, progress, attack_seed,
         apgd_steps: int | None = None):
    """One member's result file (computed unless ``only_report``) at the ``adaptive`` settings ``sc``."""
    with torch.inference_mode(False):
        return evaluate_attack(
            run.model, run.test_set, attack, dataset_name=dataset, model_name=run.name, targeted=targeted, eps=None,
            beta=beta, seed=attack_seed, n=sc["n"], threshold=run.threshold, val_distances=run.val_distances,
            settings=attack_settings(attack, dataset, sc, apgd_steps), out_dir=out_dir, chunk_size=sc["chunk_size"],
            device=device, progress=progress, fpr=run.fpr, checkpoint=run.checkpoint, only_cached=only_report,
            compile=compile_requested(None, default=sc.get("compile", False)))


def _rows(dataset, model, targeted, results: dict, beta, run) -> tuple[list[dict], dict | None]:
    """Report rows of one (model, targeting): each member, then the ensemble (all images and the correct ones)."""
    rows, members = [], {}
    base = {"dataset": dataset, "model": model, "targeted": targeted}
    for label, attack, flag in MEMBERS:
        res = results.get(attack)
        row = {**base, "attack": label, "beta": beta if attack == "r_pgd" else None}
        if not res or res.get("status") != "complete":
            rows.append({**row, "status": "pending"})
            continue
        ex = dict(res["examples"])
        ex["best_undetected"] = ex[flag]
        members[label] = ex
        row["settings"] = ";".join(f"{k}={v}" for k, v in sorted(res["settings"]["attack_settings"].items())
                                   if k not in ("eps",))
        row.update(status="complete", wall_time_s=res["run"]["wall_time_s"], result=res["path"])
        rows.append(row)
    if len(members) != len(MEMBERS):
        return rows, None
    # APGD's other budgets are attacks run on the same images too: the per-example worst case takes
    # them in (a row each, pending until run)
    for key in sorted((k for k in results if k.startswith("apgd_joint@")), key=lambda k: int(k.split("@")[1])):
        res, label = results[key], f"APGD joint ({key.split('@')[1]} iterations)"
        row = {**base, "attack": label, "beta": None}
        if not res or res.get("status") != "complete":
            rows.append({**row, "status": "pending"})
            continue
        members[label] = dict(res["examples"])
        row.update(status="complete", wall_time_s=res["run"]["wall_time_s"], result=res["path"],
                   settings=";".join(f"{k}={v}" for k, v in sorted(res["settings"]["attack_settings"].items())
                                     if k not in ("eps",)))
        rows.append(row)
    out = {}
    for correct_only in (False, True):
        out[correct_only] = ensemble(members, val_distances=run.val_distances, correct_only=correct_only)
    for row in rows:
        if row["status"] != "complete":
            continue
        e, c = out[False]["per_member"][row["attack"]], out[True]["per_member"][row["attack"]]
        _fill(row, e, c, out[False]["n"], out[True]["n"])
    ens = {**base, "attack": "Ensemble (per-example worst case)", "status": "complete"}
    _fill(ens, out[False], out[True], out[False]["n"], out[True]["n"])
    rows.append(ens)
    return rows, out[False]


#: the iterations at which the rate-against-iterations table reads each member's curve
CURVE_AT = (10, 25, 50, 100, 200, 300, 500, 1000)


def iteration_rows(dataset, model, targeted, results: dict) -> list[dict]:
    """The best-iterate undetected rate against the iterations, over all N images.

    R-PGD, Selective and Orthogonal PGD: from one run, via each example's ``first_undetected``
    (the rate after k iterations of a fixed-step attack is the share first counted by k; a result
    from before that field has no curve). APGD: its step schedule depends on its budget, so one run
    per budget (``apgd_curve_steps``), each read at its end."""
    base = {"dataset": dataset, "model": model, "targeted": targeted}
    rows = []
    for label, attack, flag in MEMBERS:
        res = results.get(attack)
        if flag != "best_undetected" or attack == "apgd_joint" or not res or res.get("status") != "complete":
            continue
        first = res["examples"].get("first_undetected")
        if first is None:
            continue
        f = torch.tensor(first)
        steps = int(res["settings"]["attack_settings"]["steps"])
        for k in sorted({k for k in CURVE_AT if k < steps} | {steps}):
            rows.append({**base, "attack": label, "budget": steps, "iterations": k, "how": "one run",
                         "undetected_pct": round(100 * float(((f >= 1) & (f <= k)).float().mean()), 1)})
    apgd = sorted((int(r["settings"]["attack_settings"]["steps"]), r) for key, r in results.items()
                  if key.split("@")[0] == "apgd_joint" and r and r.get("status") == "complete")
    for steps, r in (apgd if len(apgd) > 1 else ()):  # a curve needs two budgets
        rows.append({**base, "attack": "APGD joint", "budget": steps, "iterations": steps, "how": "one run per budget",
                     "undetected_pct": round(100 * r["summary"]["best_undetected_rate"], 1)})
    return rows


def _iterations_md(rows: list[dict]) -> list[str]:
    """The rate-against-iterations table: a row per (model, targeting, attack), a column per k."""
    if not rows:
        return []
    df = pd.DataFrame(rows)
    ks = sorted(df.iterations.unique())
    md = ["## Undetected rate against the iterations", "",
          "Best-iterate undetected rate (%, all N images, 5% FPR threshold) after k iterations. R-PGD, Selective "
          "and Orthogonal PGD: one run read at k (each example's first undetected iteration); APGD joint: one run "
          "per budget k (its step schedule depends on the budget). 'second half': the points the member gained "
          "over the second half of its iterations (of its largest budget for APGD).", "",
          "| model | targeted | attack | " + " | ".join(str(k) for k in ks) + " | second half |",
          "|---|---|---|" + "---|" * (len(ks) + 1)]
    for (m, t, a), g in df.groupby(["model", "targeted", "attack"], sort=False):
        at = dict(zip(g.iterations, g.undetected_pct))
        top = int(g.budget.max())
        half = g[g.iterations <= top // 2]
        gain = f"{at[top] - half.undetected_pct.iloc[-1]:+.1f}" if len(half) else ""
        md.append(f"| {model_name(m)} | {'yes' if t else 'no'} | {a} | "
                  + " | ".join(f"{at[k]:.1f}" if k in at else "" for k in ks) + f" | {gain} |")
    return md + [""]


def _fill(row: dict, all_: dict, correct: dict, n: int, n_correct: int) -> None:
    for k, v in (("success", all_["success"]), ("undetected", all_["best_undetected"]),
                 ("undetected_correct", correct["best_undetected"])):
        row[f"{k}_pct"] = round(100 * v["rate"], 1)
        row[f"{k}_ci_lo"], row[f"{k}_ci_hi"] = round(100 * v["ci"][0], 1), round(100 * v["ci"][1], 1)
    row["n"], row["n_correct"] = n, n_correct


def adaptive(datasets=("mnist", "fashion_mnist"), scale: str = "quick", *, runs_root="runs", out_dir="results",
             report_dir="reports", models=MODELS, seed: int = 0, attack_seed: int = 0, only_report: bool = False,
             train: bool = False, device: str | None = None, data_root: str | None = None, progress: bool = False,
             settings: dict | None = None, targeted=(True, False)) -> dict:
    """The adaptive report of each dataset (see the module docstring); {dataset: report frame}."""
    sc = dict(settings) if settings is not None else scale_settings(scale, "adaptive")
    device = resolve_device(device)
    res_dir = results_dir(out_dir, scale)
    out = {}
    for ds in datasets:
        t0 = time.perf_counter()
        why = data_unavailable(ds, data_root)
        if why is not None:
            print(f"[adaptive {scale}] {ds}: not available: {why.splitlines()[0]}", flush=True)
            continue
        rows, curve_rows, curves, ensembles = [], [], {True: {}, False: {}}, {}
        for m in report_models(models):
            # a model or targeting not asked for is read from the results (never computed) but stays in the report
            run = ensure_run(ds, m, scale, seed=seed, runs_root=runs_root,
                             train=train and not only_report and m in models, data_root=data_root)
            for t in (True, False):
                cached = only_report or m not in models or t not in targeted
                if isinstance(run, str):
                    rows.append({"dataset": ds, "model": m, "targeted": t, "attack": "-", "status": f"no run: {run}"})
                    continue
                beta = worst_beta(report_dir, scale, ds, m, t)
                beta = float(sc.get("beta_default", 0.5)) if beta is None else beta
                results = {}
                for attack in ("r_pgd",) + ADAPTIVE:
                    tag = f"[adaptive {ds}/{scale}] {m} {'targeted' if t else 'untargeted'} {attack}"
                    tc = time.perf_counter()
                    results[attack] = res = cell(run, ds, attack, t, beta if attack == "r_pgd" else None, sc,
                                                  out_dir=res_dir, device=device, only_report=cached,
                                                  progress=progress, attack_seed=attack_seed)
                    if not cached and res.get("status") == "complete":
                        s_ = res["summary"]
                        print(f"{tag}: success {100 * s_['success_rate']:.1f}%, best-iterate undetected "
                              f"{100 * s_['best_undetected_rate']:.1f}% (n={s_['n']}, {dur(time.perf_counter() - tc)})",
                              flush=True)
                for k in apgd_budgets(sc):  # APGD's schedule depends on its budget: one run each
                    results[f"apgd_joint@{k}"] = cell(run, ds, "apgd_joint", t, None, sc,
                                                      out_dir=res_dir / "variants" / f"steps{k}", device=device,
                                                      only_report=cached, progress=progress,
                                                      attack_seed=attack_seed, apgd_steps=k)
                r, ens = _rows(ds, m, t, results, beta, run)
                rows += r
                curve_rows += iteration_rows(ds, m, t, results)
                if ens is not None:
                    ensembles[(m, t)] = ens["examples"]
                    curves[t][model_name(m)] = (ens["undetected_vs_fpr"]["fpr"], ens["undetected_vs_fpr"]["undetected_rate"])
                _report(ds, scale, sc, rows, curves, report_dir, time.perf_counter() - t0, curve_rows, ensembles)
        out[ds] = _report(ds, scale, sc, rows, curves, report_dir, time.perf_counter() - t0, curve_rows, ensembles)
        print(f"[adaptive {scale}] report: {Path(report_dir) / f'adaptive_{ds}_{scale}.md'}", flush=True)
    return out


def _ci(r, k) -> str:
    return f"{r[f'{k}_pct']:.1f} [{r[f'{k}_ci_lo']:.1f}, {r[f'{k}_ci_hi']:.1f}]"


def _answer(rows, targeting: bool, ensembles: dict | None = None) -> str:
    """CapsNet's ensemble undetected rate against the lowest other model's; with the ensembles'
    per-example outcomes (``ensembles[(model, targeted)]``) also the paired test on the same images."""
    ens = {r["model"]: r["undetected_pct"] for r in rows
           if r["attack"].startswith("Ensemble") and r["targeted"] == targeting and r.get("status") == "complete"}
    kind = "targeted" if targeting else "untargeted"
    if len(ens) < 2 or "capsnet" not in ens:
        return f"{kind}: not answered yet (the ensemble is pending for some model)."
    order = sorted(ens, key=lambda m: ens[m])
    others = {m: v for m, v in ens.items() if m != "capsnet"}
    best_other = min(others, key=lambda m: others[m])
    gap = others[best_other] - ens["capsnet"]
    verdict = (f"yes: CapsNet's undetected rate is the lowest, {gap:.1f} points below {model_name(best_other)}'s"
               if gap > 0 else f"no: {model_name(best_other)}'s is {-gap:.1f} points below CapsNet's"
               if gap < 0 else "tied with " + model_name(best_other))
    ex = ensembles or {}
    test = paired_test(ex.get(("capsnet", targeting)), ex.get((best_other, targeting)), "best_undetected",
                       names=(model_name("capsnet"), model_name(best_other)))
    return (f"{kind}: {verdict} (ensemble, best iterate, at 5% FPR; order from lowest: "
            + ", ".join(f"{model_name(m)} {ens[m]:.1f}%" for m in order) + f"){test}.")


def _shortfalls(rows) -> list[str]:
    """Each (model, targeting, new attack) whose undetected rate is below R-PGD's best iterate's."""
    out = []
    done = [r for r in rows if r.get("status") == "complete" and "undetected_pct" in r]
    for r in done:
        if (r["attack"] in ("R-PGD (last iterate)", "R-PGD (best iterate)") or r["attack"].startswith("Ensemble")
                or r["attack"].startswith("APGD joint (")):  # APGD's other budgets: the iterations table
            continue
        ref = next((q for q in done if q["model"] == r["model"] and q["targeted"] == r["targeted"]
                    and q["attack"] == "R-PGD (best iterate)"), None)
        if ref is not None and r["undetected_pct"] < ref["undetected_pct"]:
            out.append(f"{r['attack']} on {model_name(r['model'])} {'targeted' if r['targeted'] else 'untargeted'} "
                       f"{r['undetected_pct']:.1f} vs {ref['undetected_pct']:.1f}")
    return out


def _report(ds, scale, sc, rows, curves, report_dir, elapsed, curve_rows=(), ensembles=None) -> pd.DataFrame:
    stem = f"adaptive_{ds}_{scale}"
    fig_dir = Path(report_dir) / "figures"
    figs = {}
    if curve_rows:
        panels = {}
        for r in curve_rows:
            key = f"{model_name(r['model'])}, {'targeted' if r['targeted'] else 'untargeted'}"
            its, rates = panels.setdefault(key, {}).setdefault(r["attack"], ([], []))
            its.append(r["iterations"])
            rates.append(r["undetected_pct"] / 100)
        figs["iterations"] = plot_rates_vs_iterations(
            panels, fig_dir / f"adaptive_{ds}_iterations_{scale}.png",
            f"{dataset_name(ds)}: best-iterate undetected rate against the iterations ({scale})")
        write_text_atomic(Path(report_dir) / f"{stem}_iterations.csv", pd.DataFrame(list(curve_rows)).to_csv(index=False))
    for t, c in curves.items():
        if c:
            kind = "targeted" if t else "untargeted"
            p = fig_dir / f"adaptive_{ds}_{kind}_{scale}.png"
            plot_undetected_vs_fpr(c, p, f"{dataset_name(ds)}: ensemble of adaptive attacks, {kind} ({scale})")
            figs[kind] = p
    md = [f"# Adaptive attacks against the reconstruction detector: {dataset_name(ds)} ({scale} scale)", "",
          f"Generated by `lit-caps reproduce adaptive --scale {scale}` (= `make reproduce-adaptive SCALE={scale}`). "
          f"The committed default models; N = {sc['n']} seeded test images (attack seed 0; targets drawn from it), "
          f"the paper's eps; R-PGD: {member_steps('r_pgd', ds, sc)} iterations, Selective and Orthogonal PGD: "
          f"{member_steps('selective_pgd', ds, sc)}, of step {sc['step_size']:g} (classifier loss of the new "
          f"attacks: `{sc['loss']}`); APGD joint: "
          f"{sc['apgd_steps']} iterations, loss `{sc['apgd_loss']}`, lambda {sc['lam']:g}"
          + (f" (and one run at each of {', '.join(str(k) for k in apgd_budgets(sc))} iterations, members of the "
             "ensemble too)" if apgd_budgets(sc) else "") + ". R-PGD runs at Table 3's worst "
          f"beta of the same scale ({table3_name(scale)}.md) where that cell is complete, else at beta "
          f"{float(sc.get('beta_default', 0.5)):g} (the beta column). Undetected: successful with reconstruction distance "
          "<= the detector's threshold (5% FPR on clean validation images), the best iterate per example (the last "
          "iterate for the first row); Wilson 95% intervals. The ensemble counts an image when any member gets it "
          "(AutoAttack's per-example worst case). 'correct only': over the images the model classifies correctly "
          "when clean.", ""]
    md += ["**Does CapsNet keep the lowest undetected rate?** " + _answer(rows, True, ensembles) + " " + _answer(rows, False, ensembles), ""]
    short = _shortfalls(rows)
    if short:
        md += ["**Where a new attack stays below R-PGD's best iterate** (same images; undetected %, best iterate): "
               + "; ".join(short) + ". See reports/README.md (Findings) for what was measured about it.", ""]
    md += ["| model | targeted | attack | success % (final iterate) [95% CI] | undetected % (best iterate) [95% CI] | "
           "undetected %, correct only | "
           "beta | wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {model_name(r['model'])} | {'yes' if r['targeted'] else 'no'} | {r['attack']} |"
        if r.get("status") != "complete" or "success_pct" not in r:
            md.append(head + f" {r.get('status', 'pending')} | | | | |")
            continue
        wall = dur(r["wall_time_s"]) if r.get("wall_time_s") is not None else ""
        beta = f"{r['beta']:g}" if r.get("beta") is not None else ""
        md.append(head + f" {_ci(r, 'success')} | {_ci(r, 'undetected')} | {_ci(r, 'undetected_correct')} "
                  f"(n={r['n_correct']}) | {beta} | {wall} |")
    fpr_figs = {k: p for k, p in figs.items() if k != "iterations"}
    if fpr_figs:
        md += ["", "Undetected rate of the ensemble against the FPR (a lower bound: the members chose their best "
               "iterates at the 5% threshold; the curve uses each member's final iterate):", ""]
        md += [f"![{k}](figures/{p.name})" for k, p in fpr_figs.items()]
    if curve_rows:
        md += [""] + _iterations_md(list(curve_rows)) + [f"![iterations](figures/{figs['iterations'].name})"]
    md += ["", generation_line(elapsed)]
    return write_report(report_dir, stem, rows, md)


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce adaptive``: :func:`adaptive` (default datasets MNIST and Fashion-MNIST)."""
    adaptive(ctx.datasets_or(("mnist", "fashion_mnist")), ctx.scale, runs_root=ctx.runs_root, out_dir=ctx.out_dir,
             report_dir=ctx.report_dir, models=ctx.models, seed=ctx.seed, attack_seed=ctx.attack_seed,
             only_report=ctx.only_report, train=ctx.train, device=ctx.device, data_root=ctx.data_root,
             progress=ctx.progress, settings=sc, targeted=ctx.targeted)

