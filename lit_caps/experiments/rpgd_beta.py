"""R-PGD over beta (Fig. 9), its worst case per model (Table 3 / Table 6's R-PGD) and the undetected
rate vs FPR of the worst case (Fig. 2), for one dataset.

    lit-caps reproduce rpgd-beta --data mnist --scale quick   ->  reports/rpgd_beta_<dataset>_<scale>.{md,csv}
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..names import dataset_name, model_name
from ..reporting.markdown import ci, diff, num, paper_pair, write_report
from ..reporting.paper import rates as paper_rates
from .cells import (MODELS, Cell, beta_series, load_runs, resolve_device, results_dir, run_and_report,
                    scale_settings, worst)
from .rows import detail_table, footer, header, models_table, result_row, settings_table
from ..reporting.plots import plot_rates_vs_beta, plot_undetected_vs_fpr


def rpgd_beta_grid(dataset: str = "mnist", scale: str = "quick", runs_root: str | os.PathLike = "runs",
                   out_dir: str | os.PathLike = "results", report_dir: str | os.PathLike = "reports", models=MODELS,
                   seed: int = 0, only_report: bool = False, *, settings: dict | None = None, betas=None, targeted=(True, False),
                   attack_seed: int = 0, device: str | None = None, data_root: str | None = None,
                   progress: bool = False) -> pd.DataFrame:
    """White-box R-PGD for each beta (default: the scale's grid, 0, 0.1, ..., 1 at quick/paper),
    targeted and/or untargeted, on each model -> ``<report_dir>/rpgd_beta_<dataset>_<scale>.{md,csv}``
    (every beta, and the worst case per (model, targeted) = the beta with the highest undetected
    rate, beside the paper's Table 3 and Table 6 R-PGD) and the figures
    ``<report_dir>/figures/fig9_rpgd_beta_<dataset>_<scale>.png`` (targeted success and undetected
    rate vs beta, Fig. 9) and ``fig2_undetected_vs_fpr_<dataset>_<scale>.png`` (undetected rate vs FPR
    of each model's worst-case targeted R-PGD, Fig. 2); the same two for untargeted R-PGD, once an
    untargeted beta is finished, as ``fig9_rpgd_beta_<dataset>_untargeted_<scale>.png`` and
    ``fig2_undetected_vs_fpr_<dataset>_untargeted_<scale>.png``. Fig. 9 also draws the best-iterate
    undetected rate (dashed). Rows: every beta cell, then the worst cases
    (``row_kind`` "beta" / "worst" / "worst_best_iterate").
    """
    tag = f"rpgd_beta {dataset}/{scale}"
    sc = dict(settings) if settings is not None else scale_settings(scale, "rpgd_beta")
    betas = tuple(float(b) for b in (sc["betas"] if betas is None else betas))
    targeted = tuple(bool(t) for t in (targeted if isinstance(targeted, (tuple, list)) else (targeted,)))
    device = resolve_device(device)
    runs = load_runs(runs_root, dataset, models, seed, only_report, data_root, what=f"{tag}: ")
    cells = [Cell(m, "r_pgd", t, b) for t in targeted for b in betas for m in models]
    p3 = paper_rates("table3_rpgd", dataset)
    p6 = paper_rates("table6_whitebox_reconstructive", dataset)
    stem = f"rpgd_beta_{dataset}_{scale}"
    fig_dir = Path(report_dir) / "figures"
    fig9 = fig_dir / f"fig9_rpgd_beta_{dataset}_{scale}.png"
    fig2 = fig_dir / f"fig2_undetected_vs_fpr_{dataset}_{scale}.png"
    fig_paths = {True: (fig9, fig2),  # the paper's Fig. 9 / Fig. 2 are targeted; untargeted beside them
                 False: (fig_dir / f"fig9_rpgd_beta_{dataset}_untargeted_{scale}.png",
                         fig_dir / f"fig2_undetected_vs_fpr_{dataset}_untargeted_{scale}.png")}
    command = f"lit-caps reproduce rpgd-beta --data {dataset} --scale {scale}" + (
        "" if betas is None else " --betas " + " ".join(f"{b:g}" for b in betas))

    def report() -> pd.DataFrame:
        rows, worst_rows = [], []
        for m in models:
            for t in targeted:
                cs = [c for c in cells if c.model == m and c.targeted == t]
                ref = p3.get((m, "r_pgd", t))
                for c in cs:
                    rows.append(dict(result_row("rpgd_beta", dataset, scale, c, runs.get(m), ref), row_kind="beta"))
                for kind, key in (("worst", "undetected_rate"), ("worst_best_iterate", "best_undetected_rate")):
                    w = worst(cs, key)
                    n_done = sum(c.complete for c in cs)
                    c = w or Cell(m, "r_pgd", t, None, note="no beta finished")
                    r = dict(result_row("rpgd_beta", dataset, scale, c, runs.get(m), ref), row_kind=kind,
                             betas_done=f"{n_done}/{len(cs)}")
                    p6v = p6.get((m, "r_pgd", t))
                    r["paper_table6_success_pct"], r["paper_table6_undetected_pct"] = p6v if p6v else (None, None)
                    if n_done < len(cs) and w is not None:
                        r["status"] = f"partial ({n_done}/{len(cs)} betas)"
                    worst_rows.append(r)
        all_rows = rows + worst_rows
        title = f"R-PGD over beta ({dataset_name(dataset)}): Fig. 9, Table 3 / Table 6 R-PGD, Fig. 2"
        md = header(title, command, dataset, scale, "rpgd_beta", rows, betas)
        md += ["## Worst case over beta (highest undetected rate) beside the paper", "",
               "The paper reports, per model, the R-PGD with the beta that gives the highest undetected rate "
               "(Table 3; Table 6 repeats it, except Fashion-MNIST CNN+CR targeted, see lit_caps/paper/README.md). "
               "The worst case is taken over the finished betas only (`betas done`).", "",
               "| model | targeted | worst beta | betas done | success % [95% CI] | undetected % [95% CI] | "
               "paper Table 3 S/R | Table 6 S/R | diff S | diff R | best-iterate worst: beta, undetected % [95% CI] |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i in range(0, len(worst_rows), 2):
            r, rb = worst_rows[i], worst_rows[i + 1]
            p6s = "-" if r["paper_table6_success_pct"] is None else \
                f"{r['paper_table6_success_pct']:g}/{r['paper_table6_undetected_pct']:g}"
            md.append(f"| {model_name(r['model'])} | {'yes' if r['targeted'] else 'no'} | "
                      f"{num(r['beta'], '{:g}') or '-'} | {r['betas_done']} | {ci(r, 'success')} | "
                      f"{ci(r, 'undetected')} | {paper_pair(r)} | {p6s} | {diff(r['diff_success_pct'])} | "
                      f"{diff(r['diff_undetected_pct'])} | "
                      + (f"{rb['beta']:g}: {ci(rb, 'best_undetected')}" if rb["beta"] is not None else rb["status"])
                      + " |")
        links = []
        for t in targeted:
            if t is not True and not any(c.complete for c in cells if c.targeted == t):
                continue
            kind = "targeted" if t else "untargeted"
            p9, p2 = (p.relative_to(Path(report_dir)).as_posix() for p in fig_paths[t])
            links.append(f"{kind}: [Fig. 9]({p9}) (success and undetected rate vs beta, shaded: 95% CI; dashed: "
                         f"best-iterate undetected rate), [Fig. 2]({p2}) (undetected rate vs FPR of each model's "
                         f"worst-case {kind} R-PGD)")
        md += ["", "Figures, " + "; ".join(links) + ".", "", "## Every beta", ""] + detail_table(rows, with_beta=True)
        md += ["", "(`paper` here: the worst-case Table 3 value, the same for every beta.)", "",
               "## Attack settings", ""] + settings_table(rows)
        md += ["", "## Models", ""] + models_table(runs)
        md += footer(rows, device)
        df = write_report(report_dir, stem, all_rows, md)
        _figures()
        return df

    def _figures() -> None:
        name = dataset_name(dataset)
        for t in targeted:
            kind = "targeted" if t else "untargeted"
            series = {model_name(m): beta_series([c for c in cells if c.model == m and c.targeted == t])
                      for m in models}
            series = {k: v for k, v in series.items() if v is not None}
            curves = {}
            for m in models:
                w = worst([c for c in cells if c.model == m and c.targeted == t])
                if w is not None and w.result["summary"].get("undetected_vs_fpr"):
                    f = w.result["summary"]["undetected_vs_fpr"]
                    curves[f"{model_name(m)} (beta={w.beta:g})"] = (f["fpr"], f["undetected_rate"])
            p9, p2 = fig_paths[t]
            if t is not True and not series:
                continue  # the untargeted figures appear once an untargeted beta is finished
            plot_rates_vs_beta({k: v[0] for k, v in series.items()}, {k: v[1] for k, v in series.items()}, p9,
                               f"{kind.capitalize()} R-PGD on {name} ({scale})",
                               best_undetected={k: v[2] for k, v in series.items()})
            plot_undetected_vs_fpr(curves, p2, f"{name}: worst-case {kind} R-PGD ({scale})")

    return run_and_report(tag, cells, runs, dataset, sc, report, f"{Path(report_dir) / f'{stem}.md'}; figures: {fig9}, {fig2}",
                           attack_seed=attack_seed, out_dir=results_dir(out_dir, scale), device=device,
                           only_report=only_report, progress=progress)


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce rpgd-beta``: :func:`rpgd_beta_grid` for each dataset (default MNIST)."""
    for d in ctx.datasets_or(("mnist",)):
        rpgd_beta_grid(d, ctx.scale, ctx.runs_root, ctx.out_dir, ctx.report_dir, ctx.models, ctx.seed,
                       ctx.only_report, settings=sc, betas=ctx.betas, targeted=ctx.targeted,
                       attack_seed=ctx.attack_seed, device=ctx.device, data_root=ctx.data_root, progress=ctx.progress)
