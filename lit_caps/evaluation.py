"""One resumable, RobustBench-style attack evaluation: :func:`evaluate_attack`.

The unit of work is a *chunk* of ``chunk_size`` examples of a fixed, seeded test subset. Every
chunk is a file that is either complete or absent (written to a temp file, then ``os.replace``)::

    <out_dir>/<dataset>/<model>/<attack>-<targeted|untargeted>[-beta<b>]-eps<e>-n<N>-s<seed>[-bb<h>].json
    <out_dir>/<dataset>/<model>/.chunks/<same name without .json>/chunk_00012.pt

``-bb<h>`` marks a black-box transfer result (``source_model`` given, paper Section 3 "Threat
Model" and Table 7): the adversarial examples are crafted on the source (substitute) model, with
its own predicted-class reconstructions for the R-* attacks and its own threshold (if any) for the
attack's best-iterate bookkeeping, and success / undetected are measured on the target ``model``
with the target's threshold. ``<h>`` = the first 8 hex digits of the source's model hash.

A chunk stores the hash of every setting that changes its numbers (model weights, threshold,
validation distances, attack settings, eps, beta, seed, n, chunk size, ...); a chunk whose hash
differs is recomputed, never mixed in. Chunks are dealt round-robin to ``(rank, world_size)``;
rank 0 assembles the result file once all chunks exist. A run killed mid-way restarts from its
finished chunks and ends with the same numbers: all randomness is derived from ``seed`` and the
chunk id (targets from ``seed`` alone), never from a global RNG stream.

The result JSON (``schema`` 1)::

    name, path, status ("complete"), schema, settings_hash,
    settings: {dataset, model, attack, attack_impl, targeted, beta, eps, attack_settings{...},
               threshold, fpr, val_fpr, n_val, val_distances_sha, n, n_dataset, seed, target_seed,
               chunk_size, model_hash, checkpoint,
               [transfer only: source_model, source_model_hash, source_threshold, source_checkpoint]},
    run:      {torch_version, device, devices, compiled_chunks, world_size, wall_time_s (attack time summed over
               chunks), chunk_wall_time_s, finished_at, lit_caps_version, host, python},
    summary:  {n, clean_accuracy, clean_flagged_rate, success_rate, success_ci, undetected_rate,
               undetected_ci, best_undetected_rate, best_undetected_ci, roc_auc,
               mean_clean_dist, mean_adv_dist, mean_adv_dist_success, mean_adv_dist_undetected,
               mean_linf, max_linf, mean_l2, linf_violations, mean_iterations,
               undetected_vs_fpr: {fpr: [...], undetected_rate: [...]}},
    examples: {index, y, target, clean_pred, clean_dist, adv_pred, adv_dist, success, undetected,
               best_undetected, linf, l2, iterations}   # column lists: pandas.DataFrame(r["examples"])
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from . import io
from .attacks import random_targets
from .detection import (attack_outcomes, roc_auc, threshold_at_fpr, undetected_vs_fpr,  # noqa: F401
                        wilson_interval)

SCHEMA = 1
#: per-example fields of a result, in order (``target`` is None for untargeted attacks).
EXAMPLE_FIELDS = ("index", "y", "target", "clean_pred", "clean_dist", "adv_pred", "adv_dist", "success",
                  "undetected", "best_undetected", "linf", "l2", "iterations")
#: settings recorded but not part of the identity hash (a copy of a checkpoint is the same model).
_UNHASHED = ("checkpoint", "source_checkpoint")
#: L-inf-only settings that an unbounded attack (CW-L2) ignores, so that one ``--eps`` /
#: ``--step-size`` can be given for a list of attacks (``lit-caps evaluate --attacks pgd cw --eps 0.2``).
_LINF_ONLY = ("eps", "step_size", "random_start")
#: generic settings an attack class without them ignores (FGSM has no ``steps``, CW no ``step_size``).
_GENERIC = ("steps", "step_size", "random_start")


# -- names, hashes, atomic files -----------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{float(v):g}"


def result_name(attack: str, targeted: bool, eps: float | None, n: int, seed: int, beta: float | None = None,
                source_hash: str | None = None) -> str:
    """``<attack>-<targeted|untargeted>[-beta<b>]-eps<e>-n<N>-s<seed>[-bb<h>]`` (no extension); ``e`` is
    ``f"{eps:g}"`` (0.3, 0.0313725) or ``none`` for unbounded attacks (CW-L2); ``-bb<h>`` (black-box
    transfer from a source model) with ``h`` the first 8 hex digits of the source's model hash."""
    parts = [attack, "targeted" if targeted else "untargeted"]
    if beta is not None:
        parts.append(f"beta{_fmt(beta)}")
    parts += [f"eps{_fmt(eps)}", f"n{int(n)}", f"s{int(seed)}"]
    if source_hash is not None:
        parts.append(f"bb{source_hash[:8]}")
    return "-".join(parts)


