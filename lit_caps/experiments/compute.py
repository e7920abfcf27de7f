"""Where the compute went: the attack time of every committed result file, per report, and the
training time of every committed model, from the store alone (nothing is computed).

    lit-caps report compute   (part of ``make reports`` / ``check-reports``)
        -> reports/compute.{md,csv}

Each result file counts once, under the report whose experiment computes it (its store folder and
attack name, :func:`report_of`); a report that reuses another's cells (the adaptive paper-scale
report takes Table 3's R-PGD cells) does not count them again. Times are as recorded in the files:
``run.wall_time_s`` (the attack time summed over the cell's chunks, whichever process computed
them) and, for cells computed since chunks record it, ``run.cpu_time_s`` (the process CPU time over
those chunks, every thread). Work is N x iterations image-iterations per cell.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from .. import store
from ..attacks import ADAPTIVE
from ..names import dataset_name
from ..reporting.markdown import generation_line, write_report
from .cells import STANDARD_ATTACKS

#: store folders of the fast-path checks (lit-caps fastpath-check), not of a paper table
FASTPATH_FOLDERS = {"fastpath": "fastpath_check", "fastpath_compiled": "fastpath_check_compiled",
                    "fastpath_cell_100it": "fastpath_paper_cell_100it"}
SCALES = ("smoke", "quick")  # folders of the reduced scales; the paper scale sits at the store's top


def report_of(rel: Path, settings: dict) -> str:
    """The report (its file stem under reports/) whose experiment computes the result file at ``rel``
    (its path under the results store) with ``settings``."""
    parts = rel.parts
    if parts[0] in FASTPATH_FOLDERS:
        return FASTPATH_FOLDERS[parts[0]] + ("" if settings["dataset"] == "mnist" else f"_{settings['dataset']}")
    scale = parts[0] if parts[0] in SCALES else "paper"
    suffix = "" if scale == "paper" else f"_{scale}"
    ds, attack = settings["dataset"], settings["attack"]
    if ds == "cifar10":
        return f"fig3_cifar10_{scale}"
    if ds == "mnist_c":
        return f"table2{suffix}"
    if attack in ADAPTIVE:
        return f"adaptive_{ds}_{scale}"
    if attack == "r_pgd":
        return f"table3{suffix}"
    if attack in ("r_fgsm", "r_bim"):
        return f"table6{suffix}"
    if attack in STANDARD_ATTACKS:
        return f"table1_{ds}_{scale}"
    return f"other ({attack})"


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 2)


def ledger(results=None, cards=None) -> tuple[list[dict], list[dict]]:
    """(attack rows: one per report and dataset (a multi-dataset report such as Table 3 gets a row per
    dataset), training rows: one per dataset) from ``results``
    ((rel, result) pairs, default: the store's) and ``cards`` (model summaries, default: the store's)."""
    groups: dict = defaultdict(lambda: dict(cells=0, image_iterations=0, wall_s=0.0, cpu_s=0.0, cpu_cells=0,
                                            threads=set(), devices=set(), finished=[]))
    for rel, res in (store.stored_results() if results is None else results):
        st, run = res["settings"], res.get("run") or {}
        g = groups[(report_of(Path(rel), st), st["dataset"])]
        g["cells"] += 1
        g["image_iterations"] += int(st["n"]) * int((st.get("attack_settings") or {}).get("steps", 1))
        g["wall_s"] += float(run.get("wall_time_s") or 0.0)
        if run.get("cpu_time_s") is not None:
            g["cpu_s"] += float(run["cpu_time_s"])
            g["cpu_cells"] += 1
        if run.get("threads"):
            g["threads"].add(int(run["threads"]))
        g["devices"].add(run.get("device") or "?")
        if run.get("finished_at"):
            g["finished"].append(run["finished_at"][:10])
    attack_rows = []
    for name, ds in sorted(groups):
        g = groups[(name, ds)]
        attack_rows.append(dict(
            report=name, dataset=ds, cells=g["cells"], image_iterations=g["image_iterations"],
            attack_wall_h=_hours(g["wall_s"]), cpu_h_recorded=_hours(g["cpu_s"]) if g["cpu_cells"] else None,
            cells_with_cpu_time=g["cpu_cells"], threads=",".join(str(t) for t in sorted(g["threads"])),
            devices=",".join(sorted(g["devices"])),
            first_finished=min(g["finished"], default=""), last_finished=max(g["finished"], default="")))
    train: dict = defaultdict(lambda: dict(models=0, wall_s=0.0, devices=set(), names=[]))
    for s in (_store_cards() if cards is None else cards):
        t = train[s["dataset"]]
        t["models"] += 1
        t["wall_s"] += float(s.get("train_wall_s") or 0.0)
        t["devices"].add(s.get("device") or "?")
        t["names"].append(s.get("source_run") or s.get("model"))
    train_rows = [dict(dataset=ds, models=t["models"], train_wall_h=_hours(t["wall_s"]),
                       devices=",".join(sorted(t["devices"])), runs=" ".join(sorted(t["names"])))
                  for ds, t in sorted(train.items())]
    return attack_rows, train_rows


def _store_cards() -> list[dict]:
    out = []
    for p in sorted(store.models_root().glob("*/*/summary.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def compute_report(report_dir="reports") -> list[dict]:
    """Write ``<report_dir>/compute.{md,csv}`` (the CSV: one row per report and per dataset's training)."""
    t0 = time.perf_counter()
    attack_rows, train_rows = ledger()
    wall = sum(r["attack_wall_h"] for r in attack_rows)
    cpu_cells = sum(r["cells_with_cpu_time"] for r in attack_rows)
    cells = sum(r["cells"] for r in attack_rows)
    train_h = sum(r["train_wall_h"] for r in train_rows)
    md = ["# Compute: where the hours went", "",
          "Generated by `lit-caps report compute` (part of `make reports`) from the committed store alone: "
          "every result file under `reports/results/` and every model card under `reports/models/`.", "",
          "Each result file counts once, under the report whose experiment computes it; a report that reuses "
          "another's cells (the adaptive paper-scale report reads Table 3's R-PGD cells) does not count them "
          "again. **Attack wall time** is each cell's attack time summed over its chunks, whichever process "
          "computed them, as recorded in the file (a cell that shared the 2-core CPU with another process "
          "shows a longer time). **CPU time** is the process CPU time over the chunks (every thread), recorded "
          "only by cells computed since chunks carry it; the older cells ran in processes of 1 or 2 torch "
          "threads on this project's 2-core machine, so their CPU time is at most twice their wall time. "
          "Work = N images x attack iterations, summed over the cells.", "",
          "## Attacks, per report and dataset", "",
          "| report | dataset | cells | image-iterations (M) | attack wall time (h) | CPU time (h; cells that "
          "recorded it) | torch threads | devices | finished |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in attack_rows:
        cpu = f"{r['cpu_h_recorded']:.2f} ({r['cells_with_cpu_time']} of {r['cells']})" if r["cpu_h_recorded"] \
            is not None else f"not recorded (0 of {r['cells']})"
        link = f"[{r['report']}]({r['report']}.md)" if (Path(report_dir) / f"{r['report']}.md").is_file() \
            else r["report"]
        span = r["first_finished"] if r["first_finished"] == r["last_finished"] else \
            f"{r['first_finished']} to {r['last_finished']}"
        md.append(f"| {link} | {dataset_name(r['dataset'])} | {r['cells']} | {r['image_iterations'] / 1e6:.1f} "
                  f"| {r['attack_wall_h']:.2f} | {cpu} "
                  f"| {r['threads'] or 'not recorded'} | {r['devices']} | {span} |")
    unlinked = sorted({r["report"] for r in attack_rows if not (Path(report_dir) / f"{r['report']}.md").is_file()})
    md.append(f"| **all** | | {cells} | {sum(r['image_iterations'] for r in attack_rows) / 1e6:.1f} | **{wall:.2f}** "
              f"| {cpu_cells} of {cells} cells recorded it | | | |")
    if unlinked:
        md += ["", f"Without a link ({', '.join(unlinked)}): cells with no report of their own, read by another "
               "(a fast-path check's eager fp32 side is the reference of its `_compiled` report)."]
    md += ["", "## Training, per dataset (the committed models)", "",
           "| dataset | models | train wall time (h) | devices | runs |", "|---|---|---|---|---|"]
    for r in train_rows:
        md.append(f"| {dataset_name(r['dataset'])} | {r['models']} | {r['train_wall_h']:.2f} | {r['devices']} "
                  f"| {r['runs']} |")
    md += [f"| **all** | {sum(r['models'] for r in train_rows)} | **{train_h:.2f}** | | |", "",
           f"In all: {wall + train_h:.1f} hours of recorded attack and training wall time behind the committed "
           "reports (training time is each run's training loop, validation included, accumulated across "
           "resumes, from its summary.json).", "",
           generation_line(time.perf_counter() - t0)]
    rows = [dict(kind="attack", **r) for r in attack_rows] + [dict(kind="training", **r) for r in train_rows]
    write_report(report_dir, "compute", rows, md)
    return rows
