"""Detection by class-conditional reconstruction distance (Qin et al. 2020, Sections 4.1-4.3).

Pure tensor code over distances and predictions, unit-testable without a model.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def threshold_at_fpr(val_distances: Tensor, fpr: float = 0.05) -> float:
    """Detection threshold theta: the (1 - fpr) quantile of *validation* distances (Section 4.2;
    fpr=0.05 gives the paper's 95th percentile). Inputs with d(x) > theta are flagged."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    d = torch.as_tensor(val_distances, dtype=torch.float64).flatten()
    if d.numel() == 0:
        raise ValueError("no validation distances to set a threshold from")
    return float(torch.quantile(d, 1.0 - fpr))


# -- per-example outcomes and rates (Section 4.3) ------------------------------------------------
def attack_success(pred: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-example attack success [N] bool: targeted ``f(x') == t``, untargeted ``f(x') != y``."""
    pred = torch.as_tensor(pred).flatten()
    if target is not None:
        return pred == torch.as_tensor(target, device=pred.device).flatten()
    return pred != torch.as_tensor(y, device=pred.device).flatten()


def passes_detector(dist: Tensor, threshold: float) -> Tensor:
    """Per-example ``d(x) <= theta`` [N] bool (not flagged; ``d == theta`` is *not* flagged).

    Compared in float64 so a float32 distance equal to the threshold is never rounded across it.
    """
    return torch.as_tensor(dist).flatten().double() <= float(threshold)


def attack_outcomes(pred: Tensor, y: Tensor, dist: Tensor, threshold: float,
                    target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(success [N], undetected [N]) bool: undetected = successful AND ``d(x') <= theta``."""
    success = attack_success(pred, y, target)
    undetected = success & passes_detector(dist, threshold).to(success.device)
    return success, undetected


def detection_rates(pred: Tensor, y: Tensor, dist: Tensor, threshold: float,
                    target: Tensor | None = None) -> dict:
    """Success rate S and undetected rate R of Section 4.3, both over ALL N attacked examples.

    ``pred`` = f(x'), ``dist`` = d(x') of the adversarial inputs, ``target`` the targets of a
    targeted attack (None: untargeted). Returns ``{"success_rate", "undetected_rate", "n"}``
    (rates are NaN when N = 0).
    """
    success, undetected = attack_outcomes(pred, y, dist, threshold, target)
    n = int(success.numel())
    nan = float("nan")
    return {
        "success_rate": float(success.double().mean()) if n else nan,
        "undetected_rate": float(undetected.double().mean()) if n else nan,
        "n": n,
    }


def undetected_vs_fpr(val_distances: Tensor, adv_dist: Tensor, success: Tensor,
                      fprs=None) -> tuple[Tensor, Tensor]:
    """The undetected rate as a function of the false positive rate (the paper's Fig. 2 curve).

    For each FPR (fractions in [0, 1]; default 101 points 0, 0.01, ..., 1) the threshold is
    :func:`threshold_at_fpr` of the clean *validation* distances, and the undetected rate is the
    fraction of ALL attacked examples that are successful and have ``d(x') <= theta``.
    FPR 0 puts theta at the largest validation distance, FPR 1 at the smallest.
    Returns ``(fprs [F] float64, undetected_rates [F] float64)``.
    """
    fprs = torch.linspace(0.0, 1.0, 101, dtype=torch.float64) if fprs is None else \
        torch.as_tensor(fprs, dtype=torch.float64).flatten()
    d = torch.as_tensor(adv_dist).flatten().double().cpu()
    ok = torch.as_tensor(success).flatten().bool().cpu()
    if d.shape != ok.shape:
        raise ValueError(f"adv_dist {tuple(d.shape)} and success {tuple(ok.shape)} differ in shape")
    n = d.numel()
    rates = torch.empty_like(fprs)
    for i, f in enumerate(fprs.tolist()):
        thr = threshold_at_fpr(val_distances, f)
        rates[i] = float((ok & (d <= thr)).sum()) / n if n else float("nan")
    return fprs, rates


def roc_auc(clean_dist: Tensor, adv_dist: Tensor) -> float:
    """ROC-AUC of the distance detector separating clean inputs (negatives) from adversarial ones
    (positives; pass only the *successful* adversarial examples for the paper's setting).

    Mann-Whitney rank statistic: P(d_adv > d_clean) + 0.5 P(d_adv == d_clean). NaN if either is empty.
    """
    neg = torch.as_tensor(clean_dist).flatten().double().cpu()
    pos = torch.as_tensor(adv_dist).flatten().double().cpu()
    n_neg, n_pos = neg.numel(), pos.numel()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    allv = torch.cat([pos, neg])
    _, inverse, counts = torch.unique(allv, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.double()
    mid_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based average rank of each tied group
    ranks = mid_rank[inverse]
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def wilson_interval(k: int | float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a rate k/n (default z = 1.96: 95%). n = 0 gives (0, 1)."""
    k, n = float(k), int(n)
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_exact(a, b) -> tuple[int, int, float]:
    """Exact McNemar test of two paired binary outcomes (the same examples under two conditions).

    ``a``, ``b``: sequences of bools, one per example, in the same order. Returns ``(only_a, only_b, p)``:
    the examples true in ``a`` only, true in ``b`` only, and the two-sided p-value of ``only_a`` under
    Binomial(only_a + only_b, 1/2) (McNemar 1947, exact form); no discordant example gives p = 1.
    Paired data make this test far stronger than comparing two rates' separate intervals."""
    from scipy.stats import binomtest

    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same length, got {len(a)} and {len(b)}")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n = only_a + only_b
    return only_a, only_b, (1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue))


def paired_test(lo: dict | None, hi: dict | None, k: str = "undetected",
                names: tuple[str, str] = ("the lower", "the higher")) -> str:
    """Whether the ``k`` rate of the cell ``lo`` is below that of ``hi``, from their per-example
    outcomes (each a result file's ``examples``): every cell of a report attacks the same seeded test
    images with the same targets, so the exact McNemar test (:func:`mcnemar_exact`,
    5% level) applies. ``names``: the two cells' names in the text. Returns a clause that starts with
    ``"; "``, or "" when either cell's outcomes are missing."""
    if lo is None or hi is None:
        return ""
    if list(lo["index"]) != list(hi["index"]) or list(lo["target"]) != list(hi["target"]):
        return "; paired test: not applicable (different images or targets)"
    only_lo, only_hi, p = mcnemar_exact(lo[k], hi[k])
    verdict = "not resolved" if p >= 0.05 else "holds" if only_hi > only_lo else "does not hold (the reverse)"
    what = {"best_undetected": "undetected (best iterate)"}.get(k, k)
    return (f"; paired test (the same {len(lo[k])} images, exact McNemar): {what} under {names[1]} only "
            f"{only_hi}, under {names[0]} only {only_lo}, p = {p:.2g}: {verdict}")


# -- DDP-exact metrics ----------------------------------------------------------------------------
def dedupe_by_index(indices: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Sort per-example results by dataset index and keep the first of each duplicated index
    (the padding of a DistributedSampler). Returns (indices, *values) sorted by index."""
    order = torch.argsort(indices, stable=True)
    idx = indices[order]
    keep = torch.ones_like(idx, dtype=torch.bool)
    keep[1:] = idx[1:] != idx[:-1]
    return (idx[keep],) + tuple(v[order][keep] for v in values)


class AttackRates(Metric):
    """Success and undetected rates (Section 4.3) that stay exact under DDP.

    Keeps per-example ``(index, success, undetected)`` as cat-states; ``compute()`` drops the
    duplicate indices a DistributedSampler pads with before dividing by N (all attacked examples).

    ``update(index, pred, y, dist, target=None)`` with ``pred = f(x')``, ``dist = d(x')``.
    ``compute() -> {"success_rate", "undetected_rate", "n"}`` (0-dim tensors).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, threshold: float, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("success", default=[], dist_reduce_fx="cat")
        self.add_state("undetected", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, pred: Tensor, y: Tensor, dist: Tensor, target: Tensor | None = None) -> None:
        success, undetected = attack_outcomes(pred, y, dist, self.threshold, target)
        self.index.append(torch.as_tensor(index, device=success.device).flatten().long())
        self.success.append(success)
        self.undetected.append(undetected.to(success.device))

    def _deduped(self) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.index, list) and not self.index:
            e = torch.zeros(0, dtype=torch.bool, device=self.device)
            return e.long(), e, e
        idx, s, u = (dim_zero_cat(v) for v in (self.index, self.success, self.undetected))
        return dedupe_by_index(idx, s, u)

    def compute(self) -> dict:
        _, s, u = self._deduped()
        n = s.numel()
        nan = torch.tensor(float("nan"), device=s.device)
        return {
            "success_rate": s.double().mean() if n else nan,
            "undetected_rate": u.double().mean() if n else nan,
            "n": torch.tensor(n, device=s.device),
        }


class SuccessRate(AttackRates):
    """:class:`AttackRates` whose ``compute()`` is the success rate alone (a 0-dim tensor)."""

    def compute(self) -> Tensor:
        return super().compute()["success_rate"]


class UndetectedRate(AttackRates):
    """:class:`AttackRates` whose ``compute()`` is the undetected rate alone (a 0-dim tensor)."""

    def compute(self) -> Tensor:
        return super().compute()["undetected_rate"]