def result_path(out_dir, dataset: str, model: str, name: str) -> Path:
    return Path(out_dir) / dataset / model / f"{name}.json"


def chunk_dir(out_dir, dataset: str, model: str, name: str) -> Path:
    return Path(out_dir) / dataset / model / ".chunks" / name


def tensor_sha(t: Tensor) -> str:
    t = torch.as_tensor(t).detach().cpu().contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() + str(t.dtype).encode()).hexdigest()[:16]


def model_hash(model: torch.nn.Module) -> str:
    """sha256 (16 hex) over the state dict (names, dtypes, shapes, bytes): the model's identity."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in sorted(model.state_dict().items()):
        if not isinstance(v, Tensor):
            continue
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def settings_hash(settings: dict) -> str:
    ident = {k: v for k, v in settings.items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(_jsonable(ident), sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    """JSON-safe copy: tensors/arrays -> lists, NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Tensor):
        return _jsonable(v.detach().cpu().tolist())
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def write_json_atomic(path, obj: dict) -> None:
    io.write_json_atomic(path, _jsonable(obj), indent=1, sort_keys=False, default=None)


def load_result(path) -> dict:
    with open(path) as f:
        return json.load(f)


# -- the data subset, targets, per-chunk seeds ---------------------------------------------------
def subset_positions(size: int, n: int | None, seed: int) -> np.ndarray:
    """Positions of the fixed seeded subset (as ``CapsDataModule.test_subset``): all when n is None
    or >= size, else the sorted first n of a ``default_rng(seed)`` permutation."""
    if n is None or n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


def chunk_seed(seed: int, chunk_id: int) -> int:
    """The RNG seed of one chunk, a function of (seed, chunk id) only."""
    return int.from_bytes(hashlib.sha256(f"lit_caps/{int(seed)}/{int(chunk_id)}".encode()).digest()[:8], "little") >> 1


def _load_examples(dataset, positions) -> tuple[Tensor, Tensor, Tensor]:
    xs, ys, idx = [], [], []
    for p in positions:
        item = dataset[int(p)]
        xs.append(torch.as_tensor(item[0]))
        ys.append(int(item[1]))
        idx.append(int(item[2]) if len(item) > 2 else int(p))
    return torch.stack(xs).float(), torch.tensor(ys, dtype=torch.long), torch.tensor(idx, dtype=torch.long)


# -- attack construction -------------------------------------------------------------------------
def _impl_name(fn) -> str:
    if fn is None:
        return "lit_caps.attacks.build_attack"
    mod = getattr(fn, "__module__", None) or type(fn).__module__
    qn = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{mod}.{qn}"


def _attack_class(attack_name: str):
    try:
        from .attacks import ATTACKS
    except ImportError:
        return None
    return ATTACKS.get(attack_name)


def is_unbounded(attack_name: str, preset_settings: dict | None = None, attack_fn=None) -> bool:
    """True for attacks without an L-inf bound (CW-L2): the attack class says ``requires_eps =
    False`` (default attacks), or, for a custom ``attack_fn``, the known preset's eps is None."""
    cls = _attack_class(attack_name) if attack_fn is None else None
    if cls is not None:
        return not getattr(cls, "requires_eps", True)
    return preset_settings is not None and "eps" in preset_settings and preset_settings["eps"] is None


