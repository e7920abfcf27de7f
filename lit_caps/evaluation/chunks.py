"""Chunks: the unit of work of an evaluation, and their files.

The unit of work is a *chunk* of ``chunk_size`` examples of a fixed, seeded test subset
(:func:`subset_positions`). Every chunk is a file that is either complete or absent (written to a
temp file, then ``os.replace``)::

    <out_dir>/<dataset>/<model>/.chunks/<result name>/<settings hash>/chunk_00012.pt
                                                                  .../chunk_00012.claim

(chunks of the former layout, ``.chunks/<name>/chunk_00012.pt`` for every settings, are still read.)

A chunk stores the hash of every setting that changes its numbers (model weights, threshold,
validation distances, attack settings, eps, beta, seed, n, chunk size, ...); a chunk whose hash
differs is recomputed, never mixed in. A run killed mid-way restarts from its finished chunks and
ends with the same numbers: all randomness is derived from ``seed`` and the chunk id
(:func:`chunk_seed`; targets from ``seed`` alone), never from a global RNG stream.

**Integrity.** Chunk files carry a sha256 checksum (of their record tensors and other fields). A
damaged file (truncated, random bytes, checksum mismatch) is moved aside to
``<name>.damaged-<timestamp>`` with a one-line note on stderr naming it, and recomputed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import io
from ..detection import attack_outcomes
from .claims import HOST
from .forward import attack_precision, predict
from .results import EXAMPLE_FIELDS


# -- the data subset, per-chunk seeds ------------------------------------------------------------
def subset_positions(size: int, n: int | None, seed: int) -> np.ndarray:
    """Positions of the fixed seeded subset (as ``CapsDataModule.test_subset``): all when n is None
    or >= size, else the sorted first n of a ``default_rng(seed)`` permutation."""
    if n is None or n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


def chunk_seed(seed: int, chunk_id: int) -> int:
    """The RNG seed of one chunk, a function of (seed, chunk id) only."""
    return int.from_bytes(hashlib.sha256(f"lit_caps/{int(seed)}/{int(chunk_id)}".encode()).digest()[:8], "little") >> 1


def load_examples(dataset, positions) -> tuple[Tensor, Tensor, Tensor]:
    """(images, labels, indices) of ``dataset`` at ``positions``; the index is the dataset's third
    field when it yields ``(x, y, index)``, else the position."""
    xs, ys, idx = [], [], []
    for p in positions:
        item = dataset[int(p)]
        xs.append(torch.as_tensor(item[0]))
        ys.append(int(item[1]))
        idx.append(int(item[2]) if len(item) > 2 else int(p))
    return torch.stack(xs).float(), torch.tensor(ys, dtype=torch.long), torch.tensor(idx, dtype=torch.long)


# -- one chunk -----------------------------------------------------------------------------------
def _as_result(res, x: Tensor):
    """(x_adv, best_undetected | None, x_best | None, iterations | None, first_undetected | None) from an
    AttackResult or a tensor."""
    if isinstance(res, Tensor):
        return res, None, None, None, None
    get = (lambda k: res.get(k)) if isinstance(res, dict) else (lambda k: getattr(res, k, None))
    return get("x_adv"), get("best_undetected"), get("x_best"), get("iterations"), get("first_undetected")


def run_chunk(model, attack, x: Tensor, y: Tensor, index: Tensor, target: Tensor | None, *, threshold: float,
              seed: int, chunk_id: int, device, trust_best_flag: bool = True, precision: str = "fp32") -> dict:
    """Attack one chunk and measure everything with ``model`` (the target: for a transfer attack
    ``attack`` was built on another model); returns per-example CPU tensors (EXAMPLE_FIELDS).

    The attack's best iterate ``x_best`` (if any) is re-measured on ``model``; a bare
    ``best_undetected`` flag without ``x_best`` is used only if ``trust_best_flag`` (it describes the
    model the attack ran on, so never for transfer attacks). ``precision``: the attack's iterations
    run under :func:`~lit_caps.evaluation.forward.attack_precision` (its decisions: steps, best-iterate
    bookkeeping); everything returned is measured here in fp32."""
    x, y = x.to(device), y.to(device)
    t = target.to(device) if target is not None else None
    clean_pred, clean_dist = predict(model, x)
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(chunk_seed(seed, chunk_id))
        with torch.enable_grad(), attack_precision(precision, device):
            res = attack(x, y, t)
    x_adv, best_flag, x_best, iters, first = _as_result(res, x)
    x_adv = x_adv.detach().to(device)
    adv_pred, adv_dist = predict(model, x_adv)
    success, undetected = attack_outcomes(adv_pred, y, adv_dist, threshold, t)
    best = undetected.clone()
    if x_best is not None:  # verify the attack's best iterate with the model, never trust the flag alone
        bp, bd = predict(model, x_best.detach().to(device))
        best |= attack_outcomes(bp, y, bd, threshold, t)[1]
    elif best_flag is not None and trust_best_flag:
        best |= torch.as_tensor(best_flag, device=best.device).bool()
    delta = (x_adv - x).flatten(1)
    b = x.shape[0]
    if iters is None:
        it = torch.full((b,), -1, dtype=torch.long)
    else:
        it = torch.as_tensor(iters).flatten().long().cpu()
        it = it.expand(b).clone() if it.numel() == 1 else it
    cpu = lambda v: v.detach().cpu()
    extra = {}
    if first is not None and trust_best_flag and iters is not None:
        # the attack's own count (its precision, its model); made to agree with the verified flag
        # above: never counted where the re-measurement says not undetected, the last iteration
        # where only the re-measurement says undetected
        first = torch.as_tensor(first).flatten().long().to(best.device)
        last = int(torch.as_tensor(iters).max())
        extra["first_undetected"] = cpu(torch.where(best, torch.where(first > 0, first, last), -1)).long()
    return {
        "index": cpu(index).long(), "y": cpu(y).long(),
        "target": cpu(t).long() if t is not None else torch.full((b,), -1, dtype=torch.long),
        "clean_pred": cpu(clean_pred).long(), "clean_dist": cpu(clean_dist).float(),
        "adv_pred": cpu(adv_pred).long(), "adv_dist": cpu(adv_dist).float(),
        "success": cpu(success).bool(), "undetected": cpu(undetected).bool(), "best_undetected": cpu(best).bool(),
        "linf": cpu(delta.abs().amax(1)).float(), "l2": cpu(delta.norm(dim=1)).float(), "iterations": it,
    } | extra


# -- chunk files: written by write_chunk, read back by the store (keep the two side by side) ------
def iso_time(t: float) -> str:
    """A Unix time as local ISO-8601 with the offset, as chunk and result files record times."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def lit_caps_version() -> str | None:
    """The installed lit_caps version (None when not installed)."""
    try:
        return importlib.metadata.version("lit_caps")
    except Exception:  # noqa: BLE001
        return None


