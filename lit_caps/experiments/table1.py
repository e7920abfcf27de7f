"""Table 1 / Table 5 of Qin et al.: white-box FGSM, BIM, PGD and CW, targeted and untargeted, on each
model, beside the paper's numbers (Table 1 = the MNIST part of Table 5).

    lit-caps reproduce table1 --data mnist --scale quick    ->  reports/table1_<dataset>_<scale>.{md,csv}
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..names import ATTACKS, dataset_name, model_name
from ..reporting.plots import plot_undetected_vs_fpr_panels
from ..reporting.markdown import pair, paper_pair, write_report
from ..reporting.paper import rates as paper_rates
from .cells import (MODELS, STANDARD_ATTACKS, Cell, load_runs, report_models, resolve_device, results_dir,
                    run_and_report, scale_settings)
from .rows import detail_table, footer, header, models_table, result_row, settings_table


# -- table 1 / table 5 ---------------------------------------------------------------------------------
def table1(dataset: str = "mnist", scale: str = "quick", runs_root: str | os.PathLike = "runs",
           out_dir: str | os.PathLike = "results", report_dir: str | os.PathLike = "reports", models=MODELS,
           seed: int = 0, only_report: bool = False, *, settings: dict | None = None, attack_seed: int = 0, device: str | None = None,
           data_root: str | None = None, progress: bool = False) -> pd.DataFrame:
    """White-box FGSM, BIM, PGD, CW, targeted and untargeted, on each model ->
    ``<report_dir>/table1_<dataset>_<scale>.{md,csv}`` beside the paper's Table 5 rows of ``dataset``.

    ``models`` narrows what is computed; the report always lists the three models, a model outside
    ``models`` with the results that already exist for it (else "pending").

    ``seed``: the trained models' seed (:func:`find_run`); ``attack_seed``: the test subset and
    the targets. Returns the rows (one per model x targeted x attack) as a DataFrame.
    """
    tag = f"table1 {dataset}/{scale}"
    sc = dict(settings) if settings is not None else scale_settings(scale, "table1")
    device = resolve_device(device)
    # the report always covers the three models; --models only narrows what is computed
    computed, models = tuple(models), report_models(models)
    runs = load_runs(runs_root, dataset, [m for m in models if m not in computed], seed, True, data_root)
    runs.update(load_runs(runs_root, dataset, computed, seed, only_report, data_root, what=f"{tag}: "))
    cells = [Cell(m, a, t, compute=m in computed) for a in STANDARD_ATTACKS for t in (True, False) for m in models]
    paper = paper_rates("table5_whitebox_standard", dataset)
    command = f"lit-caps reproduce table1 --data {dataset} --scale {scale}"
    fig = Path(report_dir) / "figures" / f"table1_undetected_vs_fpr_{dataset}_{scale}.png"

    def report() -> pd.DataFrame:
        order = {(m, t, a): i for i, (m, t, a) in enumerate((m, t, a) for m in models for t in (True, False)
                                                            for a in STANDARD_ATTACKS)}
        cs = sorted(cells, key=lambda c: order[(c.model, c.targeted, c.attack)])
        rows = [result_row("table1", dataset, scale, c, runs.get(c.model), paper.get((c.model, c.attack, c.targeted)))
                for c in cs]
        by = {(r["model"], r["targeted"], r["attack"]): r for r in rows}
        title = f"Table 1 / Table 5 ({dataset_name(dataset)}): white-box standard attacks"
        md = header(title, command, dataset, scale, "table1", rows)
        md += ["## Success rate / undetected rate (%): ours (paper)", "",
               "| model | " + " | ".join(f"targeted {ATTACKS[a]}" for a in STANDARD_ATTACKS) + " | " +
               " | ".join(f"untargeted {ATTACKS[a]}" for a in STANDARD_ATTACKS) + " |",
               "|---|" + "---|" * (2 * len(STANDARD_ATTACKS))]
        for m in models:
            cells_md = [f"{pair(by[(m, t, a)])} ({paper_pair(by[(m, t, a)])})" for t in (True, False)
                        for a in STANDARD_ATTACKS]
            md.append(f"| {model_name(m)} | " + " | ".join(cells_md) + " |")
        if _table1_figure(cells, models, fig, f"{dataset_name(dataset)}: Table 1 attacks ({scale})"):
            md += ["", f"[Undetected rate vs FPR]({fig.relative_to(Path(report_dir)).as_posix()}) of every finished "
                   "cell (one panel per attack, one line per model; the dotted line is the 5% FPR of the tables)."]
        md += ["", "## Every cell", ""] + detail_table(rows)
        md += ["", "## Attack settings", ""] + settings_table(rows)
        md += ["", "## Models", ""] + models_table(runs)
        md += footer(rows, device)
        return write_report(report_dir, f"table1_{dataset}_{scale}", rows, md)

    return run_and_report(tag, cells, runs, dataset, sc, report, Path(report_dir) / f"table1_{dataset}_{scale}.md",
                           attack_seed=attack_seed, out_dir=results_dir(out_dir, scale), device=device,
                           only_report=only_report, progress=progress)


def _table1_figure(cells: list[Cell], models, path: Path, title: str) -> bool:
    """Undetected rate vs FPR of every finished Table 1 cell: a panel per (targeted, attack), a line
    per model. Returns False (and draws nothing) while no cell has finished."""
    by = {(c.model, c.attack, c.targeted): c for c in cells}
    panels, any_curve = {}, False
    for t in (True, False):
        for a in STANDARD_ATTACKS:
            curves = {}
            for m in models:
                c = by.get((m, a, t))
                f = c.result["summary"].get("undetected_vs_fpr") if c is not None and c.complete else None
                if f:
                    curves[model_name(m)] = (f["fpr"], f["undetected_rate"])
            panels[f"{'targeted' if t else 'untargeted'} {ATTACKS[a]}"] = curves
            any_curve = any_curve or bool(curves)
    if any_curve:
        plot_undetected_vs_fpr_panels(panels, path, title, ncols=len(STANDARD_ATTACKS),
                                      colors={model_name(m): f"C{i}" for i, m in enumerate(models)})
    return any_curve


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce table1``: :func:`table1` for each dataset of the context (default MNIST)."""
    for d in ctx.datasets_or(("mnist",)):
        table1(d, ctx.scale, ctx.runs_root, ctx.out_dir, ctx.report_dir, ctx.models, ctx.seed, ctx.only_report,
               settings=sc, attack_seed=ctx.attack_seed, device=ctx.device, data_root=ctx.data_root,
               progress=ctx.progress)