def resolve_attack_settings(dataset_name: str, attack_name: str, eps: float | None, settings: dict | None,
                            attack_fn=None) -> dict:
    """Appendix C preset of (dataset, attack), overridden by ``settings``, then by ``eps``
    (``eps=None``: the preset's, or None for unbounded attacks such as CW-L2).

    Unbounded attacks (CW-L2, :func:`is_unbounded`) ignore the L-inf-only settings ``eps``,
    ``step_size`` and ``random_start`` (from ``eps`` or ``settings``, with a warning): their ``eps``
    is always None, so one ``--eps`` can serve a list of attacks. Likewise, with the default
    attacks, the generic ``steps`` / ``step_size`` / ``random_start`` are dropped (with a warning)
    for a class that has no such setting (FGSM: one step); any other setting the attack class does
    not take is an error naming the ones it takes.

    With a custom ``attack_fn`` a missing preset (unknown attack name, or no attacks package) is
    an empty dict; with the default attacks a missing preset is an error.
    """
    known = None
    try:
        from .attacks import preset
        known = dict(preset(dataset_name, attack_name))
    except Exception:
        if attack_fn is None:
            raise
    base = dict(known or {})
    base.update(settings or {})
    if eps is not None:
        base["eps"] = float(eps)
    if is_unbounded(attack_name, known, attack_fn):
        dropped = {k: base.pop(k) for k in _LINF_ONLY if base.get(k) is not None}
        if dropped:
            import warnings
            warnings.warn(f"{attack_name} has no L-inf bound: ignoring {dropped}", stacklevel=3)
        base["eps"] = None
    base["eps"] = None if base.get("eps") is None else float(base["eps"])
    if attack_fn is None:
        _check_kwargs(attack_name, base)
    return base


def _check_kwargs(attack_name: str, settings: dict) -> None:
    """Drops the generic settings the attack class lacks (warning); a clear error for any other
    setting it does not take (instead of a TypeError mid-run). Edits ``settings`` in place."""
    import inspect
    import warnings

    cls = _attack_class(attack_name)
    if cls is None:
        return
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = set(params) - {"self", "model"}
    dropped = {k: settings.pop(k) for k in _GENERIC if k in settings and k not in accepted}
    if dropped:
        warnings.warn(f"{attack_name} has no setting(s) {sorted(dropped)}: ignoring {dropped}", stacklevel=4)
    extra = sorted(set(settings) - accepted - {"beta"})  # beta: checked by the attack (R-* only)
    if extra:
        raise ValueError(f"{attack_name} does not take the setting(s) {extra}; it takes {sorted(accepted)}")


def _as_result(res, x: Tensor):
    """(x_adv, best_undetected | None, x_best | None, iterations | None) from an AttackResult or a tensor."""
    if isinstance(res, Tensor):
        return res, None, None, None
    get = (lambda k: res.get(k)) if isinstance(res, dict) else (lambda k: getattr(res, k, None))
    return get("x_adv"), get("best_undetected"), get("x_best"), get("iterations")


# -- one chunk -----------------------------------------------------------------------------------
@torch.no_grad()
def _predict(model, x: Tensor):
    out = model(x)
    pred = out.logits.argmax(1)
    return pred, model.distance(x, out=out)


