"""A result from its chunks: the summary numbers (:func:`summarize`) and the whole result dict
(:func:`assemble`, written by :func:`~lit_caps.evaluation.evaluate_attack` on rank 0). The result is
assembled from the chunks alone (numbers and run info), so processes that both assemble write the
same bytes."""
from __future__ import annotations

import collections
import os
import platform
import socket

import torch
from torch import Tensor

from ..detection import roc_auc, undetected_vs_fpr, wilson_interval
from .chunks import iso_time, lit_caps_version
from .results import EXAMPLE_FIELDS, OPTIONAL_EXAMPLE_FIELDS, SCHEMA


def summarize(ex: dict, *, threshold: float, val_distances: Tensor | None = None, eps: float | None = None,
              fprs=None) -> dict:
    """Summary numbers from per-example outcomes (tensors or lists in EXAMPLE_FIELDS)."""
    g = lambda k, dt: torch.as_tensor(ex[k], dtype=dt)
    success, undet, best = g("success", torch.bool), g("undetected", torch.bool), g("best_undetected", torch.bool)
    clean_dist, adv_dist = g("clean_dist", torch.float64), g("adv_dist", torch.float64)
    linf, l2 = g("linf", torch.float64), g("l2", torch.float64)
    n = int(success.numel())
    mean = lambda v: float(v.mean()) if v.numel() else float("nan")
    rate = lambda m: (float(m.sum()) / n) if n else float("nan")
    k_s, k_u, k_b = int(success.sum()), int(undet.sum()), int(best.sum())
    iters = g("iterations", torch.float64)
    s = {
        "n": n,
        "clean_accuracy": rate(g("clean_pred", torch.long) == g("y", torch.long)),
        "clean_flagged_rate": rate(clean_dist > float(threshold)),
        "success_rate": rate(success), "success_count": k_s, "success_ci": list(wilson_interval(k_s, n)),
        "undetected_rate": rate(undet), "undetected_count": k_u, "undetected_ci": list(wilson_interval(k_u, n)),
        "best_undetected_rate": rate(best), "best_undetected_count": k_b,
        "best_undetected_ci": list(wilson_interval(k_b, n)),
        "roc_auc": roc_auc(clean_dist, adv_dist[success]),
        "mean_clean_dist": mean(clean_dist), "mean_adv_dist": mean(adv_dist),
        "mean_adv_dist_success": mean(adv_dist[success]), "mean_adv_dist_undetected": mean(adv_dist[undet]),
        "mean_linf": mean(linf), "max_linf": float(linf.max()) if n else float("nan"), "mean_l2": mean(l2),
        "linf_violations": int((linf > float(eps) + 1e-5).sum()) if eps is not None else None,
        "mean_iterations": mean(iters[iters >= 0]),
    }
    if val_distances is not None and n:
        f, r = undetected_vs_fpr(val_distances, adv_dist, success, fprs)
        s["undetected_vs_fpr"] = {"fpr": f.tolist(), "undetected_rate": r.tolist()}
    return s


def _most_common(values, fallback):
    vals = [v for v in values if v is not None]
    if not vals:
        return fallback
    counts = collections.Counter(vals)
    top = max(counts.values())
    return sorted((v for v, k in counts.items() if k == top), key=str)[0]


def assemble(blobs, cfg, shash, name, path, val, world_size, dev, chunk_paths) -> dict:
    """The result from its chunks. Everything in it derives from the chunks (their records and
    run info), the settings and ``world_size``, so two processes that assemble the same chunks
    write the same bytes (chunks from before per-chunk run info: the assembler's, and the
    chunk files' modification times)."""
    fields = EXAMPLE_FIELDS + tuple(k for k in OPTIONAL_EXAMPLE_FIELDS
                                    if all(isinstance(b["records"].get(k), torch.Tensor) for b in blobs))
    rec = {k: torch.cat([b["records"][k] for b in blobs]) for k in fields}
    examples = {k: rec[k].tolist() for k in fields}
    if not cfg["targeted"]:
        examples["target"] = [None] * len(examples["index"])
    summary = summarize(rec, threshold=cfg["threshold"], val_distances=val, eps=cfg["eps"])
    chunk_times = [float(b["wall_time_s"]) for b in blobs]
    runs = [b.get("run") or {} for b in blobs]
    devices = [b.get("device") or r.get("device") for b, r in zip(blobs, runs)]
    finished = [r.get("finished_unix") if r.get("finished_unix") is not None else os.stat(p).st_mtime
                for r, p in zip(runs, chunk_paths)]
    pick = lambda key, fallback: _most_common([r.get(key) for r in runs], fallback)  # noqa: E731
    run = {
        "torch_version": pick("torch_version", str(torch.__version__)),
        "device": _most_common(devices, str(dev)), "devices": sorted({d for d in devices if d is not None}),
        "compiled_chunks": sum(bool(b.get("compiled")) for b in blobs), "world_size": world_size,
        "precision": cfg.get("precision", "fp32"),
        "wall_time_s": sum(chunk_times), "chunk_wall_time_s": chunk_times,
        # the process CPU time summed over chunks; None unless every chunk recorded it (chunks from before)
        "cpu_time_s": (sum(float(r["cpu_time_s"]) for r in runs)
                       if runs and all(r.get("cpu_time_s") is not None for r in runs) else None),
        "threads": pick("threads", None),
        "finished_at": iso_time(max(finished)), "lit_caps_version": pick("lit_caps_version", lit_caps_version()),
        "host": pick("host", socket.gethostname()), "python": pick("python", platform.python_version()),
        "chunk_workers": [f"{r['host']}:{r['pid']}" if r.get("host") else None for r in runs],
    }
    return {"schema": SCHEMA, "name": name, "path": str(path), "status": "complete", "settings_hash": shash,
            "settings": cfg, "run": run, "summary": summary, "examples": examples}
