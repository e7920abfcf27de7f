"""Weights & Biases: the only module that imports ``wandb``.

W&B logs offline unless the user has an API key (``WANDB_API_KEY`` or ``wandb login``): without a
key and without ``WANDB_MODE`` wandb raises "No API key configured", and ``WandbLogger(offline=True)``
fails once wandb was set up earlier in the same process, so the mode is decided here, before wandb
starts, and passed as ``mode=``. ``WANDB_MODE`` always wins. Offline runs are uploaded later with
``wandb sync``; ``wandb leet`` reads them in a terminal.

Every logging function here is best effort: the result and report files on disk are the record, so
a W&B failure prints one line saying so and never stops the job. ``wandb`` is imported inside the
functions: importing lit_caps never starts it.
"""
from __future__ import annotations

import json
import netrc
import os
import re
from pathlib import Path

PROJECT = "lit_caps"


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def wandb_mode() -> str:
    """WANDB_MODE if set, else online with an API key, else offline (the embedded default)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if has_wandb_key() else "offline"


def ensure_wandb_mode() -> str:
    """Set WANDB_MODE for this process (before wandb starts) and return it."""
    mode = wandb_mode()
    os.environ["WANDB_MODE"] = mode
    return mode


def log_attack_evaluation(run, results: list[dict], curves: dict, fpr_png, hist_png, config: dict,
                          metrics: tuple[str, ...]) -> None:
    """An evaluation's attacks on a W&B run (a ``WandbLogger``'s experiment): the attack settings in
    the config, the undetected-rate-vs-FPR curves as series over ``fpr`` (one chart per attack), a
    line plot, a table of the rates, the figures, and ``<result name>/<metric>`` in the summary."""
    import wandb

    run.config.update(config, allow_val_change=True)
    run.define_metric("fpr")
    for key in curves:
        run.define_metric(f"{key}/undetected_at_fpr", step_metric="fpr")
    points: dict = {}
    for key, (fs, us) in curves.items():
        for f, u in zip(fs, us):
            if u is not None:
                points.setdefault(float(f), {})[f"{key}/undetected_at_fpr"] = u
    for f in sorted(points):
        run.log({"fpr": f, **points[f]})
    rows = [[k, 100 * f, 100 * u] for k, (fs, us) in curves.items() for f, u in zip(fs, us) if u is not None]
    table = wandb.Table(data=rows, columns=["attack", "fpr_pct", "undetected_pct"])
    summary = wandb.Table(columns=["attack", "targeted", "beta", "n", *metrics],
                          data=[[r["settings"]["attack"], r["settings"]["targeted"], r["settings"]["beta"],
                                 r["summary"]["n"], *(r["summary"].get(m) for m in metrics)]
                                for r in results])
    run.log({"undetected_vs_fpr": wandb.plot.line(table, "fpr_pct", "undetected_pct", stroke="attack",
                                                  title="Undetected rate vs FPR"),
             "rates": summary,
             "undetected_vs_fpr_png": wandb.Image(str(fpr_png)),
             "distance_histograms": wandb.Image(str(hist_png))})
    for r in results:
        for m in metrics:
            if r["summary"].get(m) is not None:
                run.summary[f"{r['name']}/{m}"] = r["summary"][m]


def log_report(name: str, scale: str, df, figures: dict, series: dict, wandb_dir) -> None:
    """One W&B run holding an experiment's report: the table, the figures and line plots
    (``series``: key -> (xs, ys, keys, title, xname))."""
    try:
        import wandb

        mode = ensure_wandb_mode()
        wandb_dir = os.environ.get("WANDB_DIR") or wandb_dir  # the user's WANDB_DIR wins, as in W&B
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)  # else wandb falls back to a temp folder
        run = wandb.init(project=PROJECT, job_type=name, name=f"{name}-{scale}", mode=mode,
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


def log_attack_cell(config: dict, metrics: dict, summary: dict, *, run_name: str, result_name: str,
                    settings_hash: str, dataset: str, model: str, attack: str, wandb_dir) -> None:
    """One attack cell (``lit-caps attack``, what sweep agents run) as a W&B run: the settings in its
    config, the rates in its summary, the undetected rate over ``fpr`` (``undetected_at_fpr``, ``fpr``
    its x-axis) and a line plot. Outside a sweep its id is keyed by the model run and the result's
    settings, so a rerun continues the same W&B run."""
    try:
        import wandb

        kw = {}
        if not (os.environ.get("WANDB_SWEEP_ID") or os.environ.get("WANDB_RUN_ID")):  # a sweep names its runs
            rid = f"attack-{run_name}-{result_name}-{settings_hash[:8]}"
            kw = dict(id=re.sub(r"[^A-Za-z0-9_-]", "_", rid), resume="allow")
        wdir = Path(os.environ.get("WANDB_DIR") or wandb_dir)  # under --out unless the user set WANDB_DIR
        wdir.mkdir(parents=True, exist_ok=True)
        wr = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), job_type="attack",
                        mode=ensure_wandb_mode(), config=config, reinit="finish_previous", dir=str(wdir),
                        name=f"{dataset}/{run_name}/{result_name}",
                        group=os.environ.get("WANDB_RUN_GROUP") or f"{dataset}-{model}-{attack}", **kw)
        f = summary.get("undetected_vs_fpr") or {}
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
        print(f"[lit-caps attack] W&B logging failed ({type(e).__name__}: {e}); result: {metrics.get('result')}",
              flush=True)


def log_model_artifact(card: Path) -> None:
    """A committed model card (``reports/models/<dataset>/<run>/``) as a W&B model artifact, aliased by
    its model hash (offline unless a key is set; skipped when wandb is not installed)."""
    try:
        import wandb
    except ImportError:
        return
    mode = ensure_wandb_mode()
    s = json.loads((card / "summary.json").read_text())
    run = wandb.init(project=PROJECT, job_type="model-card", dir=str(card.parent), mode=mode,
                     name=f"model-{s['dataset']}-{card.name}", config=s, reinit=True)
    art = wandb.Artifact(f"{s['dataset']}-{card.name}", type="model", metadata=s)
    for f in sorted(card.iterdir()):
        if f.is_file():
            art.add_file(str(f))
    run.log_artifact(art, aliases=[s["model_hash"]])
    run.finish()
