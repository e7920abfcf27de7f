"""One attack cell and the machinery every attack table shares.

A cell is one (model, attack, targeted, beta) of a table: one result file of
:func:`lit_caps.evaluation.evaluate_attack` under :func:`results_dir` (``out_dir``, or
``out_dir/<scale>`` below the paper scale; written in chunks, reused when it exists), so rerunning a
table computes only what is missing and a killed run continues from its finished chunks. A cell
without a finished result file (with these settings) is *pending*, never a number.

The scale of an experiment (``smoke`` / ``quick`` / ``paper``) is a section of
``lit_caps/configs/scales/<scale>.yaml`` (:func:`scale_settings`); every reduction from the paper's
settings (Appendix C) is printed in the report (:func:`reductions`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import store
from ..attacks import CW_SETTINGS, ITERATIONS
from ..config import scale_section
from ..evaluation import compile_requested, evaluate_attack, precision_requested
from ..names import dataset_name
from ..reporting.markdown import dur
from ..runs import LoadedRun, RunNotFoundError, find_run, fit_command, load_trained

MODELS = ("capsnet", "cnn_cr", "cnn_r")


def report_models(models) -> tuple:
    """The models a report covers: all of :data:`MODELS`, then any other model asked for.

    ``--models`` chooses what a run computes, not what its report shows: a run for one model
    rewrites the report with the other models' rows read from their results (pending where none),
    so it never drops what earlier runs measured."""
    return tuple(MODELS) + tuple(m for m in models if m not in MODELS)
STANDARD_ATTACKS = ("fgsm", "bim", "pgd", "cw")


def scale_settings(scale: str, table: str) -> dict:
    """The ``table`` section of a scale (``configs/scales/<scale>.yaml``), a fresh copy."""
    return scale_section(scale, table)


def iterations(dataset: str, steps: int | None) -> int:
    full = ITERATIONS[dataset]
    return full if steps is None else min(int(steps), full)


def results_dir(out_dir, scale: str) -> Path:
    """Where a scale's result files go: ``out_dir`` itself at the paper scale (the identities that
    ``lit-caps evaluate`` with the presets also gives), ``out_dir/<scale>`` otherwise, so that the
    reduced settings never share a file name (which does not encode iterations) with full ones."""
    store.restore_results(out_dir)  # a fresh clone: the committed results come back first
    return Path(out_dir) if scale == "paper" else Path(out_dir) / scale


def attack_settings(dataset: str, attack: str, sc: dict) -> dict:
    """The settings (overriding the Appendix C preset) of ``attack`` at a scale's table settings."""
    if attack in ("fgsm", "r_fgsm"):
        return {}
    if attack == "cw":
        return dict(sc["cw"]) if sc.get("cw") else {}
    return {"steps": iterations(dataset, sc.get("steps"))}


def reductions(dataset: str, scale: str, table: str, betas=None) -> list[str]:
    """Human-readable differences of a scale from the paper's settings (Appendix C)."""
    sc, paper = scale_settings(scale, table), scale_settings("paper", table)
    out = []
    if sc["n"] != paper["n"]:
        out.append(f"N = {sc['n']} test images (paper scale: {paper['n']})")
    it, full = iterations(dataset, sc.get("steps")), ITERATIONS[dataset]
    what = {"table1": "BIM/PGD", "rpgd_beta": "R-PGD", "table7": "PGD/R-PGD", "table3": "R-BIM/R-PGD"}[table]
    if it != full:
        out.append(f"{what}: {it} iterations (paper, Appendix C: {full} on {dataset_name(dataset)})")
    if table == "table1" and sc.get("cw"):
        cw = {**CW_SETTINGS, **sc["cw"]}
        if cw != CW_SETTINGS:
            out.append(f"CW: {cw['steps']} iterations x {cw['binary_search_steps']} binary-search steps from "
                       f"c = {cw['initial_const']:g}, Adam lr {cw.get('lr', 0.01):g} (paper: {CW_SETTINGS['steps']} x "
                       f"{CW_SETTINGS['binary_search_steps']} from c = {CW_SETTINGS['initial_const']:g}, "
                       f"lr {CW_SETTINGS.get('lr', 0.01):g})")
    if table in ("rpgd_beta", "table7", "table3"):
        b = tuple(betas) if betas is not None else tuple(sc["betas"])
        if b != tuple(paper["betas"]):
            grid = lambda v: ", ".join(f"{x:g}" for x in v)  # noqa: E731
            out.append(f"beta grid {grid(b)} (paper scale: {grid(paper['betas'])}; "
                       "the paper tunes beta per model without giving its grid)")
    fast = sc.get("fast_path")
    if fast and fast_path_covers(fast, dataset):
        on = f" on {', '.join(dataset_name(d) for d in fast['datasets'])}" if fast.get("datasets") else ""
        out.append(f"the fast path: the attack iterations of {', '.join(fast['models'])}'s "
                   f"{', '.join(a.upper().replace('_', '-') for a in fast['attacks'])}{on} under {fast['precision']} "
                   "autocast (every rate still measured in fp32; it passed its equality check against fp32, "
                   "reports/fastpath_check.md and fastpath_check_compiled.md)")
    return out


