"""Table 7 of Qin et al.: black-box PGD and R-PGD, transferred from a substitute of the same
architecture trained with another seed (MNIST in the paper).

    lit-caps reproduce table7 --data mnist --scale quick   ->  reports/table7_<dataset>_<scale>.{md,csv}
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..names import dataset_name, model_name
from ..reporting.markdown import pair, paper_pair, write_report
from ..reporting.paper import rates as paper_rates
from .cells import MODELS, Cell, load_runs, resolve_device, results_dir, run_and_report, scale_settings, worst
from .rows import detail_table, footer, header, models_table, result_row, settings_table
from ..runs import LoadedRun


# -- table 7: black-box transfer ------------------------------------------------------------------------
def table7(dataset: str = "mnist", scale: str = "quick", runs_root: str | os.PathLike = "runs",
           out_dir: str | os.PathLike = "results", report_dir: str | os.PathLike = "reports", models=MODELS,
           seed: int = 0, only_report: bool = False, *, settings: dict | None = None, source_seed: int = 1, betas=None, attack_seed: int = 0,
           device: str | None = None, data_root: str | None = None, progress: bool = False) -> pd.DataFrame:
    """Black-box PGD and R-PGD (targeted, untargeted) -> ``<report_dir>/table7_<dataset>_<scale>.{md,csv}``
    beside the paper's Table 7 (MNIST only in the paper).

    Threat model (Section 3): the attacker knows the architecture, not the parameters: each
    target model (seed ``seed``) is attacked with examples crafted on a substitute of the same
    model and arch trained with ``source_seed`` (white-box on the substitute, with its own
    reconstructions and threshold), and success / undetected are measured on the target with the
    target's threshold. R-PGD: every beta of the scale's grid; the table shows the worst case over
    beta on the target (as Table 3), every beta is in the CSV / the detail table.
    """
    if int(source_seed) == int(seed):
        raise ValueError("the black-box source must be trained with another seed than the target")
    tag = f"table7 {dataset}/{scale}"
    sc = dict(settings) if settings is not None else scale_settings(scale, "table7")
    betas = tuple(float(b) for b in (sc["betas"] if betas is None else betas))
    device = resolve_device(device)
    runs = load_runs(runs_root, dataset, models, seed, only_report, data_root, what=f"{tag}: ")
    arch = {m: (r.summary.get("arch") if isinstance(r, LoadedRun) else None) for m, r in runs.items()}
    sources = load_runs(runs_root, dataset, models, source_seed, only_report, data_root, arch=arch,
                         what=f"{tag}: black-box source (same architecture, seed {source_seed}): ")
    specs = [("pgd", None)] + [("r_pgd", b) for b in betas]
    cells = [Cell(m, a, t, b) for t in (True, False) for a, b in specs for m in models]
    paper = paper_rates("table7_blackbox_mnist", dataset)
    stem = f"table7_{dataset}_{scale}"
    command = f"lit-caps reproduce table7 --data {dataset} --scale {scale}"

    def report() -> pd.DataFrame:
        rows, main = [], []
        for m in models:
            for t in (True, False):
                for a in ("pgd", "r_pgd"):
                    cs = [c for c in cells if c.model == m and c.targeted == t and c.attack == a]
                    ref = paper.get((m, a, t))
                    for c in cs:
                        rows.append(dict(result_row("table7", dataset, scale, c, runs.get(m), ref, sources.get(m)),
                                         row_kind="cell"))
                    if a == "r_pgd":
                        w = worst(cs)
                        n_done = sum(c.complete for c in cs)
                        c = w or Cell(m, a, t, None, note="no beta finished")
                        r = dict(result_row("table7", dataset, scale, c, runs.get(m), ref, sources.get(m)),
                                 row_kind="table7_worst_beta", betas_done=f"{n_done}/{len(cs)}")
                        if n_done < len(cs) and w is not None:
                            r["status"] = f"partial ({n_done}/{len(cs)} betas)"
                        main.append(r)
                    else:
                        main.append(dict(rows[-1], row_kind="table7"))
        title = f"Table 7 ({dataset_name(dataset)}): black-box PGD and R-PGD"
        md = header(title, command, dataset, scale, "table7", rows, betas)
        md += ["Black box (Section 3, Threat Model): the attacker knows the architecture, not the parameters. "
               f"Each target (seed {seed}) is attacked with examples crafted white-box on a substitute: the same "
               f"model and arch trained with seed {source_seed} (its own predicted-class reconstructions in "
               "R-PGD's detector stage, its own threshold for the best-iterate bookkeeping); success and undetected "
               "are measured on the target with the target's threshold. R-PGD: worst case over beta on the target "
               "(`betas done` of the grid finished).", "",
               "## Success rate / undetected rate (%): ours (paper)", "",
               "| model | targeted PGD | targeted R-PGD | untargeted PGD | untargeted R-PGD |", "|---|---|---|---|---|"]
        by = {(r["model"], r["targeted"], r["attack"]): r for r in main}
        for m in models:
            cs = []
            for t in (True, False):
                for a in ("pgd", "r_pgd"):
                    r = by[(m, t, a)]
                    b = f", beta {r['beta']:g}" if a == "r_pgd" and r["beta"] is not None else ""
                    cs.append(f"{pair(r)} ({paper_pair(r)}){b}")
            md.append(f"| {model_name(m)} | " + " | ".join(cs) + " |")
        md += ["", "## Table 7 cells (R-PGD: worst beta)", ""] + detail_table(main, with_beta=True)
        md += ["", "## Every cell", ""] + detail_table(rows, with_beta=True)
        md += ["", "## Attack settings", ""] + settings_table(rows)
        md += ["", "## Target models", ""] + models_table(runs)
        md += ["", "## Black-box sources (substitutes)", ""] + models_table(sources, "source of")
        md += footer(rows, device)
        return write_report(report_dir, stem, main + rows, md)

    return run_and_report(tag, cells, runs, dataset, sc, report, Path(report_dir) / f"{stem}.md",
                           attack_seed=attack_seed, out_dir=results_dir(out_dir, scale), device=device,
                           only_report=only_report, progress=progress, sources=sources)


def run(ctx, sc: dict) -> None:
    """``lit-caps reproduce table7``: :func:`table7` for each dataset (default MNIST)."""
    for d in ctx.datasets_or(("mnist",)):
        table7(d, ctx.scale, ctx.runs_root, ctx.out_dir, ctx.report_dir, ctx.models, ctx.seed, ctx.only_report,
               settings=sc, source_seed=ctx.source_seed, betas=ctx.betas, attack_seed=ctx.attack_seed,
               device=ctx.device, data_root=ctx.data_root, progress=ctx.progress)
