"""The attack fast path's equality check: is bf16 autocast of the attack's iterations the same
measurement as fp32?

For each model, attack (PGD; R-PGD at beta 0.5) and targeting, the same seeded N test images are
attacked twice through :func:`lit_caps.evaluation.evaluate_attack`, once with ``precision="fp32"``
and once with ``"bf16"`` (the attack's steps and best-iterate bookkeeping under bf16 autocast; every
reported number measured in fp32). The fast path passes a cell when its success, undetected and
best-iterate undetected rates fall inside the 95% Wilson intervals of the fp32 attack on the same
images. Defaults: the committed MNIST models, N = 500, 200 iterations, the dataset's eps (Appendix C:
MNIST 0.3, Fashion-MNIST 0.1), step 0.01.

    lit-caps fastpath-check [--data mnist] [--models capsnet] [--compile] [--only-report]
        ->  reports/fastpath_check[_compiled][_<dataset>].{md,csv} (no dataset suffix for MNIST)

Each (model, attack, targeting, precision) is one resumable result file under ``<--out>/fastpath``
(``results/fastpath`` by default; committed with ``lit-caps store save``), so the check can run as several processes (e.g. one per model)
and ``--only-report`` assembles the report from what they left.
"""
from __future__ import annotations

import time

from pathlib import Path

import pandas as pd
import torch

from . import store
from .evaluation import evaluate_attack
from .names import attack_name, dataset_name, model_name
from .reporting.markdown import dur, generation_line, write_report
from .runs import RunNotFoundError, find_run, load_trained

MODELS = ("capsnet", "cnn_cr", "cnn_r")
ATTACKS = (("pgd", None), ("r_pgd", 0.5))
RATES = ("success", "undetected", "best_undetected")


def _cell(run, dataset, attack, beta, targeted, precision, *, n, steps, out_dir, device, only_report,
          compile: bool = False) -> dict:
    with torch.inference_mode(False):
        return evaluate_attack(
            run.model, run.test_set, attack, dataset_name=dataset, model_name=run.name, targeted=targeted, eps=None,
            beta=beta, seed=0, n=n, threshold=run.threshold, val_distances=run.val_distances,
            settings={"steps": steps}, out_dir=out_dir, chunk_size=100, device=device, progress=False, fpr=run.fpr,
            checkpoint=run.checkpoint, only_cached=only_report, compile=compile, precision=precision)


def _row(model, attack, beta, targeted, fp, bf, run) -> dict:
    s = run.summary
    row = {"model": model, "attack": attack, "beta": beta, "targeted": targeted, "model_hash": run.model_hash,
           "run": Path(s["run_dir"]).name, "epochs": s.get("epochs"), "model_seed": s.get("seed"),
           "config_hash": s.get("config_hash"), "threshold": round(run.threshold, 4),
           "status": "complete" if fp.get("status") == bf.get("status") == "complete" else "pending"}
    if row["status"] != "complete":
        return row
    ok = True
    f, b = fp["summary"], bf["summary"]
    for k in RATES:
        lo, hi = f[f"{k}_ci"]
        inside = lo - 1e-12 <= b[f"{k}_rate"] <= hi + 1e-12
        row.update({f"fp32_{k}_pct": round(100 * f[f"{k}_rate"], 1), f"bf16_{k}_pct": round(100 * b[f"{k}_rate"], 1),
                    f"fp32_{k}_ci_lo": round(100 * lo, 1), f"fp32_{k}_ci_hi": round(100 * hi, 1),
                    f"{k}_inside": bool(inside)})
        ok = ok and inside
    row.update(passes=ok, n=fp["summary"]["n"], steps=fp["settings"]["attack_settings"].get("steps"),
               fp32_wall_s=round(fp["run"]["wall_time_s"], 1), bf16_wall_s=round(bf["run"]["wall_time_s"], 1),
               speedup=round(fp["run"]["wall_time_s"] / max(bf["run"]["wall_time_s"], 1e-9), 2),
               same_adv_pred_pct=round(100 * sum(a == b for a, b in zip(fp["examples"]["adv_pred"],
                                                                         bf["examples"]["adv_pred"])) / fp["summary"]["n"], 1),
               eps=fp["settings"]["eps"], device=fp["run"]["device"], fp32_result=fp["path"], bf16_result=bf["path"])
    return row


