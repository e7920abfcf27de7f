"""Table 3 (R-PGD) and Table 6 (R-FGSM, R-BIM, R-PGD): the attacker's worst case over beta, for every
dataset x model x targeted (the beta search: :mod:`.search`; the report: :mod:`.table3_report`).

    make reproduce-table3 SCALE=quick   (= lit-caps reproduce table3 --scale quick)
        -> reports/table3_<scale>.{md,csv} (reports/table3.* at the paper scale), figures/fig9_table3_*, fig2_table3_*

Models: :func:`lit_caps.runs.ensure_run` trains (``lit-caps fit``'s config of the scale) or reuses
the matching run, or uses the committed model card; a dataset that cannot be loaded (SVHN on a
machine without it) gets rows that say why.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from . import TABLE3_DATASETS
from ..names import ATTACKS, dataset_name, model_name
from ..reporting.paper import rates_all as paper_rates_all
from ..reporting.plots import plot_rates_vs_beta, plot_undetected_vs_fpr
from ..runs import data_unavailable, ensure_run
from ..tracking import log_report
from .cells import MODELS, beta_series, report_models, resolve_device, results_dir, scale_settings
from .search import Search, search_beta
from .table3_report import write_worst_case_report

R_ATTACKS = ("r_fgsm", "r_bim", "r_pgd")




def worst_case_table(name: str, attacks: tuple, datasets=TABLE3_DATASETS, scale: str = "quick",
                     runs_root="runs", out_dir="results", report_dir="reports", models=MODELS, seed: int = 0,
                     only_report: bool = False, *, settings: dict | None = None, train: bool = True, refine: int | None = None,
                     betas=None, attack_seed: int = 0, device: str | None = None, data_root: str | None = None,
                     progress: bool = False, wandb_log: bool = True, train_overrides=(),
                     targeted: tuple = (True, False)) -> pd.DataFrame:
    """Worst case over beta of ``attacks`` for every dataset x model x targeted -> the report
    ``<report_dir>/<name>[_<scale>].{md,csv}`` (no suffix at the paper scale) and figures
    ``<report_dir>/figures/{fig9,fig2}_<name>_<dataset>_<scale>.png``. See the module docstring.
    ``datasets``, ``models`` and ``targeted`` narrow what is computed; the report keeps every dataset,
    every model and both targetings (the others from the result files that exist)."""
    t_start = time.perf_counter()
    sc = dict(settings) if settings is not None else scale_settings(scale, "table3")
    if refine is not None:
        sc["refine"] = int(refine)
    if betas is not None:
        sc["betas"] = tuple(float(b) for b in betas)
    device = resolve_device(device)
    res_dir = results_dir(out_dir, scale)
    stem = name if scale == "paper" else f"{name}_{scale}"
    paper_name = {"table3": "table3_rpgd", "table6": "table6_whitebox_reconstructive"}[name]
    paper = paper_rates_all(paper_name)
    fig_dir = Path(report_dir) / "figures"
    runs: dict = {}
    unavailable: dict = {}
    searches: list[Search] = []
    figures: dict = {}

    computed, models = tuple(models), report_models(models)  # the report keeps every model's rows
    computed_ds, datasets = tuple(datasets), report_datasets(datasets)  # ... and every dataset's

    def report() -> pd.DataFrame:
        return write_worst_case_report(name, stem, scale, sc, datasets, models, attacks, runs, unavailable, searches, paper,
                       report_dir, device, time.perf_counter() - t_start, figures, train_overrides)

    def computes(s: Search) -> bool:
        return (not only_report and s.dataset in computed_ds and s.model in computed and s.targeted in targeted)

    # 1. read every finished cell (of every dataset, model, targeting) before computing anything, so
    #    that a report written mid-run shows everything measured so far, not only what this run reached
    for ds in datasets:
        why = data_unavailable(ds, data_root)
        if why is not None:
            unavailable[ds] = why
            if ds in computed_ds:
                print(f"[{name} {scale}] {ds}: not available: {why.splitlines()[0]}", flush=True)
            continue
        for m in models:
            cached = only_report or m not in computed or ds not in computed_ds
            try:
                runs[(ds, m)] = ensure_run(ds, m, scale, seed=seed, runs_root=runs_root, train=train and not cached,
                                           overrides=train_overrides, data_root=data_root)
            except Exception as e:  # noqa: BLE001: a failed training becomes a row that says so
                if not cached:
                    raise
                runs[(ds, m)] = f"{type(e).__name__}: {e}"
        ds_searches = [Search(ds, m, a, t) for a in attacks for t in (True, False) for m in models]
        searches.extend(ds_searches)
        for s in ds_searches:
            search_beta(runs[(ds, s.model)], s, sc, out_dir=res_dir, device=device, attack_seed=attack_seed,
                        only_report=True, progress=False, tag=f"{name} {ds}/{scale}")
    report()
    # 2. compute what this run asked for, rewriting the report after each search
    for ds in datasets:
        ds_searches = [s for s in searches if s.dataset == ds]
        for s in ds_searches:
            if computes(s):
                search_beta(runs[(ds, s.model)], s, sc, out_dir=res_dir, device=device, attack_seed=attack_seed,
                            only_report=False, progress=progress, tag=f"{name} {ds}/{scale}")
                report()
        if ds_searches:
            figures.update(_figures(name, ds, scale, models, attacks, ds_searches, fig_dir,
                                    plot_rates_vs_beta, plot_undetected_vs_fpr))
    df = report()
    md = Path(report_dir) / f"{stem}.md"
    print(f"[{name} {scale}] report: {md}", flush=True)
    if wandb_log and not only_report:
        series = {}
        for ds in datasets:
            for t in (True, False):
                ss = [s for s in searches if s.dataset == ds and s.targeted == t and s.attack == attacks[-1] and s.done()]
                if ss:
                    kind = "targeted" if t else "untargeted"
                    series[f"{ds}/{kind}_undetected_vs_beta"] = (
                        [[c.beta for c in s.done()] for s in ss],
                        [[100 * c.result["summary"]["undetected_rate"] for c in s.done()] for s in ss],
                        [model_name(s.model) for s in ss], f"{ds}: {kind} {attacks[-1]} undetected % vs beta",
                        "beta")
        res_dir.mkdir(parents=True, exist_ok=True)
        log_report(name, scale, df, figures, series, res_dir)
    return df


def _figures(name, ds, scale, models, attacks, searches, fig_dir, plot_rates_vs_beta, plot_undetected_vs_fpr) -> dict:
    out = {}
    a = attacks[-1]  # r_pgd
    dname = dataset_name(ds)
    for t in (True, False):
        kind = "targeted" if t else "untargeted"
        succ, und, best, curves = {}, {}, {}, {}
        for s in searches:
            if s.attack != a or s.targeted != t or not s.done():
                continue
            mn = model_name(s.model)
            succ[mn], und[mn], best[mn] = beta_series(s.done())
            w = s.worst
            f = w.result["summary"].get("undetected_vs_fpr") if w else None
            if f:
                curves[f"{mn} (beta={w.beta:g})"] = (f["fpr"], f["undetected_rate"])
        if succ:
            p9 = fig_dir / f"fig9_{name}_{ds}_{kind}_{scale}.png"
            plot_rates_vs_beta(succ, und, p9, f"{kind.capitalize()} {ATTACKS[a]} on {dname} ({scale})",
                               best_undetected=best)
            out[f"{ds}/fig9_{kind}"] = p9
        if curves:
            p2 = fig_dir / f"fig2_{name}_{ds}_{kind}_{scale}.png"
            plot_undetected_vs_fpr(curves, p2, f"{dname}: worst-case {kind} {ATTACKS[a]} ({scale})")
            out[f"{ds}/fig2_{kind}"] = p2
    return out


def report_datasets(datasets) -> tuple:
    """The datasets a Table 3 / 6 report covers: all of ``TABLE3_DATASETS``, then any other asked for.
    ``--data`` chooses what a run computes, not what its report shows (as ``--models``:
    :func:`.cells.report_models`), so a run for one dataset never drops another's rows."""
    return tuple(TABLE3_DATASETS) + tuple(d for d in datasets if d not in TABLE3_DATASETS)


