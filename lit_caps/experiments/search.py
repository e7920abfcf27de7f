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
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..evaluation import find_results
from ..runs import LoadedRun
from ..reporting.markdown import dur
from .cells import Cell, cell_precision, evaluate_cell, label, rates_text, worst


def discover_betas(out_dir, dataset: str, model: str, attack: str, targeted: bool, eps: float, n: int,
                   seed: int, precision: str = "fp32") -> list[float]:
    """Betas with a result file of this (attack, targeted, eps, n, seed) under ``out_dir`` (white-box
    only): those written by sweep agents or ``lit-caps attack``. Whether their settings match is
    checked when they are read (a file from other settings is not used)."""
    found = find_results(out_dir, dataset, model, attack=attack, targeted=targeted, eps=eps, n=n, seed=seed,
                         precision=precision)
    return sorted({round(float(b), 6) for b, _ in found if b is not None})


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
        return worst(list(self.cells.values()))

    @property
    def worst_best_iterate(self) -> Cell | None:
        return worst(list(self.cells.values()), "best_undetected_rate")

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


def grid_step(grid) -> float:
    g = sorted(set(grid))
    return min((b - a for a, b in zip(g, g[1:])), default=1.0)


def search_beta(run, search: Search, sc: dict, *, out_dir, device, attack_seed: int, only_report: bool,
                progress: bool, tag: str = "", source: LoadedRun | None = None) -> Search:
    """Fill ``search``: the grid, the discovered betas, then ``sc['refine']`` refinement levels.
    ``source``: a black-box search (the attack crafted on ``source``, measured on ``run``); it reads no
    other betas (step 2 is white-box only)."""
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
        res = evaluate_cell(run, cell, ds, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                           only_report=True, progress=False, source=source)
        if res.get("status") != "complete" and not only_report:
            head = f"[{tag}] {label(cell)}"
            print(f"{head}: running (n={sc['n']}, {res['settings']['attack_settings']})", flush=True)
            t0 = time.perf_counter()
            res = evaluate_cell(run, cell, ds, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                               only_report=False, progress=progress, source=source)
            if res.get("status") == "complete":
                print(f"{head}: done in {dur(time.perf_counter() - t0)}: {rates_text(res['summary'])}",
                      flush=True)
        cell.result = res
        return cell

    search.grid = tuple(round(float(b), 6) for b in sc["betas"])
    search.refine = int(sc.get("refine", 0))
    for b in search.grid:
        ensure(b)
    eps = next((c.result["settings"]["eps"] for c in search.cells.values() if c.result and c.result.get("settings")),
               None)
    if eps is not None and source is None:  # read (never compute) the other betas that agents / sweeps finished
        precision = cell_precision(sc, m, a, ds)
        for b in discover_betas(out_dir, ds, m, a, t, eps, sc["n"], attack_seed, precision):
            if b not in search.cells:
                c = Cell(m, a, t, b)
                c.result = evaluate_cell(run, c, ds, sc, attack_seed=attack_seed, out_dir=out_dir, device=device,
                                        only_report=True, progress=False)
                if c.complete:  # a file from other settings is not part of this search
                    search.cells[b] = c
    # the refinement path follows the grid and the earlier refinement levels only, never the
    # discovered betas, so that the set of cells a table computes does not depend on what other
    # agents left behind: a rerun computes nothing new and writes the same table
    searched = search.searched = set(search.grid)
    step = grid_step(search.grid)
    for level in range(1, search.refine + 1):
        w = worst([c for b, c in search.cells.items() if b in searched])
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
