"""A run's logged metrics, read back: the CSV logger's files as one frame, validation error per epoch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def metrics_frame(run_dir: str | Path) -> pd.DataFrame | None:
    """All of a run's CSV metrics (every Lightning CSV logger version), read once; None if none."""
    frames = [pd.read_csv(f) for f in sorted(Path(run_dir).glob("csv/**/metrics.csv"))]
    frames = [f for f in frames if "epoch" in f]
    return pd.concat(frames) if frames else None


def val_errors(run: str | Path | pd.DataFrame | None, metric: str = "val/acc") -> pd.Series | None:
    """Validation error (%) per epoch, from a run's CSV metrics (its folder or :func:`metrics_frame`;
    None if not logged). ``metric``: ``val/acc`` (the evaluated model: the weight average when one
    is kept) or ``val/acc_raw`` (the raw weights of a run that keeps an average)."""
    d = run if run is None or isinstance(run, pd.DataFrame) else metrics_frame(run)
    if d is None or metric not in d:
        return None
    d = d.dropna(subset=[metric])
    return None if d.empty else 100 * (1 - d.groupby("epoch")[metric].last().sort_index())


def last_val_error(errors: pd.Series | None, epochs: int = 1) -> float | None:
    """Mean validation error (%) over the last ``epochs`` epochs of :func:`val_errors`. The mean of
    the last 5 is steadier than the last epoch alone for comparing recipes (Fashion-MNIST's
    last-epoch validation error moves by 0.3 points)."""
    return None if errors is None else round(float(errors.iloc[-epochs:].mean()), 2)