def _chunk_checksum(blob: dict) -> str:
    """sha256 over a chunk's record tensors and everything else in it (but the checksum)."""
    meta = {k: v for k, v in blob.items() if k not in ("records", io.CHECKSUM_KEY)}
    return io.tensors_checksum(blob["records"], meta)


def write_chunk(path: Path, *, settings_hash: str, chunk_id: int, positions, records: dict, device, compiled: bool,
                started: float, finished: float, wall_time_s: float, cpu_time_s: float | None = None) -> None:
    """Write one chunk file atomically: its records (:func:`run_chunk`), identity (settings hash,
    chunk id, positions), run info (host, pid, times, the process's CPU time over the chunk
    (``time.process_time``: every thread of it) and torch's thread count, device, versions) and checksum."""
    run = {"host": HOST, "pid": os.getpid(), "started_at": iso_time(started), "finished_at": iso_time(finished),
           "finished_unix": finished, "device": str(device), "compiled": bool(compiled),
           "wall_time_s": wall_time_s, "cpu_time_s": cpu_time_s, "threads": torch.get_num_threads(),
           "torch_version": str(torch.__version__), "python": platform.python_version(),
           "lit_caps_version": lit_caps_version()}
    blob = {"settings_hash": settings_hash, "chunk": chunk_id, "positions": [int(p) for p in positions],
            "records": records, "wall_time_s": wall_time_s, "device": str(device), "compiled": bool(compiled),
            "run": run}
    blob[io.CHECKSUM_KEY] = _chunk_checksum(blob)
    io.atomic_write(path, lambda f: torch.save(blob, f))


def _load_chunk(path: Path, want_hash: str, chunk_id: int, positions: np.ndarray,
                identity: tuple | None = None) -> dict | None:
    """The chunk's records if the file is complete and from the same settings, else None. A damaged
    file (unreadable, truncated, random bytes, checksum mismatch) is moved aside with a note on
    stderr (:func:`lit_caps.io.move_aside`) and recomputed; one from other settings is left alone."""
    identity = identity or io.file_identity(path)
    if identity is None:
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a torn or foreign file
        io.move_aside(path, f"unreadable chunk: {type(e).__name__}", identity=identity)
        return None
    if not isinstance(blob, dict) or not isinstance(blob.get("records"), dict):
        io.move_aside(path, "not a chunk file", identity=identity)
        return None
    try:
        ok = None if blob.get(io.CHECKSUM_KEY) is None else blob[io.CHECKSUM_KEY] == _chunk_checksum(blob)
    except Exception:  # noqa: BLE001 - records that are not tensors
        ok = False
    if ok is False:
        io.move_aside(path, "checksum mismatch", identity=identity)
        return None
    if (blob.get("settings_hash") != want_hash or blob.get("chunk") != chunk_id
            or blob.get("positions") != [int(p) for p in positions]):
        return None  # another settings' (or another chunk's) file: never mixed in
    rec = blob["records"]
    if any(not isinstance(rec.get(k), Tensor) or len(rec[k]) != len(positions) for k in EXAMPLE_FIELDS):
        io.move_aside(path, "incomplete records", identity=identity)
        return None
    return blob


class ChunkStore:
    """The chunk files of one evaluation (one settings hash), loaded and checked once per file
    version; the folder of the former layout (all settings in one folder) is read as a fallback."""

    def __init__(self, cdir: Path, legacy_dir: Path, shash: str, chunks: list):
        self.cdir, self.legacy_dir, self.shash, self.chunks = Path(cdir), Path(legacy_dir), shash, chunks
        self._ok: dict = {}

    def path(self, c: int) -> Path:
        return self.cdir / f"chunk_{c:05d}.pt"

    def claim_path(self, c: int) -> Path:
        return self.cdir / f"chunk_{c:05d}.claim"

    def get(self, c: int) -> dict | None:
        for p in (self.path(c), self.legacy_dir / f"chunk_{c:05d}.pt"):
            ident = io.file_identity(p)
            if ident is None:
                continue
            hit = self._ok.get(c)
            if hit is not None and hit[0] == p and hit[1] == ident:
                return hit[2]
            blob = _load_chunk(p, self.shash, c, self.chunks[c], identity=ident)
            if blob is not None:
                self._ok[c] = (p, ident, blob)
                return blob
        return None

    def missing(self, ids) -> list[int]:
        return [c for c in ids if self.get(c) is None]

    def found_at(self, c: int) -> Path:
        """Where the chunk :meth:`get` returned was read from."""
        return self._ok[c][0]