def fastpath_check(models=MODELS, dataset: str = "mnist", *, n: int = 500, steps: int = 200, runs_root="runs",
                   out_dir="results", report_dir="reports", only_report: bool = False,
                   device: str | None = None, data_root: str | None = None, compile: bool = False) -> pd.DataFrame:
    """Run (or, ``only_report``, read) the fp32 and bf16 cells of ``models`` (result files under
    ``<out_dir>/fastpath``; the committed store's come back first) and write
    ``<report_dir>/fastpath_check.{md,csv}`` over every model of :data:`MODELS` (the others pending).
    ``compile``: the bf16 side through ``torch.compile``d forwards (CapsNet only: the CNNs are never
    compiled), against the same eager fp32 cells; its results under ``<out_dir>/fastpath_compiled``
    (compilation is not part of a result's identity) and its report ``fastpath_check_compiled.*``."""
    t0 = time.perf_counter()
    store.restore_results(out_dir)  # a fresh clone: the committed results come back first
    eager, compiled = Path(out_dir) / "fastpath", Path(out_dir) / "fastpath_compiled"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for m in MODELS:
        try:
            run = load_trained(find_run(runs_root, dataset, m, 0), data_root)
        except RunNotFoundError:
            if m in models:
                raise
            rows += [{"model": m, "attack": a, "beta": b, "targeted": t, "status": "pending (no model)"}
                     for a, b in ATTACKS for t in (True, False)]
            continue
        comp = compile and bool(getattr(run.model, "compile_helps", False))  # the CNNs: never compiled
        dirs = {"fp32": eager, "bf16": compiled if comp else eager}
        for attack, beta in ATTACKS:
            for targeted in (True, False):
                res = {}
                for prec in ("fp32", "bf16"):
                    tc = time.perf_counter()
                    res[prec] = _cell(run, dataset, attack, beta, targeted, prec, n=n, steps=steps,
                                      out_dir=dirs[prec], device=device, only_report=only_report or m not in models,
                                      compile=comp and prec == "bf16")
                    if not only_report and m in models:
                        s = res[prec]["summary"]
                        print(f"[fastpath {dataset}] {m} {attack} {'targeted' if targeted else 'untargeted'} {prec}: "
                              f"success {100 * s['success_rate']:.1f}%, undetected {100 * s['undetected_rate']:.1f}% "
                              f"({dur(time.perf_counter() - tc)})", flush=True)
                rows.append(_row(m, attack, beta, targeted, res["fp32"], res["bf16"], run))
    return _report(rows, dataset, n, steps, report_dir, time.perf_counter() - t0, compile)


def report_stem(dataset: str = "mnist", compile: bool = False) -> str:
    """The check's report name: ``fastpath_check[_compiled][_<dataset>]`` (MNIST's has no suffix)."""
    return "fastpath_check" + ("_compiled" if compile else "") + ("" if dataset == "mnist" else f"_{dataset}")


def _report(rows, dataset, n, steps, report_dir, elapsed, compile=False) -> pd.DataFrame:
    done = [r for r in rows if r["status"] == "complete"]
    eps = sorted({r["eps"] for r in done})
    how = "compiled bf16 (`torch.compile`d forwards, CapsNet only; the CNNs run eagerly)" if compile else "bf16"
    md = [f"# The attack fast path ({how}) against eager fp32", "",
          f"Generated by `lit-caps fastpath-check{' --compile' if compile else ''}` (= `make fastpath-check"
          f"{' ARGS=--compile' if compile else ''}`{'' if dataset == 'mnist' else f' with `--data {dataset}`'}). "
          f"{dataset_name(dataset)}, the committed default models, N = {n} seeded test images (the same for both "
          f"precisions), {steps} iterations, eps {', '.join(f'{e:g}' for e in eps) or 'of Appendix C'}, "
          "step 0.01, attack seed 0, R-PGD at beta 0.5. `fp32`: the attack as it runs by default; `bf16`: its "
          "iterations (steps, best-iterate bookkeeping) under `torch.autocast(bfloat16)`; every number below is "
          "measured in fp32 on the final and the best iterate. A cell **passes** when the bf16 success, undetected "
          "and best-iterate undetected rates all fall inside the fp32 attack's 95% Wilson interval. "
          f"{len(done)}/{len(rows)} cells finished.", "",
          "| model | attack | targeted | success % fp32 [95% CI] | bf16 | undetected % fp32 [95% CI] | bf16 | "
          "best-iterate undetected % fp32 [95% CI] | bf16 | same final prediction % | passes | wall time fp32 / bf16 | "
          "speed-up |", "|" + "---|" * 13]
    for r in rows:
        head = f"| {model_name(r['model'])} | {attack_name(r['attack'])} | {'yes' if r['targeted'] else 'no'} |"
        if r["status"] != "complete":
            md.append(head + f" {r['status']} |" + " |" * 9)
            continue
        cells = []
        for k in RATES:
            cells += [f"{r[f'fp32_{k}_pct']:.1f} [{r[f'fp32_{k}_ci_lo']:.1f}, {r[f'fp32_{k}_ci_hi']:.1f}]",
                      f"{r[f'bf16_{k}_pct']:.1f}" + ("" if r[f"{k}_inside"] else " (outside)")]
        md.append(head + " " + " | ".join(cells) + f" | {r['same_adv_pred_pct']:.1f} | {'yes' if r['passes'] else 'no'} | "
                  f"{dur(r['fp32_wall_s'])} / {dur(r['bf16_wall_s'])} | {r['speedup']:.2f}x |")
    if done:
        by = {}
        for r in done:
            by.setdefault(r["model"], []).append(r["passes"])
        md += ["", "**Verdict per model** (all four cells must pass): " + "; ".join(
            f"{model_name(m)}: {'passes' if all(v) else 'fails'} ({sum(v)}/{len(v)})" for m, v in by.items()) + "."]
        devs = sorted({r["device"] for r in done})
        by_model = {r["model"]: r for r in done}
        md += ["", "Models: " + "; ".join(
            f"{model_name(m)} `{r['run']}` (seed {r['model_seed']}, {r['epochs']} epochs, config {r['config_hash']}, "
            f"model hash {r['model_hash']}, threshold {r['threshold']:.4f})" for m, r in by_model.items()) + "."]
        md += ["", f"Wall times as recorded in the result files (device {', '.join(devs)}; this CPU was shared with "
               "other jobs, so the speed-ups here are indicative; `make bench` measures throughput in one run)."]
    md += ["", generation_line(elapsed)]
    return write_report(report_dir, report_stem(dataset, compile), rows, md)


