"""One attack cell at a scale's settings, for ``lit-caps attack`` and W&B sweep agents (what they
run one per GPU): the result file the tables read, and the rates as a W&B run."""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..attacks import ADAPTIVE
from ..io import write_json_atomic
from ..runs import RunNotFoundError, ensure_run
from ..tracking import log_attack_cell
from .adaptive import cell as adaptive_cell
from .cells import Cell, evaluate_cell, resolve_device, results_dir, scale_settings


def run_cell(dataset: str, model: str, attack: str, targeted: bool, beta: float | None, scale: str = "quick", *,
             seed: int = 0, attack_seed: int = 0, runs_root="runs", out_dir="results", train: bool = False,
             device: str | None = None, data_root: str | None = None, progress: bool = True,
             wandb_log: bool = True, adaptive_overrides: dict | None = None) -> dict:
    """One attack cell at a scale's settings (R-attacks: Table 3's, others: Table 1's): the result
    file that the tables read, a W&B run (offline unless a key is set; under ``wandb agent`` it is
    the sweep's run) with ``success_rate`` / ``undetected_rate`` / ``best_undetected_rate`` /
    ``roc_auc`` in its summary, the attack settings in its config, the undetected rate over ``fpr``
    (``undetected_at_fpr``, ``fpr`` its x-axis), its files under ``<results dir>/wandb`` (or
    ``$WANDB_DIR``) and its id
    keyed by the model run and the result's settings (outside sweeps), and, when
    ``LIT_CAPS_SWEEP_METRICS`` is set (``lit-caps sweep local``), those metrics as JSON there.
    Agents running the same cell into one results folder split its chunks (claims). The adaptive
    attacks (``selective_pgd``, ``orthogonal_pgd``, ``apgd_joint``) run at the scale's ``adaptive``
    settings with ``adaptive_overrides`` (lam, step_size, loss) on top: the adaptive report's cells at
    the scale's settings; other settings (a sweep's) go to ``<results>/variants/<setting><value>-...``.
    Returns the result's summary."""
    table = "adaptive" if attack in ADAPTIVE else "table3" if attack.startswith("r_") else "table1"
    sc = scale_settings(scale, table)
    if adaptive_overrides and table != "adaptive":
        raise ValueError(f"--lam / --step-size / --loss are settings of the adaptive attacks, not of {attack}")
    changed = {k: v for k, v in (adaptive_overrides or {}).items() if sc.get(k) != v}
    sc.update(changed)
    run = ensure_run(dataset, model, scale, seed=seed, runs_root=runs_root, train=train, data_root=data_root)
    if isinstance(run, str):
        raise RunNotFoundError(f"no trained {model} on {dataset} (seed {seed}) under {runs_root}/ for scale "
                               f"{scale}; train it with:\n    {run}\n(or pass --train)")
    device = resolve_device(device)
    cell = Cell(model, attack, bool(targeted), None if beta is None else float(beta))
    res_dir = results_dir(out_dir, scale)
    if changed:  # settings other than the scale's: their own folder, never the report's cells
        res_dir = res_dir / "variants" / "-".join(f"{k}{v}" for k, v in sorted(changed.items()))
    t0 = time.perf_counter()
    if table == "adaptive":
        res = adaptive_cell(run, dataset, attack, bool(targeted), None, sc, out_dir=res_dir, device=device,
                            only_report=False, progress=progress, attack_seed=attack_seed)
    else:
        res = evaluate_cell(run, cell, dataset, sc, attack_seed=attack_seed, out_dir=res_dir,
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
        write_json_atomic(mpath, metrics)
    if wandb_log:
        run_name = Path(run.summary.get("run_dir") or Path(run.checkpoint).parent).name
        config = {"data": dataset, "model": model, "attack": attack, "targeted": bool(targeted), "beta": beta,
                  "scale": scale, "seed": seed, "attack_seed": attack_seed, "model_run": run_name,
                  "result": res["name"], "settings_hash": res["settings_hash"], **res["settings"]}
        log_attack_cell(config, metrics, s, run_name=run_name, result_name=res["name"],
                        settings_hash=res["settings_hash"], dataset=dataset, model=model, attack=attack,
                        wandb_dir=res_dir)
    return dict(s, **metrics)
