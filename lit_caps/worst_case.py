"""The attacker's worst case over beta: Table 3 (R-PGD) and Table 6 (R-FGSM, R-BIM, R-PGD).

The paper reports, for each (dataset, model, targeted), the defense-aware attack with the beta that
gives the highest undetected rate (Section 5.3, Table 3; Table 6 for all three R-attacks). Whether
an attacker gets through can hinge on a narrow band of beta: below it the detector's stage
dominates and the attack does not succeed, above it success comes with large reconstruction
distances (measured here on MNIST: CapsNet targeted undetected 27.5% at beta 0.4, 58.5% at 0.5,
40.0% at 0.6). So the search is

1. the scale's coarse grid (0, 0.1, ..., 1 at ``quick`` / ``paper``);
2. every other beta that has a finished result file with the same settings (W&B sweep agents,
   ``lit-caps sweep local``, ``lit-caps attack``: they all write the same result files);
3. ``refine`` levels of bisection around the worst beta of the grid and the earlier levels (not of
   the betas found in step 2, so that what a table computes never depends on what agents left
   behind): at level k the two neighbours at distance grid_step / 2**k (0.05, then 0.025 at
   ``quick``). The worst case is then taken over every beta of steps 1-3.

The report states the resolution reached at the worst beta (distance to its nearest evaluated
neighbours). Each (beta) cell is one result file of :func:`lit_caps.evaluation.evaluate_attack`
(resumable, reused), so an interrupted table rerun computes only what is missing and ends with the
same table; a table can be assembled from many agents' result files (copy or share ``results/``).

Models: :func:`ensure_run` trains (``lit-caps fit``'s config of the scale) or reuses the matching
run; a dataset that cannot be loaded (SVHN on a machine without it) gets rows that say why.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import experiments as ex
from . import store
from .config import recipe_env_prefix
from .experiments import Cell, LoadedRun
from .reports import DATASET_NAMES, paper_table, write_atomic

R_ATTACKS = ("r_fgsm", "r_bim", "r_pgd")
TABLE3_DATASETS = ("mnist", "fashion_mnist", "svhn")


# -- models --------------------------------------------------------------------------------------------
def data_unavailable(dataset: str, data_root: str | None = None) -> str | None:
    """None when ``dataset``'s test split loads, else the reason (the DataNotFoundError's message)."""
    from .data import CapsDataModule, DataNotFoundError

    try:
        CapsDataModule(name=dataset, root=data_root)._load_split(False)
    except DataNotFoundError as e:
        return str(e)
    return None


def scale_config(dataset: str, model: str, scale: str, seed: int = 0, overrides=()) -> dict:
    """The ``lit-caps fit`` config of a model at a scale (``quick`` / ``paper``: the default recipe)."""
    from .config import compose

    sc = ex.scale_settings(scale, "table3")
    return compose(model, dataset, train=sc["train"], seed=seed, overrides=list(sc["train_overrides"]) + list(overrides))


def ensure_run(dataset: str, model: str, scale: str, *, seed: int = 0, runs_root="runs", train: bool = True,
               overrides=(), data_root: str | None = None) -> LoadedRun | str:
    """The trained model of the scale's config: reused when its run folder holds a complete run,
    trained (or resumed) when ``train``, else the ``lit-caps fit`` command that makes it (a str)."""
    ov = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    return ensure_run_cfg(scale_config(dataset, model, scale, seed, ov), runs_root=runs_root, train=train,
                          data_root=data_root, shown_overrides=overrides)


def ensure_run_cfg(cfg: dict, *, runs_root="runs", train: bool = True, data_root: str | None = None,
                   shown_overrides=()) -> LoadedRun | str:
    """:func:`ensure_run` for a composed ``lit-caps fit`` config."""
    from .config import run_dir_for
    from .train import fit

    run = run_dir_for(cfg, runs_root)
    sp = run / "summary.json"
    summary = json.loads(sp.read_text()) if sp.is_file() else {}
    done = summary.get("complete") and summary.get("epochs") == cfg["train"]["max_epochs"]
    card = store.card_for(run.name, cfg["data"]["name"]) if not done and not sp.is_file() else None
    if card is not None:  # no local run: the committed model of this config (same run name = same hash)
        csp = card / "summary.json"
        return ex.load_trained(ex.located(csp, json.loads(csp.read_text())), data_root)
    if not done:
        model, dataset, seed = cfg["model"], cfg["data"]["name"], cfg["seed"]
        if not train:
            prof = cfg.get("train_profile", "default")
            return (f"lit-caps fit --model {model} --data {dataset} --seed {seed}"
                    + (f" --train {prof}" if prof != "default" else "") + "".join(f" {o}" for o in shown_overrides))
        print(f"[lit-caps] training {model} on {dataset} (seed {seed}, train profile {cfg.get('train_profile')}) "
              f"-> {run}", flush=True)
        fit(cfg, runs_root=runs_root)
    s = json.loads(sp.read_text())
    s.update(run_dir=str(run), checkpoint=str(run / "checkpoints" / "last.ckpt"), summary_path=str(sp))
    return ex.load_trained(s, data_root)


# -- the search ------------------------------------------------------------------------------------------
_BETA_RE = re.compile(r"-beta([0-9.e+-]+)-")


def discover_betas(out_dir, dataset: str, model: str, attack: str, targeted: bool, eps: float, n: int,
                   seed: int) -> list[float]:
    """Betas with a result file of this (attack, targeted, eps, n, seed) under ``out_dir`` (white-box
    only): those written by sweep agents or ``lit-caps attack``. Whether their settings match is
    checked when they are read (a file from other settings is not used)."""
    from .evaluation import result_name

    pat = result_name(attack, targeted, eps, n, seed, beta=0.123456789).replace("beta0.123457", "beta*")
    out = []
    for p in (Path(out_dir) / dataset / model).glob(pat + ".json"):
        m = _BETA_RE.search(p.name)
        if m:
            try:
                out.append(round(float(m.group(1)), 6))
            except ValueError:
                continue
    return sorted(set(out))


@dataclass
class Search:
    """The beta search of one (dataset, model, attack, targeted)."""

    dataset: str
    model: str
    attack: str
    targeted: bool
    cells: dict = field(default_factory=dict)  # beta -> Cell
    grid: tuple = ()
    refine: int = 0
    levels_done: int = 0
    note: str = ""
    searched: set = field(default_factory=set)  # the grid and the refinement betas on the search's path

    @property
    def pending(self) -> list[float]:
        """Betas on the search's path without a finished result (the grid, then the refinement
        levels as far as the finished cells determine them)."""
        return sorted(b for b in self.searched if not (b in self.cells and self.cells[b].complete))

    @property
    def complete(self) -> bool:
        return bool(self.searched) and not self.pending

    @property
    def worst(self) -> Cell | None:
        return ex._worst(list(self.cells.values()))

    @property
    def worst_best_iterate(self) -> Cell | None:
        return ex._worst(list(self.cells.values()), "best_undetected_rate")

    def done(self) -> list[Cell]:
        return sorted((c for c in self.cells.values() if c.complete), key=lambda c: c.beta)

    def resolution(self) -> float | None:
        """Largest distance from the worst beta to its nearest evaluated neighbour on either side
        (within [0, 1]): the worst case is resolved to +- this."""
        w = self.worst
        if w is None:
            return None
        bs = [c.beta for c in self.done()]
        lo = [w.beta - b for b in bs if b < w.beta]
        hi = [b - w.beta for b in bs if b > w.beta]
        gaps = ([min(lo)] if lo else []) + ([min(hi)] if hi else [])
        return max(gaps) if gaps else None


def _grid_step(grid) -> float:
    g = sorted(set(grid))
    return min((b - a for a, b in zip(g, g[1:])), default=1.0)


def search_beta(run, search: Search, sc: dict, *, out_dir, device, attack_seed: int, only_report: bool,
                progress: bool, tag: str = "") -> Search:
    """Fill ``search``: the grid, the discovered betas, then ``sc['refine']`` refinement levels."""
    ds, m, a, t = search.dataset, search.model, search.attack, search.targeted
    if not isinstance(run, LoadedRun):
        search.note = f"no run: {run}"
        return search

    def ensure(beta: float) -> Cell:
        beta = round(float(beta), 6)
        if beta in search.cells and search.cells[beta].complete:
            return search.cells[beta]
        cell = search.cells.get(beta) or Cell(m, a, t, beta)
        search.cells[beta] = cell
        res = ex._evaluate(run, cell, ds, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                           only_report=True, progress=False)
        if res.get("status") != "complete" and not only_report:
            head = f"[{tag}] {ex._label(cell)}"
            print(f"{head}: running (n={sc['n']}, {res['settings']['attack_settings']})", flush=True)
            t0 = time.perf_counter()
            res = ex._evaluate(run, cell, ds, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                               only_report=False, progress=progress)
            if res.get("status") == "complete":
                print(f"{head}: done in {ex._dur(time.perf_counter() - t0)}: {ex._rates_text(res['summary'])}",
                      flush=True)
        cell.result = res
        return cell

    search.grid = tuple(round(float(b), 6) for b in sc["betas"])
    search.refine = int(sc.get("refine", 0))
    for b in search.grid:
        ensure(b)
    eps = next((c.result["settings"]["eps"] for c in search.cells.values() if c.result and c.result.get("settings")),
               None)
    if eps is not None:  # read (never compute) the other betas that agents / sweeps finished
        for b in discover_betas(out_dir, ds, m, a, t, eps, sc["n"], attack_seed):
            if b not in search.cells:
                c = Cell(m, a, t, b)
                c.result = ex._evaluate(run, c, ds, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                                        only_report=True, progress=False)
                if c.complete:  # a file from other settings is not part of this search
                    search.cells[b] = c
    # the refinement path follows the grid and the earlier refinement levels only, never the
    # discovered betas, so that the set of cells a table computes does not depend on what other
    # agents left behind: a rerun computes nothing new and writes the same table
    searched = search.searched = set(search.grid)
    step = _grid_step(search.grid)
    for level in range(1, search.refine + 1):
        w = ex._worst([c for b, c in search.cells.items() if b in searched])
        if w is None:
            break
        step /= 2
        for b in (w.beta - step, w.beta + step):
            if -1e-9 <= b <= 1 + 1e-9:
                b = round(min(1.0, max(0.0, b)), 6)
                searched.add(b)
                ensure(b)
        if only_report:
            for b in [b for b, c in search.cells.items() if not c.complete and b not in search.grid]:
                del search.cells[b]  # refinement betas only show when computed
        search.levels_done = level
    return search


# -- the tables --------------------------------------------------------------------------------------------
def _paper(name: str) -> dict:
    df = paper_table(name)
    return {(r.dataset, r.model, r.attack, bool(r.targeted)): (float(r.success_rate), float(r.undetected_rate))
            for r in df.itertuples()}


def _order(rows: list[dict], key: str) -> str:
    ok = [r for r in rows if r.get(key) is not None]
    if len(ok) < len(rows) or not ok:
        return "-"
    s = sorted(ok, key=lambda r: r[key])
    return " < ".join(f"{ex._model_name(r['model'])} ({r[key]:.1f})" for r in s)


def _wandb_log(name: str, scale: str, df: pd.DataFrame, figures: dict, series: dict, wandb_dir) -> None:
    """One offline (unless a key is set) W&B run holding the table, the figures and line plots."""
    try:
        import wandb

        from .logging import ensure_wandb_mode

        mode = ensure_wandb_mode()
        wandb_dir = os.environ.get("WANDB_DIR") or wandb_dir  # the user's WANDB_DIR wins, as in W&B
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)  # else wandb falls back to a temp folder
        run = wandb.init(project="lit_caps", job_type=name, name=f"{name}-{scale}", mode=mode,
                         dir=str(wandb_dir), config={"table": name, "scale": scale},
                         reinit="finish_previous")
        run.log({f"{name}/table": wandb.Table(dataframe=df.astype(str))})
        for key, png in figures.items():
            if Path(png).is_file():
                run.log({f"{name}/{key}": wandb.Image(str(png))})
        for key, (xs, ys, keys, title, xname) in series.items():
            run.log({f"{name}/{key}": wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=title, xname=xname)})
        run.finish()
    except Exception as e:  # the report on disk is the record; say why W&B has no copy
        print(f"[{name}] W&B logging failed ({type(e).__name__}: {e}); the report files are complete", flush=True)


def worst_case_table(name: str, attacks: tuple, datasets=TABLE3_DATASETS, scale: str = "quick",
                     runs_root="runs", out_dir="results", report_dir="reports", models=ex.MODELS, seed: int = 0,
                     only_report: bool = False, *, train: bool = True, refine: int | None = None,
                     betas=None, attack_seed: int = 0, device: str | None = None, data_root: str | None = None,
                     progress: bool = False, wandb_log: bool = True, train_overrides=()) -> pd.DataFrame:
    """Worst case over beta of ``attacks`` for every dataset x model x targeted -> the report
    ``<report_dir>/<name>[_<scale>].{md,csv}`` (no suffix at the paper scale) and figures
    ``<report_dir>/figures/{fig9,fig2}_<name>_<dataset>_<scale>.png``. See the module docstring."""
    from .plots import plot_rates_vs_beta, plot_undetected_vs_fpr

    t_start = time.perf_counter()
    sc = ex.scale_settings(scale, "table3")
    if refine is not None:
        sc["refine"] = int(refine)
    if betas is not None:
        sc["betas"] = tuple(float(b) for b in betas)
    device = ex._device(device)
    res_dir = ex.results_dir(out_dir, scale)
    stem = name if scale == "paper" else f"{name}_{scale}"
    paper_name = {"table3": "table3_rpgd", "table6": "table6_whitebox_reconstructive"}[name]
    paper = _paper(paper_name)
    fig_dir = Path(report_dir) / "figures"
    runs: dict = {}
    unavailable: dict = {}
    searches: list[Search] = []
    figures: dict = {}

    def report() -> pd.DataFrame:
        return _report(name, stem, scale, sc, datasets, models, attacks, runs, unavailable, searches, paper,
                       report_dir, device, time.perf_counter() - t_start, figures, train_overrides)

    for ds in datasets:
        why = data_unavailable(ds, data_root)
        if why is not None:
            unavailable[ds] = why
            print(f"[{name} {scale}] {ds}: not available: {why.splitlines()[0]}", flush=True)
            report()
            continue
        for m in models:
            try:
                runs[(ds, m)] = ensure_run(ds, m, scale, seed=seed, runs_root=runs_root, train=train and not only_report,
                                           overrides=train_overrides, data_root=data_root)
            except Exception as e:  # noqa: BLE001: a failed training becomes a row that says so
                if not only_report:
                    raise
                runs[(ds, m)] = f"{type(e).__name__}: {e}"
        ds_searches = [Search(ds, m, a, t) for a in attacks for t in (True, False) for m in models]
        searches.extend(ds_searches)
        for s in ds_searches:
            search_beta(runs[(ds, s.model)], s, sc, out_dir=res_dir, device=device, attack_seed=attack_seed,
                        only_report=only_report, progress=progress, tag=f"{name} {ds}/{scale}")
            report()
        figures.update(_figures(name, ds, scale, models, attacks, [s for s in ds_searches], fig_dir,
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
                        [ex._model_name(s.model) for s in ss], f"{ds}: {kind} {attacks[-1]} undetected % vs beta",
                        "beta")
        res_dir.mkdir(parents=True, exist_ok=True)
        _wandb_log(name, scale, df, figures, series, res_dir)
    return df


def _figures(name, ds, scale, models, attacks, searches, fig_dir, plot_rates_vs_beta, plot_undetected_vs_fpr) -> dict:
    out = {}
    a = attacks[-1]  # r_pgd
    dname = DATASET_NAMES.get(ds, ds)
    for t in (True, False):
        kind = "targeted" if t else "untargeted"
        succ, und, best, curves = {}, {}, {}, {}
        for s in searches:
            if s.attack != a or s.targeted != t or not s.done():
                continue
            mn = ex._model_name(s.model)
            succ[mn], und[mn], best[mn] = ex.beta_series(s.done())
            w = s.worst
            f = w.result["summary"].get("undetected_vs_fpr") if w else None
            if f:
                curves[f"{mn} (beta={w.beta:g})"] = (f["fpr"], f["undetected_rate"])
        if succ:
            p9 = fig_dir / f"fig9_{name}_{ds}_{kind}_{scale}.png"
            plot_rates_vs_beta(succ, und, p9, f"{kind.capitalize()} {ex.ATTACK_NAMES[a]} on {dname} ({scale})",
                               best_undetected=best)
            out[f"{ds}/fig9_{kind}"] = p9
        if curves:
            p2 = fig_dir / f"fig2_{name}_{ds}_{kind}_{scale}.png"
            plot_undetected_vs_fpr(curves, p2, f"{dname}: worst-case {kind} {ex.ATTACK_NAMES[a]} ({scale})")
            out[f"{ds}/fig2_{kind}"] = p2
    return out


def _row(s: Search, run, paper: dict, which: str = "worst") -> dict:
    w = s.worst if which == "worst" else s.worst_best_iterate
    c = w or Cell(s.model, s.attack, s.targeted, None, note=s.note or "no beta finished")
    ref = paper.get((s.dataset, s.model, s.attack, s.targeted))
    r = ex._row("table3", s.dataset, "", c, run, ref)
    n_done = len(s.done())
    res = s.resolution()
    r.update(row_kind=which, betas_done=n_done, betas_tried=", ".join(f"{c.beta:g}" for c in s.done()),
             beta_resolution=None if res is None else round(res, 6), refine_levels=s.levels_done)
    if isinstance(run, LoadedRun):
        r["train_wall_s"] = run.summary.get("train_wall_s")
        r["test_error_pct"] = None if run.summary.get("test_error") is None else round(100 * run.summary["test_error"], 2)
    total = sum(x.result["run"]["wall_time_s"] for x in s.done())
    r["search_wall_time_s"] = round(total, 1)
    if w is not None and not s.complete:
        r["status"] = "partial: betas " + ", ".join(f"{b:g}" for b in s.pending) + " pending"
    return r


def _report(name, stem, scale, sc, datasets, models, attacks, runs, unavailable, searches, paper, report_dir, device,
            elapsed, figures, train_overrides) -> pd.DataFrame:
    rows, beta_rows = [], []
    for ds in datasets:
        if ds in unavailable:
            for a in attacks:
                for t in (True, False):
                    for m in models:
                        ref = paper.get((ds, m, a, t))
                        rows.append({"table": name, "dataset": ds, "scale": scale, "model": m, "attack": a,
                                     "targeted": t, "row_kind": "worst", "status": "not available",
                                     "reason": unavailable[ds].splitlines()[0],
                                     "paper_success_pct": ref[0] if ref else None,
                                     "paper_undetected_pct": ref[1] if ref else None})
            continue
        for s in (s for s in searches if s.dataset == ds):
            run = runs.get((ds, s.model))
            r = _row(s, run, paper)
            r["scale"] = scale
            r["table"] = name
            rows.append(r)
            for c in s.done():
                br = ex._row(name, ds, scale, c, run, paper.get((ds, s.model, s.attack, s.targeted)))
                br["row_kind"] = "beta"
                beta_rows.append(br)
    title = {"table3": "Table 3: defense-aware R-PGD, worst case over beta",
             "table6": "Table 6: defense-aware R-FGSM, R-BIM, R-PGD, worst case over beta"}[name]
    ds_arg = "" if tuple(datasets) == TABLE3_DATASETS else " ".join(datasets)
    cmd = f"make reproduce-{name} SCALE={scale}" + (f" DATASETS='{ds_arg}'" if ds_arg else "")
    red = ex.reductions(datasets[0] if datasets else "mnist", scale, "table3", sc["betas"])
    n_done = sum(1 for r in rows if r.get("success_pct") is not None and r.get("status") == "complete")
    n_partial = sum(1 for r in rows if r.get("success_pct") is not None and r.get("status") != "complete")
    md = [f"# {title}", "",
          f"Generated by `{recipe_env_prefix()}{cmd}` (= `lit-caps reproduce {name} --scale {scale}" + (f" --data {ds_arg}" if ds_arg else "")
          + "`; resumable: a rerun reuses the "
          f"trained models and the finished result files and writes the same table). {n_done}/{len(rows)} cells "
          "measured" + (f", {n_partial} *partial* (the worst case over the betas finished so far; the cell's "
                        "`status` lists the betas of its search still pending)" if n_partial else "")
          + "; the others say why (*pending*, *not available*), never a number.", ""]
    md += ["**Settings.** " + (f"N = {sc['n']} test images (the same seeded subset for every cell), "
                               f"{ex.ATTACK_NAMES[attacks[-1]]} iterations per dataset: "
                               + ", ".join(f"{DATASET_NAMES.get(d, d)} {ex._iterations(d, sc.get('steps'))}"
                                           for d in datasets)
                               + f" (paper, Appendix C: 1000 / 500 / 200), eps 0.3 / 0.1 / 0.1, step 0.01; attack seed "
                               f"(subset, targets) 0; models trained with the `{sc['train']}` profile"
                               + (f" + {' '.join(train_overrides)}" if train_overrides else "") + ", seed in the model table."),
           ""]
    if red:
        md += ["**Reduced from the paper's settings** at this scale (`SCALE=quick` / `smoke`; `SCALE=paper` uses "
               "the paper's):", ""] + [f"- {x}" for x in red] + [""]
    grid = ", ".join(f"{b:g}" for b in sc["betas"])
    md += [f"**Beta search.** Grid {grid}, plus every beta with a finished result file of the same settings "
           f"(W&B sweep agents, `lit-caps sweep local`), then {sc.get('refine', 0)} refinement level(s): the two "
           f"neighbours of the current worst beta at half the previous spacing ({_grid_step(sc['betas']):g} / 2, / 4, "
           "...). `resolution`: the distance from the worst beta to its nearest evaluated neighbours (the worst case "
           "is known to +- that). Worst = the highest undetected rate; ties go to the higher success rate.", "",
           "Rates in % of all N attacked images (Section 4.3): success = f(x') = target (targeted) or != label "
           "(untargeted); undetected = successful and d(x') <= threshold (95th percentile of the model's validation "
           "distances: 5% FPR). 95% Wilson intervals in brackets. `diff` = ours - paper, in points. Best-iterate: "
           "some iterate (not only the last) was successful and undetected.", ""]
    md += ["## Success rate / undetected rate (%): ours (paper)", ""]
    head = "| dataset | model | targeted S/R | beta | untargeted S/R | beta |"
    multi = len(attacks) > 1
    if multi:
        head = "| dataset | model | attack | targeted S/R | beta | untargeted S/R | beta |"
    md += [head, "|" + "---|" * (head.count("|") - 1)]
    by = {(r["dataset"], r["model"], r["attack"], r["targeted"]): r for r in rows}
    for ds in datasets:
        for m in models:
            for a in attacks:
                cells = []
                for t in (True, False):
                    r = by.get((ds, m, a, t), {})
                    if r.get("success_pct") is None:
                        st = r.get("status", "pending")
                        cells += [f"{st} ({ex._paper_pair(r) if 'paper_success_pct' in r else '-'})", ""]
                    else:
                        cells += [f"**{r['success_pct']:.1f}/{r['undetected_pct']:.1f}** ({ex._paper_pair(r)})",
                                  f"{r['beta']:g}" + ("" if r.get("status") == "complete" else " *partial*")]
                md.append(f"| {DATASET_NAMES.get(ds, ds)} | {ex._model_name(m)} |" + (f" {ex.ATTACK_NAMES[a]} |" if multi else "")
                          + " " + " | ".join(cells) + " |")
    for ds in datasets:
        if ds in unavailable:
            md += ["", f"**{DATASET_NAMES.get(ds, ds)}: not available** on this machine, so its rows hold no numbers "
                   "(the paper's are shown for reference). The data module said:", "", "```",
                   unavailable[ds].rstrip(), "```"]
    md += ["", "## Agreement with the paper", ""]
    md += _agreement(rows, datasets, attacks)
    md += ["", "## Worst case per cell, with intervals and settings", "",
           "| dataset | model | attack | targeted | worst beta | resolution | betas tried | success % [95% CI] | paper | "
           "diff | undetected % [95% CI] | paper | diff | best-iterate undetected % (its worst beta) | ROC-AUC | N | "
           "iterations | epochs | model seed | config | search wall time | status |",
           "|" + "---|" * 22]
    for r in rows:
        if r.get("success_pct") is None:
            md.append(f"| {DATASET_NAMES.get(r['dataset'], r['dataset'])} | {ex._model_name(r['model'])} | "
                      f"{ex.ATTACK_NAMES[r['attack']]} | {'yes' if r['targeted'] else 'no'} | {r['status']} |"
                      + " |" * 17)
            continue
        bi = next((s for s in searches if (s.dataset, s.model, s.attack, s.targeted) ==
                   (r["dataset"], r["model"], r["attack"], r["targeted"])), None)
        wb = bi.worst_best_iterate if bi else None
        bis = f"{100 * wb.result['summary']['best_undetected_rate']:.1f} ({wb.beta:g})" if wb else "-"
        md.append(
            f"| {DATASET_NAMES.get(r['dataset'], r['dataset'])} | {ex._model_name(r['model'])} | "
            f"{ex.ATTACK_NAMES[r['attack']]} | {'yes' if r['targeted'] else 'no'} | {r['beta']:g} | "
            f"{'' if r['beta_resolution'] is None else '+-' + format(r['beta_resolution'], 'g')} | {r['betas_done']} | "
            f"{ex._ci(r, 'success')} | {ex._num(r['paper_success_pct'], '{:g}')} | {ex._diff(r['diff_success_pct'])} | "
            f"{ex._ci(r, 'undetected')} | {ex._num(r['paper_undetected_pct'], '{:g}')} | "
            f"{ex._diff(r['diff_undetected_pct'])} | {bis} | {ex._num(r.get('roc_auc'), '{:.3f}')} | {r['n']} | "
            f"{r['steps']} | {r.get('epochs', '')} | {r.get('model_seed', '')} | `{r.get('arch', '')}` "
            f"({r.get('config_hash', '')}) | {ex._dur(r['search_wall_time_s'])} | {r['status']} |")
    figs = sorted(figures.items())
    if figs:
        md += ["", "## Figures", ""] + [f"- `{k}`: [{Path(p).name}](figures/{Path(p).name})" for k, p in figs]
        md += ["", "Fig. 9: success and undetected rate vs beta (every beta tried; shaded: 95% CI). Fig. 2: undetected "
               "rate vs FPR (threshold percentile) of each model's worst-case beta."]
    md += ["", "## Models", "", "| dataset | model | run | seed | arch | epochs | test error % | train wall time | "
           "threshold (FPR) | config hash | model hash |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds in datasets:
        if ds in unavailable:
            md.append(f"| {DATASET_NAMES.get(ds, ds)} | all | not available (see above) |" + " |" * 8)
            continue
        for m in models:
            run = runs.get((ds, m))
            if not isinstance(run, LoadedRun):
                md.append(f"| {DATASET_NAMES.get(ds, ds)} | {ex._model_name(m)} | not trained: `{run}` |" + " |" * 8)
                continue
            s = run.summary
            err = s.get("test_error")
            md.append(f"| {DATASET_NAMES.get(ds, ds)} | {ex._model_name(m)} | `{Path(s['run_dir']).name}` | {s.get('seed')} | "
                      f"{s.get('arch')} | {s.get('epochs')} | {ex._num(None if err is None else 100 * err, '{:.2f}')} | "
                      f"{ex._dur(s.get('train_wall_s') or 0)} | {run.threshold:.4f} ({run.fpr:g}) | "
                      f"{s.get('config_hash')} | {run.model_hash} |")
    footer = ex._footer(beta_rows, device)  # ["", attack wall time and devices, date]
    # this invocation's time belongs to the generation line: the only line a rewrite may change
    md += ["", footer[1], footer[2][:-1] + f" (this invocation took {ex._dur(elapsed)})."]
    df = pd.DataFrame(rows + beta_rows)
    out = Path(report_dir)
    write_atomic(out / f"{stem}.csv", df.to_csv(index=False))
    write_atomic(out / f"{stem}.md", "\n".join(md) + "\n")
    return df


def _agreement(rows: list[dict], datasets, attacks) -> list[str]:
    """Plain statements computed from the rows: ordering of the models by undetected rate (ours,
    paper) and the gap between CapsNet and the better-defended CNN."""
    out = []
    for ds in datasets:
        for a in attacks:
            for t in (True, False):
                rs = [r for r in rows if r["dataset"] == ds and r["attack"] == a and r["targeted"] == t]
                if not rs or any(r.get("success_pct") is None for r in rs):
                    why = rs[0]["status"] if rs and rs[0].get("status", "").startswith("not available") else "pending"
                    out.append(f"- {DATASET_NAMES.get(ds, ds)}, {'targeted' if t else 'untargeted'} "
                               f"{ex.ATTACK_NAMES[a]}: {why}.")
                    continue
                ours = _order(rs, "undetected_pct")
                theirs = _order(rs, "paper_undetected_pct")
                same = [r["model"] for r in sorted(rs, key=lambda r: r["undetected_pct"])] == \
                    [r["model"] for r in sorted(rs, key=lambda r: r["paper_undetected_pct"] or 0)]
                caps = next((r for r in rs if r["model"] == "capsnet"), None)
                cnn = [r for r in rs if r["model"] != "capsnet"]
                gap = ""
                if caps and cnn and caps.get("paper_undetected_pct") is not None:
                    lo = min(cnn, key=lambda r: r["undetected_pct"])
                    lo_p = min(cnn, key=lambda r: r["paper_undetected_pct"])
                    gap = (f" Lowest CNN minus CapsNet: ours {lo['undetected_pct'] - caps['undetected_pct']:+.1f} points "
                           f"({ex._model_name(lo['model'])}), paper "
                           f"{lo_p['paper_undetected_pct'] - caps['paper_undetected_pct']:+.1f} "
                           f"({ex._model_name(lo_p['model'])}).")
                low = min(rs, key=lambda r: r["undetected_pct"])["model"]
                low_p = min(rs, key=lambda r: r["paper_undetected_pct"] if r["paper_undetected_pct"] is not None
                            else float("inf"))["model"]
                out.append(f"- {DATASET_NAMES.get(ds, ds)}, {'targeted' if t else 'untargeted'} {ex.ATTACK_NAMES[a]}: "
                           f"undetected, lowest first: ours {ours}; paper {theirs}. Same ordering: "
                           f"{'yes' if same else 'no'}; lowest undetected rate: ours {ex._model_name(low)}, paper "
                           f"{ex._model_name(low_p)} ({'agree' if low == low_p else 'differ'}).{gap}")
    return out


def table3(datasets=TABLE3_DATASETS, scale: str = "quick", **kw) -> pd.DataFrame:
    """Table 3: targeted and untargeted R-PGD, worst case over beta (see :func:`worst_case_table`)."""
    return worst_case_table("table3", ("r_pgd",), datasets, scale, **kw)


def table6(datasets=TABLE3_DATASETS, scale: str = "quick", **kw) -> pd.DataFrame:
    """Table 6: R-FGSM, R-BIM and R-PGD, worst case over beta each (R-PGD cells shared with Table 3)."""
    return worst_case_table("table6", R_ATTACKS, datasets, scale, **kw)


# -- one cell, for sweep agents ---------------------------------------------------------------------------
def run_cell(dataset: str, model: str, attack: str, targeted: bool, beta: float | None, scale: str = "quick", *,
             seed: int = 0, attack_seed: int = 0, runs_root="runs", out_dir="results", train: bool = False,
             device: str | None = None, data_root: str | None = None, progress: bool = True,
             wandb_log: bool = True) -> dict:
    """One attack cell at a scale's settings (R-attacks: Table 3's, others: Table 1's): the result
    file that the tables read, a W&B run (offline unless a key is set; under ``wandb agent`` it is
    the sweep's run) with ``success_rate`` / ``undetected_rate`` / ``best_undetected_rate`` /
    ``roc_auc`` in its summary, the attack settings in its config, the undetected rate over ``fpr``
    (``undetected_at_fpr``, ``fpr`` its x-axis), its files under ``<results dir>/wandb`` (or
    ``$WANDB_DIR``) and its id
    keyed by the model run and the result's settings (outside sweeps), and, when
    ``LIT_CAPS_SWEEP_METRICS`` is set (``lit-caps sweep local``), those metrics as JSON there.
    Agents running the same cell into one results folder split its chunks (claims). Returns the
    result's summary."""
    table = "table3" if attack.startswith("r_") else "table1"
    sc = ex.scale_settings(scale, table)
    run = ensure_run(dataset, model, scale, seed=seed, runs_root=runs_root, train=train, data_root=data_root)
    if isinstance(run, str):
        raise ex.RunNotFoundError(f"no trained {model} on {dataset} (seed {seed}) under {runs_root}/ for scale "
                                  f"{scale}; train it with:\n    {run}\n(or pass --train)")
    device = ex._device(device)
    cell = Cell(model, attack, bool(targeted), None if beta is None else float(beta))
    res_dir = ex.results_dir(out_dir, scale)
    t0 = time.perf_counter()
    res = ex._evaluate(run, cell, dataset, sc, attack_seed=attack_seed, out_dir=res_dir,
                       device=device, only_report=False, progress=progress)
    if res.get("status") != "complete":
        raise RuntimeError(f"{res['path']}: chunks {res.get('missing_chunks')} are still missing (held by other "
                           f"processes that stopped?); run the same command again to finish them")
    s = res["summary"]
    metrics = {k: s[k] for k in ("success_rate", "undetected_rate", "best_undetected_rate", "clean_accuracy",
                                 "roc_auc", "mean_linf", "mean_l2") if k in s}
    metrics.update(n=s["n"], wall_time_s=round(time.perf_counter() - t0, 2), result=res["path"])
    mpath = os.environ.get("LIT_CAPS_SWEEP_METRICS")
    if mpath:
        from .io import write_json_atomic

        write_json_atomic(mpath, metrics)
    if wandb_log:
        try:
            import wandb

            from .logging import ensure_wandb_mode

            run_name = Path(run.summary.get("run_dir") or Path(run.checkpoint).parent).name
            config = {"data": dataset, "model": model, "attack": attack, "targeted": bool(targeted), "beta": beta,
                      "scale": scale, "seed": seed, "attack_seed": attack_seed, "model_run": run_name,
                      "result": res["name"], "settings_hash": res["settings_hash"], **res["settings"]}
            kw = {}
            if not (os.environ.get("WANDB_SWEEP_ID") or os.environ.get("WANDB_RUN_ID")):  # a sweep names its runs
                rid = f"attack-{run_name}-{res['name']}-{res['settings_hash'][:8]}"
                kw = dict(id=re.sub(r"[^A-Za-z0-9_-]", "_", rid), resume="allow")
            wdir = Path(os.environ.get("WANDB_DIR") or res_dir)  # under --out unless the user set WANDB_DIR
            wdir.mkdir(parents=True, exist_ok=True)
            wr = wandb.init(project=os.environ.get("WANDB_PROJECT", "lit_caps"), job_type="attack",
                            mode=ensure_wandb_mode(), config=config, reinit="finish_previous", dir=str(wdir),
                            name=f"{dataset}/{run_name}/{res['name']}",
                            group=os.environ.get("WANDB_RUN_GROUP") or f"{dataset}-{model}-{attack}", **kw)
            f = s.get("undetected_vs_fpr") or {}
            if f:
                wr.define_metric("fpr")
                wr.define_metric("undetected_at_fpr", step_metric="fpr")
                for a, b in zip(f["fpr"], f["undetected_rate"]):
                    if b is not None:
                        wr.log({"fpr": a, "undetected_at_fpr": b})
                tab = wandb.Table(data=[[100 * a, 100 * b] for a, b in zip(f["fpr"], f["undetected_rate"])
                                        if b is not None], columns=["fpr_pct", "undetected_pct"])
                wr.log({"undetected_vs_fpr": wandb.plot.line(tab, "fpr_pct", "undetected_pct",
                                                             title="undetected rate vs FPR")})
            wr.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            wr.finish()
        except Exception as e:  # noqa: BLE001: the result file is the record
            print(f"[lit-caps attack] W&B logging failed ({type(e).__name__}: {e}); result: {res['path']}", flush=True)
    return dict(s, **metrics)
