"""One resumable, RobustBench-style attack evaluation: :func:`evaluate_attack`.

It attacks a fixed seeded test subset chunk by chunk (:mod:`.chunks`), writes one result file per
settings (:mod:`.results`) and reuses a finished one (:mod:`.reuse`).

**Several processes, one evaluation.** Chunks are dealt round-robin to DDP ``(rank, world_size)``;
rank 0 assembles the result file once all chunks exist (:mod:`.summary`). Independent processes
(sweep agents, machines sharing the results folder) split the chunks through *claims*
(:mod:`.claims`, :mod:`.worker`) and each returns the same result.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..validate import check_attack_args
from .chunks import ChunkStore, subset_positions
from .forward import precision_requested
from .results import (chunk_dir, ensure_writable, jsonable, load_result, model_hash, result_name, result_path,
                      settings_hash, tensor_sha, write_result)
from .reuse import cached_result, keep_superseded, restore_superseded
from .settings import impl_name, resolve_attack_settings
from .summary import assemble
from .worker import ChunkWorker, work_chunks


def evaluate_attack(
    model: torch.nn.Module,
    dataset,
    attack_name: str,
    *,
    dataset_name: str,
    model_name: str,
    targeted: bool,
    eps: float | None,
    beta: float | None = None,
    seed: int = 0,
    n: int | None = None,
    threshold: float,
    val_distances: Tensor,
    settings: dict | None = None,
    out_dir: str | os.PathLike = "results",
    chunk_size: int = 100,
    attack_fn: Callable | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    fpr: float | None = None,
    checkpoint: str | None = None,
    wait_s: float = 0.0,
    claim_wait_s: float | None = None,
    source_model: torch.nn.Module | None = None,
    source_threshold: float | None = None,
    source_checkpoint: str | None = None,
    source_name: str | None = None,
    only_cached: bool = False,
    compile: bool | None = None,
    precision: str | None = None,
) -> dict:
    """Attack a fixed seeded subset of ``dataset`` and write/return the result (see :mod:`lit_caps.evaluation`).

    Args:
        model: a :class:`~lit_caps.models.ReconstructionClassifier`; run in eval mode (restored after).
        dataset: any Dataset yielding ``(x, y, index)`` (or ``(x, y)``: the position is the index).
        attack_name: fgsm, bim, pgd, cw, r_fgsm, r_bim, r_pgd (or any name ``attack_fn`` knows).
        targeted: targets drawn by ``random_targets`` with a generator seeded from ``seed``.
        eps: l_inf bound (None: the preset's). ``beta``: the R-* attacks' balance (also in the name).
        n: examples (None: all); the subset is ``subset_positions(len(dataset), n, seed)``.
        threshold, val_distances: detection threshold theta and the clean validation distances it
            came from (for the FPR curve and the recorded validation FPR).
        settings: attack settings overriding the Appendix C preset (step_size, steps, ...).
        attack_fn: factory with ``build_attack``'s signature
            ``attack_fn(name, model, eps=, targeted=, threshold=, [beta=], **settings) -> attack``;
            ``attack(x, y, target)`` returns an AttackResult (or just x_adv). Default: build_attack.
        chunk_size: examples per chunk (= per attack call); part of the identity (batching can change
            random draws and float rounding).
        rank, world_size: this process's share of the chunks (round-robin). Rank 0 assembles; with
            torch.distributed initialised all ranks meet at barriers and all return the result.
            Without it, rank 0 waits up to ``wait_s`` seconds for the other ranks' chunks.
        claim_wait_s: independent processes (``world_size`` 1 each, e.g. two sweep agents, or
            machines sharing the results folder) split the chunks through claim files (:mod:`.claims`);
            when only chunks that other live processes hold are left, wait for them this long
            (None: as long as their claims stay live; an expired claim is taken over and its chunk
            computed here), then assemble. Each process returns the same result.
        device: where to attack (default: the model's device; the model is moved there).
        progress: a tqdm bar over this rank's chunks.
        fpr: the nominal FPR the threshold was set at (recorded); ``checkpoint``: recorded, not hashed.
        source_model: black-box transfer (paper Table 7): craft the attack on this model (a substitute
            of the same architecture trained separately) and measure success / undetected on
            ``model`` with ``threshold``. Its model hash (and ``source_threshold``) are part of the
            identity and the name (``-bb<hash8>``); ``source_checkpoint`` / ``source_name`` are
            recorded. ``source_threshold``: the source's own detection threshold, used only by the
            attack's best-iterate bookkeeping (the iterate is then re-measured on ``model``); None
            turns that off (best-iterate undetected = last-iterate undetected).
        only_cached: compute nothing: return the finished result if its file exists with these
            settings, else ``{"status": "pending", "name", "path", "settings", "settings_hash",
            "chunks_total", "chunks_done", "stale"}`` (``stale``: a result file from other settings is there).
        compile: attack through ``torch.compile``d forwards (:func:`compiled_forward`); None reads
            ``LIT_CAPS_COMPILE``. Recorded per chunk, not part of the identity.
        precision: ``fp32`` or ``bf16`` (the fast path: the attack's iterations under bf16 autocast,
            :func:`~lit_caps.evaluation.forward.attack_precision`); None reads ``LIT_CAPS_PRECISION``
            (default fp32). The attack's decisions may use it; every reported number is measured in
            fp32 on the final and the best iterate. A non-fp32 precision is part of the identity
            (``settings.precision``) and of the name (``-bf16``); fp32 results are what they were.

    Returns the result dict (``status == "complete"``; ``path`` and the settings' checkpoint paths
    are where the file was found, see :func:`parse_result`), or, on a rank that cannot assemble yet,
    ``{"status": "incomplete", "name", "path", "chunks_total", "chunks_done", "missing_chunks"}``.
    A results folder that cannot be written raises a PermissionError naming it.
    """
    _check_args(beta=beta, eps=eps, n=n, chunk_size=chunk_size, rank=rank, world_size=world_size)
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    # called here, not in a helper: its warnings name the caller of evaluate_attack (stacklevel)
    attack_settings = resolve_attack_settings(dataset_name, attack_name, eps, settings, attack_fn)
    eps = attack_settings["eps"]
    preset_beta = attack_settings.pop("beta", None)  # beta is its own setting (and part of the name)
    beta = preset_beta if beta is None else beta
    precision = precision_requested(precision)
    positions = subset_positions(len(dataset), n, seed)
    if len(positions) == 0:
        raise ValueError("nothing to evaluate: the dataset (or n) is empty")
    val = torch.as_tensor(val_distances).detach().flatten().double().cpu()
    attacked = model if source_model is None else source_model
    attack_threshold = float(threshold) if source_model is None else (
        None if source_threshold is None else float(source_threshold))
    cfg, src_hash = _settings_record(
        model, source_model, attack_fn, val, dataset_name=dataset_name, model_name=model_name,
        attack_name=attack_name, targeted=targeted, beta=beta, eps=eps, attack_settings=attack_settings,
        threshold=threshold, fpr=fpr, n_eff=len(positions), n_dataset=len(dataset), seed=seed,
        chunk_size=chunk_size, checkpoint=checkpoint, source_name=source_name, attack_threshold=attack_threshold,
        source_checkpoint=source_checkpoint, precision=precision)
    job = _job(cfg, src_hash, attack_name=attack_name, targeted=targeted, eps=eps, beta=beta, seed=seed,
               precision=precision,
               positions=positions, chunk_size=chunk_size, out_dir=out_dir, dataset_name=dataset_name,
               model_name=model_name)

    cached = cached_result(job.path, job.shash) or restore_superseded(job.path, job.shash)
    if cached is not None:
        return cached
    mine = list(range(rank, len(job.store.chunks), world_size))
    if only_cached:
        return _pending(job)
    todo = job.store.missing(mine)
    if todo:
        ensure_writable(job.store.cdir, root=out_dir)
        worker = ChunkWorker(model, attacked, dataset, attack_name, attack_fn, attack_settings, dev, eps, beta,
                             targeted, attack_threshold, threshold, seed, positions, job.store.chunks, chunk_size,
                             job.shash, compile, trust_best_flag=source_model is None, precision=precision)
        _compute(job.store, mine, todo, worker, progress=progress, claim_wait_s=claim_wait_s,
                 desc=f"{model_name}/{job.name}", label=f"{dataset_name}/{model_name}/{job.name}")
    return _finish(job, rank=rank, world_size=world_size, wait_s=wait_s, out_dir=out_dir, val=val, dev=dev)


# -- the steps of evaluate_attack ----------------------------------------------------------------
@dataclass
class _Job:
    """One evaluation's identity and files: its settings record and hash, result name and path, chunks."""

    cfg: dict
    shash: str
    name: str
    path: Path
    store: ChunkStore


def _check_args(*, beta, eps, n, chunk_size, rank, world_size) -> None:
    # numbers only: names are checked where they are resolved (a custom attack_fn may know other attacks)
    check_attack_args(beta=beta, eps=eps, n=n, chunk_size=chunk_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")


def _settings_record(model, source_model, attack_fn, val: Tensor, *, dataset_name, model_name, attack_name, targeted,
                     beta, eps, attack_settings, threshold, fpr, n_eff, n_dataset, seed, chunk_size, checkpoint,
                     source_name, attack_threshold, source_checkpoint, precision="fp32") -> tuple[dict, str | None]:
    """The result's ``settings`` (JSON-safe; all but the checkpoint paths are its identity) and the
    source model's hash (None unless a black-box transfer)."""
    cfg = {
        "dataset": dataset_name, "model": model_name, "attack": attack_name, "attack_impl": impl_name(attack_fn),
        "targeted": bool(targeted), "beta": None if beta is None else float(beta), "eps": eps,
        "attack_settings": attack_settings, "threshold": float(threshold),
        "fpr": None if fpr is None else float(fpr), "val_fpr": float((val > float(threshold)).double().mean()),
        "n_val": int(val.numel()), "val_distances_sha": tensor_sha(val), "n": n_eff, "n_dataset": n_dataset,
        "seed": int(seed), "target_seed": int(seed) if targeted else None, "chunk_size": int(chunk_size),
        "model_hash": model_hash(model), "checkpoint": None if checkpoint is None else str(checkpoint),
    }
    if precision != "fp32":  # only then: fp32 identities (hashes of old results) unchanged
        cfg["precision"] = precision
    src_hash = None
    if source_model is not None:  # only then: white-box identities (hashes of old results) unchanged
        src_hash = model_hash(source_model)
        cfg.update({"source_model": source_name, "source_model_hash": src_hash, "source_threshold": attack_threshold,
                    "source_checkpoint": None if source_checkpoint is None else str(source_checkpoint)})
    return jsonable(cfg), src_hash


def _job(cfg: dict, src_hash: str | None, *, attack_name, targeted, eps, beta, seed, positions, chunk_size, out_dir,
         dataset_name, model_name, precision="fp32") -> _Job:
    """Name, result path and chunk store of the evaluation with these settings."""
    shash = settings_hash(cfg)
    name = result_name(attack_name, targeted, eps, len(positions), seed, beta, source_hash=src_hash,
                       precision=precision, loss=(cfg.get("attack_settings") or {}).get("loss", "ce"))
    chunks = [positions[i:i + chunk_size] for i in range(0, len(positions), chunk_size)]
    store = ChunkStore(chunk_dir(out_dir, dataset_name, model_name, name, shash),
                       chunk_dir(out_dir, dataset_name, model_name, name), shash, chunks)
    return _Job(cfg, shash, name, result_path(out_dir, dataset_name, model_name, name), store)


def _compute(store: ChunkStore, mine: list[int], todo: list[int], worker: ChunkWorker, *, progress: bool,
             claim_wait_s: float | None, desc: str, label: str) -> None:
    """This process's missing chunks (``todo`` of ``mine``), with a progress bar; the worker is closed after."""
    bar = _tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, disable=not progress)
    try:
        work_chunks(store, mine, worker, bar, claim_wait_s, label=label)
    finally:
        bar.close()
        worker.close()


def _finish(job: _Job, *, rank: int, world_size: int, wait_s: float, out_dir, val: Tensor, dev) -> dict:
    """After this process's chunks: rank 0 waits up to ``wait_s`` for the others' chunks, then
    assembles and writes the result (unless another process has); the other ranks read it (with
    torch.distributed: once rank 0 is done). Without all chunks: the ``incomplete`` status."""
    ddp = _dist_group(world_size)
    if ddp:
        ddp.barrier()
    if rank != 0:
        if ddp:
            ddp.barrier()  # rank 0 has written the result (or found chunks missing)
        done = cached_result(job.path, job.shash)
        return done if done is not None else _incomplete(job)
    if _wait_for_chunks(job.store, wait_s):
        if ddp:
            ddp.barrier()
        return _incomplete(job)
    done = cached_result(job.path, job.shash)  # another process (sharing the chunks) has assembled it meanwhile
    if done is None:
        done = _write_assembled(job, val=val, world_size=world_size, dev=dev, out_dir=out_dir)
    if ddp:
        ddp.barrier()
    return done


def _wait_for_chunks(store: ChunkStore, wait_s: float) -> list[int]:
    """The chunks still missing after waiting up to ``wait_s`` seconds for them."""
    deadline = time.monotonic() + float(wait_s)
    while True:
        missing = store.missing(range(len(store.chunks)))
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def _write_assembled(job: _Job, *, val: Tensor, world_size: int, dev, out_dir) -> dict:
    """Assemble the result from its chunks, write it (a result of other settings there is kept
    under ``superseded/``) and read it back."""
    ids = range(len(job.store.chunks))
    result = assemble([job.store.get(c) for c in ids], job.cfg, job.shash, job.name, job.path, val, world_size,
                      dev, [job.store.found_at(c) for c in ids])
    ensure_writable(job.path.parent, root=out_dir)
    keep_superseded(job.path, job.shash)
    write_result(job.path, result)
    return load_result(job.path)


def _incomplete(job: _Job) -> dict:
    store = job.store
    missing = store.missing(range(len(store.chunks)))
    return {"status": "incomplete", "name": job.name, "path": str(job.path), "chunks_total": len(store.chunks),
            "chunks_done": len(store.chunks) - len(missing), "missing_chunks": missing}


def _pending(job: _Job) -> dict:
    """``only_cached`` without a finished result: how far the chunks are."""
    pend = _incomplete(job)
    pend.update(status="pending", settings=job.cfg, settings_hash=job.shash, stale=job.path.is_file())
    return pend


def _dist_group(world_size: int):
    """torch.distributed when it is initialised with this world size (all ranks then meet at barriers)."""
    if world_size <= 1:
        return None
    import torch.distributed as dist  # lazy: only for DDP runs
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size:
        return dist
    return None


def _tqdm(**kw):
    try:
        from tqdm.auto import tqdm  # lazy: optional
    except ImportError:  # pragma: no cover
        class _Null:
            def update(self, *_):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(**kw)
