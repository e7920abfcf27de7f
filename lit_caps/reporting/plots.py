"""Figures (matplotlib, Agg backend, PNG): the undetected rate vs FPR curve (Fig. 2) and the
histograms of clean vs adversarial reconstruction distances (Fig. 1b)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_write  # noqa: E402


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64).ravel()


def _save(fig, path, tight: bool = True) -> Path:
    kw = {"bbox_inches": "tight"} if tight else {}
    try:
        return atomic_write(path, lambda f: fig.savefig(f, dpi=150, format="png", **kw))
    finally:
        plt.close(fig)


def plot_undetected_vs_fpr(curves: dict, path, title: str = "") -> Path:
    """Undetected rate (%) vs false positive rate (%), one line per label (the paper's Fig. 2).

    ``curves``: label -> (fprs, undetected_rates), both as fractions in [0, 1] (as returned by
    :func:`lit_caps.detection.undetected_vs_fpr`). The 5% FPR of the paper's threshold is marked.
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    _fpr_axes(ax, curves, title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _fpr_axes(ax, curves: dict, title: str = "", title_size=None, legend_size: int = 8,
              colors: dict | None = None) -> None:
    """One undetected-rate-vs-FPR panel: a line per label (``colors``: label -> colour, so that a
    label keeps its colour across panels), the 5% FPR marked, axes in %."""
    for label, (fprs, rates) in curves.items():
        ax.plot(100 * _np(fprs), 100 * _np(rates), label=str(label), lw=1.8, color=(colors or {}).get(label))
    ax.axvline(5, color="grey", ls=":", lw=1, label="FPR 5%")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("False Positive Rate (%)")
    ax.set_ylabel("Undetected Rate (%)")
    if title:
        ax.set_title(title, fontsize=title_size)
    ax.legend(frameon=False, fontsize=legend_size)


def plot_distance_histograms(clean, adv: dict, threshold: float | None, path, title: str = "",
                             bins: int = 50) -> Path:
    """Histograms of reconstruction distances d(x): clean inputs vs each adversarial set (Fig. 1b),
    with the detection threshold as a vertical line. ``adv``: label -> distances."""
    sets = {"clean": _np(clean)} | {str(k): _np(v) for k, v in adv.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in sets.values()] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if threshold is not None:
        lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for label, v in sets.items():
        if v.size:
            ax.hist(v, bins=edges, alpha=0.5, density=True, label=f"{label} (n={v.size})")
    if threshold is not None:
        ax.axvline(float(threshold), color="k", ls="--", lw=1.2, label=f"threshold {float(threshold):.3g}")
    ax.set_xlabel("Reconstruction distance $d(x)$")
    ax.set_ylabel("Density")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


def plot_rates_vs_beta(success: dict, undetected: dict, path, title: str = "",
                       best_undetected: dict | None = None) -> Path:
    """Success rate (a) and undetected rate (b), in %, against the R-* attacks' beta, one line per
    label (the paper's Fig. 9). ``success`` / ``undetected``: label -> (betas, rates) or
    (betas, rates, ci_lo, ci_hi), rates and interval bounds as fractions; the intervals are drawn
    as shaded bands. ``best_undetected`` (optional, same form): the best-iterate undetected rate,
    drawn dashed in (b) in its label's colour."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    colors = {}
    for ax, series, name in ((axes[0], success, "Success Rate (%)"), (axes[1], undetected, "Undetected Rate (%)")):
        for label, vals in series.items():
            b = _np(vals[0])
            order = np.argsort(b)
            line, = ax.plot(b[order], 100 * _np(vals[1])[order], marker="o", ms=3.5, lw=1.8, label=str(label),
                            **({"color": colors[label]} if label in colors else {}))
            colors.setdefault(label, line.get_color())
            if len(vals) >= 4 and len(b):
                ax.fill_between(b[order], 100 * _np(vals[2])[order], 100 * _np(vals[3])[order],
                                color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 100)
        ax.set_xlabel(r"$\beta$")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    for label, vals in (best_undetected or {}).items():
        b = _np(vals[0])
        order = np.argsort(b)
        axes[1].plot(b[order], 100 * _np(vals[1])[order], ls="--", lw=1.2, marker="x", ms=3,
                     label=f"{label}, best iterate", **({"color": colors[label]} if label in colors else {}))
    axes[0].set_title("(a)")
    axes[1].set_title("(b)")
    if undetected or success:
        axes[1 if undetected else 0].legend(frameon=False, fontsize=8)
    else:
        for ax in axes:
            ax.text(0.5, 50, "pending", ha="center", va="center", color="grey")
    if title:
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def plot_fig1(panels_a: dict, panels_b: dict, path, title: str = "", bins: int = 60) -> Path:
    """The paper's Fig. 1, one column per model: (a) distances of the reconstructions from the
    correct class's capsule vs from the other classes' capsules (clean inputs); (b) clean inputs
    vs successful adversarial inputs (PGD), both from the predicted class. ``panels_*``: model
    label -> (first distances, second distances, threshold) with labels ``panels_*_labels``."""
    labels = list(dict.fromkeys(list(panels_a) + list(panels_b)))
    fig, axes = plt.subplots(2, len(labels), figsize=(3.6 * len(labels), 6.2), squeeze=False)
    for col, model in enumerate(labels):
        for row, (panels, names) in enumerate(((panels_a, ("correct capsule", "other capsules")),
                                               (panels_b, ("clean", "PGD (successful)")))):
            ax = axes[row][col]
            if model not in panels:
                ax.text(0.5, 0.5, "not applicable:\nreconstruction is not\nclass-conditional", ha="center",
                        va="center", transform=ax.transAxes, fontsize=9)
                ax.set_axis_off()
                continue
            first, second, thr = panels[model]
            a, b = _np(first), _np(second)
            allv = np.concatenate([a, b, [float(thr)]])
            edges = np.linspace(float(allv.min()), float(allv.max()), bins + 1)
            ax.hist(a, bins=edges, alpha=0.55, density=True, label=f"{names[0]} (n={a.size})")
            ax.hist(b, bins=edges, alpha=0.55, density=True, label=f"{names[1]} (n={b.size})")
            ax.axvline(float(thr), color="k", ls="--", lw=1.1, label="threshold (5% FPR)")
            ax.set_title(f"({'ab'[row]}) {model}", fontsize=10)
            ax.set_xlabel("$\\|r(x) - x\\|_2$")
            ax.legend(frameon=False, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_corruption_gallery(gallery: dict, path, title: str = "") -> Path:
    """Fig. 7 / 8: one row per corruption, per model the corrupted input and its reconstruction.

    ``gallery``: corruption -> model label -> (input [H,W], reconstruction [H,W], flagged, wrong,
    predicted class, true class). Frames: red = flagged, green = misclassified and not flagged,
    grey = correct and not flagged."""
    rows = list(gallery)
    models = list(dict.fromkeys(m for g in gallery.values() for m in g))
    fig, axes = plt.subplots(len(rows), 2 * len(models), figsize=(1.25 * 2 * len(models), 1.3 * len(rows) + 0.6),
                             squeeze=False)
    for i, c in enumerate(rows):
        for j, m in enumerate(models):
            inp, rec, flagged, wrong, pred, y = gallery[c][m]
            color = "red" if flagged else ("green" if wrong else "0.6")
            for k, img in enumerate((inp, rec)):
                ax = axes[i][2 * j + k]
                ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_color(color)
                    sp.set_linewidth(2.5)
                if i == 0:
                    ax.set_title(f"{m}\n{'input' if k == 0 else 'recon.'}", fontsize=7)
                if k == 1:
                    ax.set_xlabel(f"pred {pred} (y {y})", fontsize=6, labelpad=1)
            if j == 0:
                axes[i][0].set_ylabel(c.replace("identity", "clean").replace("_", " "), fontsize=7)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.5 / (1.3 * len(rows) + 0.6)))
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_class_pairs(mats: dict, class_names, path, title: str = "") -> Path:
    """Fig. 4: per model a heat map of the targeted success rate per (source row, target column),
    and the paper's box plot of the pairwise success rates per model."""
    n = len(mats)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.9 * n + 3.6, 4.1), layout="constrained",
                             gridspec_kw={"width_ratios": [1] * n + [0.9]})
    short = [c.split("/")[0][:7] for c in class_names]
    for i, (ax, (label, S)) in enumerate(zip(axes[:n], mats.items())):
        im = ax.imshow(100 * S, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(short)), short, rotation=90, fontsize=7)
        ax.set_yticks(range(len(short)), short if i == 0 else [""] * len(short), fontsize=7)
        ax.set_xlabel("target")
        if i == 0:
            ax.set_ylabel("source")
        ax.set_title(label, fontsize=10)
    fig.colorbar(im, ax=axes[n - 1], fraction=0.046, pad=0.02, label="success rate (%)")
    off = ~np.eye(len(class_names), dtype=bool)
    axb = axes[n]
    axb.boxplot([100 * S[off][~np.isnan(S[off])] for S in mats.values()], tick_labels=list(mats), widths=0.6)
    axb.set_ylabel("success rate per class pair (%)")
    axb.set_ylim(-2, 102)
    axb.tick_params(axis="x", labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, tight=False)