# -- one cell --------------------------------------------------------------------------------------
@dataclass
class Cell:
    model: str
    attack: str
    targeted: bool
    beta: float | None = None
    result: dict | None = None  # complete result, or a pending record
    note: str = ""
    compute: bool = True  # False: only read a finished result (a model outside --models)

    @property
    def complete(self) -> bool:
        return bool(self.result) and self.result.get("status") == "complete"

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        r = self.result or {}
        if self.note:
            return f"pending ({self.note})"
        if r.get("stale"):
            return "pending (result file from other settings)"
        if r.get("chunks_done"):
            return f"pending ({r['chunks_done']}/{r['chunks_total']} chunks)"
        return "pending"


def fast_path_covers(fast: dict, dataset: str | None) -> bool:
    """Whether a section's ``fast_path`` applies to ``dataset`` (every dataset when it lists none)."""
    datasets = fast.get("datasets")
    return datasets is None or dataset in datasets


def cell_precision(sc: dict, model: str, attack: str, dataset: str | None = None) -> str:
    """The attack precision of a cell at a scale's settings: ``LIT_CAPS_PRECISION`` if set, else the
    section's ``fast_path`` precision for its models, attacks and (when it lists them) datasets, where
    the fast path passed its equality check (reports/fastpath_check*.md), else the section's
    ``precision`` (fp32)."""
    fast = sc.get("fast_path") or {}
    default = sc.get("precision", "fp32")
    if model in (fast.get("models") or ()) and attack in (fast.get("attacks") or ()) and fast_path_covers(fast, dataset):
        default = fast.get("precision", default)
    return precision_requested(None, default=default)


def resolve_device(device):
    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_cell(run: LoadedRun, cell: Cell, dataset: str, sc: dict, *, attack_seed: int, out_dir, device, only_report,
              progress, source: LoadedRun | None = None) -> dict:
    kw = {}
    if source is not None:
        kw = dict(source_model=source.model, source_threshold=source.threshold, source_checkpoint=source.checkpoint,
                  source_name=f"{source.name} seed {source.summary['seed']}")
    with torch.inference_mode(False):
        return evaluate_attack(
            run.model, run.test_set, cell.attack, dataset_name=dataset, model_name=run.name, targeted=cell.targeted,
            eps=None, beta=cell.beta, seed=attack_seed, n=sc["n"], threshold=run.threshold,
            val_distances=run.val_distances, settings=attack_settings(dataset, cell.attack, sc) or None,
            out_dir=out_dir, chunk_size=sc["chunk_size"], device=device, progress=progress, fpr=run.fpr,
            checkpoint=run.checkpoint, only_cached=only_report,
            compile=compile_requested(None, default=sc.get("compile", False)),
            precision=cell_precision(sc, run.name, cell.attack, dataset), **kw)


def label(cell: Cell) -> str:
    t = "targeted" if cell.targeted else "untargeted"
    b = f" beta={cell.beta:g}" if cell.beta is not None else ""
    return f"{cell.model} {cell.attack} {t}{b}"