def table3(datasets=TABLE3_DATASETS, scale: str = "quick", **kw) -> pd.DataFrame:
    """Table 3: targeted and untargeted R-PGD, worst case over beta (see :func:`worst_case_table`)."""
    return worst_case_table("table3", ("r_pgd",), datasets, scale, **kw)


def table6(datasets=TABLE3_DATASETS, scale: str = "quick", **kw) -> pd.DataFrame:
    """Table 6: R-FGSM, R-BIM and R-PGD, worst case over beta each (R-PGD cells shared with Table 3)."""
    return worst_case_table("table6", R_ATTACKS, datasets, scale, **kw)


def _run(name: str, attacks: tuple, ctx, sc: dict) -> None:
    worst_case_table(name, attacks, ctx.datasets_or(TABLE3_DATASETS), ctx.scale, ctx.runs_root, ctx.out_dir,
                     ctx.report_dir, ctx.models, ctx.seed, ctx.only_report, settings=sc, train=ctx.train,
                     refine=ctx.refine, betas=ctx.betas, attack_seed=ctx.attack_seed, device=ctx.device,
                     data_root=ctx.data_root, progress=ctx.progress, wandb_log=ctx.wandb, targeted=tuple(ctx.targeted))


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce table3``: :func:`table3` (default datasets MNIST, Fashion-MNIST, SVHN)."""
    _run("table3", ("r_pgd",), ctx, sc)


def run_table6(ctx, sc: dict) -> None:
    """``lit-caps reproduce table6``: :func:`table6` (same datasets as Table 3)."""
    _run("table6", R_ATTACKS, ctx, sc)