@torch.no_grad()
def predict_batched(model, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Predicted class and reconstruction distance (from the predicted class) of every image, in batches."""
    parts = [_predict(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p for p, _ in parts]), torch.cat([d for _, d in parts])


def compile_requested(compile: bool | None = None, default: bool = False) -> bool:
    """``compile`` if given, else the ``LIT_CAPS_COMPILE`` setting (``1``/``true``), else ``default``."""
    if compile is not None:
        return bool(compile)
    env = os.environ.get("LIT_CAPS_COMPILE")
    return bool(default) if env is None else env.strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def compiled_forward(models, enabled: bool = True, force: bool = False):
    """Run the models' ``forward`` through ``torch.compile`` inside the block (in place, restored after).

    Attacks call ``model(x)`` once or twice per iteration; compiling it fuses CapsNet's routing
    (measured: 1.37-1.38x faster at 2 threads, batch 128, in `make bench`; 1.5-1.9x on 1 thread, batch 100).
    The first call per input shape compiles (~35-50 s on this CPU); later calls, also in later
    blocks of the same process, reuse the compiled code. Gradients agree with eager mode to float
    rounding, so compiled and eager chunks are the same measurement (like CPU and GPU chunks: the
    device is recorded per chunk, not part of a result's identity). The reconstruction network is
    left eager (small). Needs a C++ compiler on the CPU (Inductor); ``LIT_CAPS_COMPILE=0`` turns it off.
    Only models whose ``compile_helps`` is True (CapsNet) are compiled unless ``force``; yields
    whether any model was.
    """
    models = [m for m in {id(m): m for m in models}.values() if getattr(m, "compile_helps", True) or force]
    if not enabled or not models:
        yield False
        return
    on_cpu = any(p.device.type == "cpu" for m in models for p in m.parameters())
    if on_cpu and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise RuntimeError("torch.compile on the CPU needs a C++ compiler (install g++, e.g. "
                           "`apt-get install g++`), or run without it: LIT_CAPS_COMPILE=0")
    saved = [getattr(m, "_compiled_call_impl", None) for m in models]
    for m in models:
        m.compile()
    try:
        yield True
    finally:
        for m, prev in zip(models, saved):
            m._compiled_call_impl = prev


def run_chunk(model, attack, x: Tensor, y: Tensor, index: Tensor, target: Tensor | None, *, threshold: float,
              seed: int, chunk_id: int, device, trust_best_flag: bool = True) -> dict:
    """Attack one chunk and measure everything with ``model`` (the target: for a transfer attack
    ``attack`` was built on another model); returns per-example CPU tensors (EXAMPLE_FIELDS).

    The attack's best iterate ``x_best`` (if any) is re-measured on ``model``; a bare
    ``best_undetected`` flag without ``x_best`` is used only if ``trust_best_flag`` (it describes the
    model the attack ran on, so never for transfer attacks)."""
    x, y = x.to(device), y.to(device)
    t = target.to(device) if target is not None else None
    clean_pred, clean_dist = _predict(model, x)
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(chunk_seed(seed, chunk_id))
        with torch.enable_grad():
            res = attack(x, y, t)
    x_adv, best_flag, x_best, iters = _as_result(res, x)
    x_adv = x_adv.detach().to(device)
    adv_pred, adv_dist = _predict(model, x_adv)
    success, undetected = attack_outcomes(adv_pred, y, adv_dist, threshold, t)
    best = undetected.clone()
    if x_best is not None:  # verify the attack's best iterate with the model, never trust the flag alone
        bp, bd = _predict(model, x_best.detach().to(device))
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
    return {
        "index": cpu(index).long(), "y": cpu(y).long(),
        "target": cpu(t).long() if t is not None else torch.full((b,), -1, dtype=torch.long),
        "clean_pred": cpu(clean_pred).long(), "clean_dist": cpu(clean_dist).float(),
        "adv_pred": cpu(adv_pred).long(), "adv_dist": cpu(adv_dist).float(),
        "success": cpu(success).bool(), "undetected": cpu(undetected).bool(), "best_undetected": cpu(best).bool(),
        "linf": cpu(delta.abs().amax(1)).float(), "l2": cpu(delta.norm(dim=1)).float(), "iterations": it,
    }


def _load_chunk(path: Path, want_hash: str, chunk_id: int, positions: np.ndarray) -> dict | None:
    """The chunk's records if the file is complete and from the same settings, else None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: recompute
        return None
    if (not isinstance(blob, dict) or blob.get("settings_hash") != want_hash or blob.get("chunk") != chunk_id
            or blob.get("positions") != [int(p) for p in positions]):
        return None
    return blob


# -- summary -------------------------------------------------------------------------------------
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


# -- the evaluation ------------------------------------------------------------------------------
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
    source_model: torch.nn.Module | None = None,
    source_threshold: float | None = None,
    source_checkpoint: str | None = None,
    source_name: str | None = None,
    only_cached: bool = False,
    compile: bool | None = None,
) -> dict:
    """Attack a fixed seeded subset of ``dataset`` and write/return the result (see module doc).

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

    Returns the result dict (``status == "complete"``), or, on a rank that cannot assemble yet,
    ``{"status": "incomplete", "name", "path", "chunks_total", "chunks_done", "missing_chunks"}``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    attack_settings = resolve_attack_settings(dataset_name, attack_name, eps, settings, attack_fn)
    eps = attack_settings["eps"]
    preset_beta = attack_settings.pop("beta", None)  # beta is its own setting (and part of the name)
    beta = preset_beta if beta is None else beta
    positions = subset_positions(len(dataset), n, seed)
    n_eff = len(positions)
    if n_eff == 0:
        raise ValueError("nothing to evaluate: the dataset (or n) is empty")
    val = torch.as_tensor(val_distances).detach().flatten().double().cpu()
    attacked = model if source_model is None else source_model
    attack_threshold = float(threshold) if source_model is None else (
        None if source_threshold is None else float(source_threshold))
    cfg = {
        "dataset": dataset_name, "model": model_name, "attack": attack_name, "attack_impl": _impl_name(attack_fn),
        "targeted": bool(targeted), "beta": None if beta is None else float(beta), "eps": eps,
        "attack_settings": attack_settings, "threshold": float(threshold),
        "fpr": None if fpr is None else float(fpr), "val_fpr": float((val > float(threshold)).double().mean()),
        "n_val": int(val.numel()), "val_distances_sha": tensor_sha(val), "n": n_eff, "n_dataset": len(dataset),
        "seed": int(seed), "target_seed": int(seed) if targeted else None, "chunk_size": int(chunk_size),
        "model_hash": model_hash(model), "checkpoint": None if checkpoint is None else str(checkpoint),
    }
    src_hash = None
    if source_model is not None:  # only then: white-box identities (hashes of old results) unchanged
        src_hash = model_hash(source_model)
        cfg.update({"source_model": source_name, "source_model_hash": src_hash, "source_threshold": attack_threshold,
                    "source_checkpoint": None if source_checkpoint is None else str(source_checkpoint)})
    cfg = _jsonable(cfg)
    shash = settings_hash(cfg)
    name = result_name(attack_name, targeted, eps, n_eff, seed, beta, source_hash=src_hash)
    path = result_path(out_dir, dataset_name, model_name, name)
    cdir = chunk_dir(out_dir, dataset_name, model_name, name)

    cached = _cached(path, shash) or _restore_superseded(path, shash)
    if cached is not None:
        return cached

    chunks = [positions[i:i + chunk_size] for i in range(0, n_eff, chunk_size)]
    mine = list(range(rank, len(chunks), world_size))
    cpath = lambda c: cdir / f"chunk_{c:05d}.pt"
    if only_cached:
        pend = _incomplete(name, path, chunks, cpath, shash)
        pend.update(status="pending", settings=cfg, settings_hash=shash, stale=path.is_file())
        return pend

    todo = [c for c in mine if _load_chunk(cpath(c), shash, c, chunks[c]) is None]
    if todo:
        # targets for the whole subset from one generator seeded by `seed`: independent of chunks/ranks
        targets = None
        if targeted:
            ys = torch.tensor([int(dataset[int(p)][1]) for p in positions], dtype=torch.long)
            num_classes = int(getattr(model, "num_classes", 10))
            targets = random_targets(ys, num_classes, torch.Generator().manual_seed(int(seed))).long().cpu()
        if attack_fn is None:
            from .attacks import build_attack as attack_fn  # noqa: N806 (lazy: no import-time dependency)
        kw = dict(attack_settings)
        kw.pop("eps", None)
        if beta is not None:
            kw["beta"] = float(beta)
        modes = [(m, m.training) for m in {id(model): model, id(attacked): attacked}.values()]
        for m, _ in modes:
            m.to(dev).eval()
        stack = contextlib.ExitStack()
        try:
            use_compile = stack.enter_context(compiled_forward((model, attacked), compile_requested(compile)))
            attack = attack_fn(attack_name, attacked, eps=eps, targeted=bool(targeted), threshold=attack_threshold,
                               **kw)
            bar = _tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{model_name}/{name}",
                        disable=not progress)
            stack.callback(bar.close)
            for c in todo:
                pos = chunks[c]
                x, y, idx = _load_examples(dataset, pos)
                t = targets[c * chunk_size: c * chunk_size + len(pos)] if targets is not None else None
                t0 = time.perf_counter()
                rec = run_chunk(model, attack, x, y, idx, t, threshold=float(threshold), seed=int(seed), chunk_id=c,
                                device=dev, trust_best_flag=source_model is None)
                blob = {"settings_hash": shash, "chunk": c, "positions": [int(p) for p in pos], "records": rec,
                        "wall_time_s": time.perf_counter() - t0, "device": str(dev), "compiled": use_compile}
                io.atomic_write(cpath(c), lambda f, b=blob: torch.save(b, f))
                bar.update(1)
        finally:
            stack.close()
            for m, mode in modes:
                m.train(mode)

    ddp = _dist_group(world_size)
    if ddp:
        ddp.barrier()
    if rank != 0:
        if ddp:
            ddp.barrier()  # rank 0 has written the result (or found chunks missing)
        done = _cached(path, shash)
        return done if done is not None else _incomplete(name, path, chunks, cpath, shash)

    deadline = time.monotonic() + float(wait_s)
    while True:
        blobs = [_load_chunk(cpath(c), shash, c, chunks[c]) for c in range(len(chunks))]
        if all(b is not None for b in blobs) or time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    if any(b is None for b in blobs):
        if ddp:
            ddp.barrier()
        return _incomplete(name, path, chunks, cpath, shash)

    result = _assemble(blobs, cfg, shash, name, path, val, world_size, dev)
    _keep_superseded(path, shash)
    write_json_atomic(path, result)
    if ddp:
        ddp.barrier()
    return load_result(path)


def _keep_superseded(path: Path, shash: str) -> Path | None:
    """Move a finished result made with other settings (e.g. another model: a retrained default
    config) out of the way instead of writing over it: to ``<dir>/superseded/<name>-<its hash>.json``.
    Tables only read ``<dir>/*.json``, so it stays on disk without being mixed in."""
    if not path.is_file():
        return None
    try:
        old = load_result(path).get("settings_hash") or "unknown"
    except (OSError, json.JSONDecodeError):
        old = "unreadable"
    if old == shash:
        return None
    dest = path.parent / "superseded" / f"{path.stem}-{old}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    print(f"note: {path} held a result made with other settings (settings hash {old}, e.g. another "
          f"checkpoint); kept as {dest}", flush=True)
    return dest


def _restore_superseded(path: Path, shash: str) -> dict | None:
    """A finished result with exactly these settings kept under ``superseded/`` (e.g. from before a
    default config changed and changed back) is put back in place instead of being recomputed; the
    result it replaces is kept there in turn."""
    old = path.parent / "superseded" / f"{path.stem}-{shash}.json"
    if _cached(old, shash) is None:
        return None
    _keep_superseded(path, shash)
    os.replace(old, path)
    print(f"note: restored {path} from {old} (same settings)", flush=True)
    return _cached(path, shash)


def _cached(path: Path, shash: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        r = load_result(path)
    except (OSError, json.JSONDecodeError):
        return None
    return r if r.get("settings_hash") == shash and r.get("status") == "complete" else None


def _incomplete(name, path, chunks, cpath, shash) -> dict:
    missing = [c for c in range(len(chunks)) if _load_chunk(cpath(c), shash, c, chunks[c]) is None]
    return {"status": "incomplete", "name": name, "path": str(path), "chunks_total": len(chunks),
            "chunks_done": len(chunks) - len(missing), "missing_chunks": missing}


def _assemble(blobs, cfg, shash, name, path, val, world_size, dev) -> dict:
    rec = {k: torch.cat([b["records"][k] for b in blobs]) for k in EXAMPLE_FIELDS}
    examples = {k: rec[k].tolist() for k in EXAMPLE_FIELDS}
    if not cfg["targeted"]:
        examples["target"] = [None] * len(examples["index"])
    summary = summarize(rec, threshold=cfg["threshold"], val_distances=val, eps=cfg["eps"])
    chunk_times = [float(b["wall_time_s"]) for b in blobs]
    try:
        from importlib.metadata import version
        lc_version = version("lit_caps")
    except Exception:
        lc_version = None
    run = {
        "torch_version": torch.__version__, "device": str(dev), "devices": sorted({b["device"] for b in blobs}),
        "compiled_chunks": sum(bool(b.get("compiled")) for b in blobs), "world_size": world_size, "wall_time_s": sum(chunk_times), "chunk_wall_time_s": chunk_times,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lit_caps_version": lc_version,
        "host": socket.gethostname(), "python": platform.python_version(),
    }
    return {"schema": SCHEMA, "name": name, "path": str(path), "status": "complete", "settings_hash": shash,
            "settings": cfg, "run": run, "summary": summary, "examples": examples}


def _dist_group(world_size: int):
    """torch.distributed when it is initialised with this world size (all ranks then meet at barriers)."""
    if world_size <= 1:
        return None
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size:
        return dist
    return None


def _tqdm(**kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        class _Null:
            def update(self, *_):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(**kw)


def results_frame(result: dict):
    """The per-example outcomes of a result as a pandas DataFrame."""
    import pandas as pd
    return pd.DataFrame(result["examples"])