def rates_text(s: dict) -> str:
    return (f"success {100 * s['success_rate']:.1f}%, undetected {100 * s['undetected_rate']:.1f}% "
            f"(best iterate {100 * s['best_undetected_rate']:.1f}%)")


def run_and_report(tag: str, cells: list[Cell], runs: dict, dataset: str, sc: dict, report, where, **kw):
    """Fill the cells (rewriting the report after each), write the final report, say where it is."""
    run_cells(tag, cells, runs, dataset, sc, on_update=report, **kw)
    df = report()
    print(f"[{tag}] report: {where}", flush=True)
    return df


def run_cells(tag: str, cells: list[Cell], runs: dict, dataset: str, sc: dict, *, attack_seed, out_dir, device,
               only_report, progress, sources: dict | None = None, on_update=None) -> None:
    """Fill every cell's result (computing the missing ones unless only_report), printing a line each."""
    total = len(cells)
    for i, cell in enumerate(cells, 1):
        run = runs.get(cell.model)
        if isinstance(run, str):  # no trained run: its fit command
            cell.note = f"no run: {run}"
            continue
        source = None
        if sources is not None:
            source = sources.get(cell.model)
            if isinstance(source, str):
                cell.note = f"no source run: {source}"
                continue
        head = f"[{tag} {i}/{total}] {label(cell)}"
        res = evaluate_cell(run, cell, dataset, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                        only_report=True, progress=False, source=source)
        if res.get("status") == "complete" or only_report or not cell.compute:
            cell.result = res
            if not only_report and cell.complete:
                print(f"{head}: cached ({rates_text(res['summary'])})", flush=True)
            continue
        print(f"{head}: running (n={sc['n']}, {res['settings']['attack_settings']})", flush=True)
        t0 = time.perf_counter()
        res = evaluate_cell(run, cell, dataset, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                        only_report=False, progress=progress, source=source)
        cell.result = res
        if res.get("status") == "complete":
            print(f"{head}: done in {dur(time.perf_counter() - t0)}: {rates_text(res['summary'])}", flush=True)
        if on_update is not None:
            on_update()
    done = sum(c.complete for c in cells)
    print(f"[{tag}] {done}/{total} cells complete" + ("" if done == total else f", {total - done} pending"), flush=True)


def load_runs(runs_root, dataset, models, seed, only_report, data_root, arch=None, what="") -> dict:
    """model -> LoadedRun, or (only_report) the fit command of a missing run; raises otherwise."""
    out = {}
    for m in models:
        a = arch.get(m) if isinstance(arch, dict) else arch
        try:
            out[m] = find_run(runs_root, dataset, m, seed, a)
        except RunNotFoundError as e:
            if not only_report:
                raise RunNotFoundError(f"{what}{e}") from None
            out[m] = fit_command(dataset, m, seed, a)
    return {m: (load_trained(s, data_root) if isinstance(s, dict) else s) for m, s in out.items()}


def worst(cells: list[Cell], key: str = "undetected_rate") -> Cell | None:
    done = [c for c in cells if c.complete]
    if not done:
        return None
    return max(done, key=lambda c: (c.result["summary"][key], c.result["summary"]["success_rate"], -(c.beta or 0)))


# -- R-PGD over beta (Fig. 9, Table 3 / Table 6, Fig. 2) ------------------------------------------------
def beta_series(cells: list[Cell]) -> tuple | None:
    """(success, undetected, best-iterate undetected) of the finished ``cells`` (one model and
    targeting) over beta, each ``(betas, rates[, ci_lo, ci_hi])`` as ``plot_rates_vs_beta`` takes
    them; None when none is finished."""
    cs = sorted((c for c in cells if c.complete), key=lambda c: c.beta)
    if not cs:
        return None
    b = [c.beta for c in cs]
    ss = [c.result["summary"] for c in cs]

    def one(k):
        return b, [s[f"{k}_rate"] for s in ss], [s[f"{k}_ci"][0] for s in ss], [s[f"{k}_ci"][1] for s in ss]

    return one("success"), one("undetected"), (b, [s["best_undetected_rate"] for s in ss])
