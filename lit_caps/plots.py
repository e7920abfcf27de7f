"""Figures (matplotlib, Agg backend, PNG): the undetected rate vs FPR curve (Fig. 2) and the
histograms of clean vs adversarial reconstruction distances (Fig. 1b)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64).ravel()


def _save(fig, path) -> Path:
    try:
        return atomic_write(path, lambda f: fig.savefig(f, dpi=150, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def plot_undetected_vs_fpr(curves: dict, path, title: str = "") -> Path:
    """Undetected rate (%) vs false positive rate (%), one line per label (the paper's Fig. 2).

    ``curves``: label -> (fprs, undetected_rates), both as fractions in [0, 1] (as returned by
    :func:`lit_caps.detection.undetected_vs_fpr`). The 5% FPR of the paper's threshold is marked.
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    for label, (fprs, rates) in curves.items():
        ax.plot(100 * _np(fprs), 100 * _np(rates), label=str(label), lw=1.8)
    ax.axvline(5, color="grey", ls=":", lw=1, label="FPR 5%")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("False Positive Rate (%)")
    ax.set_ylabel("Undetected Rate (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return _save(fig, path)


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


def plot_rates_vs_beta(success: dict, undetected: dict, path, title: str = "") -> Path:
    """Success rate (a) and undetected rate (b), in %, against the R-* attacks' beta, one line per
    label (the paper's Fig. 9). ``success`` / ``undetected``: label -> (betas, rates) or
    (betas, rates, ci_lo, ci_hi), rates and interval bounds as fractions; the intervals are drawn
    as shaded bands."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, series, name in ((axes[0], success, "Success Rate (%)"), (axes[1], undetected, "Undetected Rate (%)")):
        for label, vals in series.items():
            b = _np(vals[0])
            order = np.argsort(b)
            line, = ax.plot(b[order], 100 * _np(vals[1])[order], marker="o", ms=3.5, lw=1.8, label=str(label))
            if len(vals) >= 4 and len(b):
                ax.fill_between(b[order], 100 * _np(vals[2])[order], 100 * _np(vals[3])[order],
                                color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 100)
        ax.set_xlabel(r"$\beta$")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_title("(a)")
    axes[1].set_title("(b)")
    if undetected or success:
        axes[1 if undetected else 0].legend(frameon=False, fontsize=8)
    else:
        for ax in axes:
            ax.text(0.5, 50, "pending", ha="center", va="center", color="grey")
    if title:
        fig.suptitle(title)
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