def _show(ax, img, title=""):
    img = np.asarray(img)
    ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_gallery(picked: dict, path, title: str = "") -> Path:
    """Fig. 5 / 11: one row per model, its (successful, undetected) adversarial images."""
    cols = max([len(v) for v in picked.values()] + [1])
    fig, axes = plt.subplots(len(picked), cols, figsize=(1.15 * cols + 0.8, 1.35 * len(picked) + 0.5), squeeze=False)
    for i, (label, items) in enumerate(picked.items()):
        for j in range(cols):
            ax = axes[i][j]
            if j < len(items):
                _show(ax, items[j][0], items[j][1])
            else:
                ax.set_axis_off()
                if j == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        axes[i][0].set_ylabel(label, fontsize=9)
        axes[i][0].set_axis_on()
        axes[i][0].set_xticks([])
        axes[i][0].set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_reconstruction_pairs(pairs: dict, path, title: str = "") -> Path:
    """Fig. 10: per example, clean input | its reconstruction | adversarial | its reconstruction."""
    rows = [(label, quad) for label, quads in pairs.items() for quad in quads] or [("none", None)]
    fig, axes = plt.subplots(len(rows), 4, figsize=(5.2, 1.35 * len(rows) + 0.5), squeeze=False)
    heads = ("clean", "recon.", "adversarial", "recon.")
    for i, (label, quad) in enumerate(rows):
        for j in range(4):
            ax = axes[i][j]
            if quad is None:
                ax.set_axis_off()
                continue
            _show(ax, quad[j], heads[j] if i == 0 else "")
        axes[i][0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save_grid(fig, axes, used: int, path, title: str = "") -> Path:
    """Hide a panel grid's unused axes, add the title, save."""
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_undetected_vs_fpr_panels(panels: dict, path, title: str = "", ncols: int | None = None,
                                  colors: dict | None = None) -> Path:
    """Several undetected-rate-vs-FPR panels (Fig. 3; Table 1's attacks): panel title -> curves
    (label -> (fprs, undetected rates), fractions), ``ncols`` per row (default: all in one row),
    ``colors``: label -> colour in every panel."""
    ncols = min(ncols or len(panels), len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.7 * nrows), squeeze=False)
    for ax, (name, curves) in zip(axes.ravel(), panels.items()):
        _fpr_axes(ax, curves, name, title_size=9, legend_size=7, colors=colors)
    return _save_grid(fig, axes, len(panels), path, title)