def paper_cell(*, steps: int = 1000, n: int = 1000, runs_root="runs", out_dir="results", report_dir="reports",
               device: str | None = None, data_root: str | None = None, only_report: bool = False) -> pd.DataFrame:
    """One paper-scale Table 3 cell (MNIST CapsNet, targeted R-PGD, beta 0.5, N = 1000) before and
    after the fast path: eager fp32 (the old default) and compiled bf16 (the paper scale's default),
    one after the other under the same load, with ``steps`` iterations (1000 = the full cell; fewer:
    a measured fraction of it, the full cell's time projected linearly and labelled so). Result files
    under ``<out_dir>/fastpath_cell`` (fewer steps: ``fastpath_cell_<steps>it``); the report ``fastpath_paper_cell.{md,csv}`` (fewer steps:
    ``fastpath_paper_cell_<steps>it.*``)."""
    t0 = time.perf_counter()
    store.restore_results(out_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = load_trained(find_run(runs_root, "mnist", "capsnet", 0), data_root)
    rows = []
    for label, prec, comp in (("before: eager fp32", "fp32", False), ("after: compiled bf16", "bf16", True)):
        sub = "fastpath_cell" if steps == 1000 else f"fastpath_cell_{steps}it"  # steps are not in a result's name
        res = _cell(run, "mnist", "r_pgd", 0.5, True, prec, n=n, steps=steps, out_dir=Path(out_dir) / sub,
                    device=device, only_report=only_report, compile=comp)
        row = {"path": label, "precision": prec, "compiled": comp, "n": n, "steps": steps, "status": res.get("status")}
        if res.get("status") == "complete":
            s, wall = res["summary"], res["run"]["wall_time_s"]
            row.update(wall_s=round(wall, 1), img_iter_s=round(n * steps / wall, 1),
                       full_cell_s=round(wall * 1000 / steps, 1), success_pct=round(100 * s["success_rate"], 1),
                       undetected_pct=round(100 * s["undetected_rate"], 1),
                       best_undetected_pct=round(100 * s["best_undetected_rate"], 1), device=res["run"]["device"],
                       result=res["path"])
        rows.append(row)
    done = [r for r in rows if r["status"] == "complete"]
    full = "the full cell" if steps == 1000 else f"{steps} of the cell's 1000 iterations (the full cell projected x{1000 / steps:g})"
    md = ["# One paper-scale R-PGD CapsNet cell, before and after the fast path", "",
          f"Generated by `lit-caps fastpath-check --paper-cell --steps {steps}`. MNIST, the committed CapsNet, "
          f"targeted R-PGD at beta 0.5, N = {n} seeded test images, eps 0.3, step 0.01, {full}; the two runs one "
          "after the other on the same machine. Before: the attack as every cell ran until the fast path (eager fp32); "
          "after: the paper scale's default for the CapsNet (`fast_path` in configs/scales/paper.yaml: compiled, "
          "bf16 autocast, every reported number measured in fp32; compilation included in the wall time).", "",
          "| path | wall time | image-iterations/s | full cell (1000 iterations) | success % | undetected % | "
          "best-iterate undetected % |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "complete":
            md.append(f"| {r['path']} | {r['status']} | | | | | |")
            continue
        proj = "" if steps == 1000 else " (projected)"
        md.append(f"| {r['path']} | {dur(r['wall_s'])} | {r['img_iter_s']:,.0f} | {dur(r['full_cell_s'])}{proj} | "
                  f"{r['success_pct']:.1f} | {r['undetected_pct']:.1f} | {r['best_undetected_pct']:.1f} |")
    if len(done) == 2:
        md += ["", f"**Speed-up: {done[0]['wall_s'] / done[1]['wall_s']:.2f}x** ({dur(done[0]['full_cell_s'])} -> "
               f"{dur(done[1]['full_cell_s'])} per full cell on {done[0]['device']}"
               + ("" if steps == 1000 else "; the projection multiplies each whole wall time by "
                  f"{1000 / steps:g}, the one-off compilation included, so it overstates the after side")
               + ")."]
    md += ["", generation_line(time.perf_counter() - t0)]
    return write_report(report_dir, "fastpath_paper_cell" if steps == 1000 else f"fastpath_paper_cell_{steps}it", rows, md)