def plot_training_curves(metrics, path, title: str = "") -> Path:
    """A run's training curves per epoch (1-based, epochs completed): loss (training: the mean of
    the logged steps, validation), accuracy (%: training epoch, validation, and the raw weights'
    validation accuracy when a weight average is kept) and the detection threshold (the 95th
    percentile of validation distances at 5% FPR). ``metrics``: the run's ``metrics.csv`` path(s)
    or a DataFrame of their rows (Lightning's CSV logger: one row per logged step or epoch)."""
    import pandas as pd
    from matplotlib.ticker import MaxNLocator

    if not isinstance(metrics, pd.DataFrame):
        paths = [metrics] if isinstance(metrics, (str, Path)) else list(metrics)
        metrics = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    d = metrics.dropna(subset=["epoch"]) if "epoch" in metrics else metrics.iloc[0:0]

    def per_epoch(col: str, how: str = "last"):
        if col not in d:
            return None
        s = d.dropna(subset=[col]).groupby("epoch")[col]
        s = s.mean() if how == "mean" else s.last()
        return None if s.empty else (s.index.to_numpy(dtype=float) + 1, s.to_numpy(dtype=float))

    panels = [
        ("loss", [("train (mean of logged steps)", per_epoch("train/loss", "mean")),
                  ("validation", per_epoch("val/loss"))]),
        ("accuracy (%)", [("train", per_epoch("train/acc_epoch")), ("validation", per_epoch("val/acc")),
                          ("validation, raw weights", per_epoch("val/acc_raw"))]),
        ("detection threshold", [("val. distance, 95th pct.", per_epoch("val/threshold"))]),
    ]
    n_epochs = max([int(xy[0].max()) for _, lines in panels for _, xy in lines if xy is not None] or [1])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    for ax, (ylabel, lines) in zip(axes, panels):
        drawn = 0
        for color, (label, xy) in enumerate(lines):
            if xy is None:
                continue
            x, y = xy
            ax.plot(x, 100 * y if ylabel.startswith("accuracy") else y, "o-", ms=3, lw=1.5, label=label,
                    color=f"C{color}")
            drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif drawn > 1 or ylabel.startswith("loss"):
            ax.legend(frameon=False, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.5, n_epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_rates_vs_iterations(panels: dict, path, title: str = "", ncols: int = 2) -> Path:
    """The undetected rate (%) against the iterations (log axis), a panel per title: panel title ->
    {label: (iterations, rates in [0, 1])}; the points are the measured budgets (markers); a label keeps
    its colour in every panel."""
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}  # one colour per label
    for ax, (name, curves) in zip(axes.ravel(), panels.items()):
        for label, (its, rates) in curves.items():
            ax.plot(_np(its), 100 * _np(rates), marker="o", ms=3, lw=1.5, label=str(label), color=colors[label])
        ax.set_xscale("log")
        ax.set_ylim(0, 100)
        ax.set_xlabel("iterations")
        ax.set_ylabel("Undetected Rate (%)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    return _save_grid(fig, axes, len(panels), path, title)
