"""One resumable, RobustBench-style attack evaluation: :func:`evaluate_attack`.

The unit of work is a *chunk* of ``chunk_size`` examples of a fixed, seeded test subset. Every
chunk is a file that is either complete or absent (written to a temp file, then ``os.replace``)::

    <out_dir>/<dataset>/<model>/<attack>-<targeted|untargeted>[-beta<b>]-eps<e>-n<N>-s<seed>[-bb<h>].json
    <out_dir>/<dataset>/<model>/.chunks/<same name without .json>/<settings hash>/chunk_00012.pt
                                                                              .../chunk_00012.claim

(chunks of the former layout, ``.chunks/<name>/chunk_00012.pt`` for every settings, are still read.)

``-bb<h>`` marks a black-box transfer result (``source_model`` given, paper Section 3 "Threat
Model" and Table 7): the adversarial examples are crafted on the source (substitute) model, with
its own predicted-class reconstructions for the R-* attacks and its own threshold (if any) for the
attack's best-iterate bookkeeping, and success / undetected are measured on the target ``model``
with the target's threshold. ``<h>`` = the first 8 hex digits of the source's model hash.

A chunk stores the hash of every setting that changes its numbers (model weights, threshold,
validation distances, attack settings, eps, beta, seed, n, chunk size, ...); a chunk whose hash
differs is recomputed, never mixed in. A run killed mid-way restarts from its finished chunks and
ends with the same numbers: all randomness is derived from ``seed`` and the chunk id (targets from
``seed`` alone), never from a global RNG stream.

**Several processes, one evaluation.** Chunks are dealt round-robin to DDP ``(rank, world_size)``;
rank 0 assembles the result file once all chunks exist. Independent processes (sweep agents,
machines sharing the results folder) split the chunks through *claims*: before computing a chunk a
process creates ``chunk_NNNNN.claim`` atomically (``O_CREAT | O_EXCL``; pid, host, time), refreshes
its modification time every ``LIT_CAPS_CLAIM_HEARTBEAT_S`` (30) seconds while it works and removes
it when done; the others skip claimed chunks, take the next free one, and once none is free wait
for the claimed ones (``claim_wait_s``) and assemble. A claim expires when its process is gone (same
host) or its file was not refreshed for ``LIT_CAPS_CLAIM_TTL_S`` (300) seconds (any host; clocks
should agree to well within that); an expired claim is taken over. The result is assembled from
the chunks alone (numbers and run info), so processes that both assemble write the same bytes.

**Integrity.** Result and chunk files carry a sha256 checksum (``sha256``: of the canonical JSON
without that field; of a chunk's record tensors and other fields). A damaged file (truncated,
random bytes, checksum mismatch) is moved aside to ``<name>.damaged-<timestamp>`` with a one-line
note on stderr naming it, and recomputed (a result from its chunks). Result files from before
checksums (schema 1) are read when their summary recounts from their examples (:func:`parse_result`).

**Paths.** A result file records its own ``path`` and the settings' ``checkpoint`` /
``source_checkpoint`` relative to the store (``out_dir``); on load they are resolved from where
the file was found, so a copied or moved results folder reports its own paths.

The result JSON (``schema`` 2)::

    name, path, status ("complete"), schema, settings_hash,
    settings: {dataset, model, attack, attack_impl, targeted, beta, eps, attack_settings{...},
               threshold, fpr, val_fpr, n_val, val_distances_sha, n, n_dataset, seed, target_seed,
               chunk_size, model_hash, checkpoint,
               [transfer only: source_model, source_model_hash, source_threshold, source_checkpoint]},
    run:      {torch_version, device, devices, compiled_chunks, world_size, wall_time_s (attack time summed over
               chunks), chunk_wall_time_s, finished_at (the last chunk's), lit_caps_version, host, python,
               chunk_workers ("host:pid" that computed each chunk)},
    summary:  {n, clean_accuracy, clean_flagged_rate, success_rate, success_ci, undetected_rate,
               undetected_ci, best_undetected_rate, best_undetected_ci, roc_auc,
               mean_clean_dist, mean_adv_dist, mean_adv_dist_success, mean_adv_dist_undetected,
               mean_linf, max_linf, mean_l2, linf_violations, mean_iterations,
               undetected_vs_fpr: {fpr: [...], undetected_rate: [...]}},
    examples: {index, y, target, clean_pred, clean_dist, adv_pred, adv_dist, success, undetected,
               best_undetected, linf, l2, iterations},   # column lists: pandas.DataFrame(r["examples"])
    sha256
"""
from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from . import io
from .validate import check_attack_args
from .errors import DamagedFileError, NotWritableError
from .attacks import random_targets
from .detection import (attack_outcomes, roc_auc, threshold_at_fpr, undetected_vs_fpr,  # noqa: F401
                        wilson_interval)

#: 2: a checksum (``sha256``) and store-relative paths; 1 (read, never written): neither.
SCHEMA = 2
#: per-example fields of a result, in order (``target`` is None for untargeted attacks).
EXAMPLE_FIELDS = ("index", "y", "target", "clean_pred", "clean_dist", "adv_pred", "adv_dist", "success",
                  "undetected", "best_undetected", "linf", "l2", "iterations")
#: settings recorded but not part of the identity hash (a copy of a checkpoint is the same model).
_UNHASHED = ("checkpoint", "source_checkpoint")
#: settings that are paths: recorded relative to the store, resolved from where the file is found.
_PATH_SETTINGS = ("checkpoint", "source_checkpoint")
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


def chunk_dir(out_dir, dataset: str, model: str, name: str, settings_hash: str | None = None) -> Path:
    """``<out_dir>/<dataset>/<model>/.chunks/<name>/<settings hash>``: one folder per settings, so
    evaluations of other settings under the same name (another checkpoint, threshold, ...) never
    touch each other's chunks or claims. Without ``settings_hash``: the folder that held the chunks
    of every settings before (still read, never written)."""
    d = Path(out_dir) / dataset / model / ".chunks" / name
    return d if settings_hash is None else d / settings_hash


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


def _rel_to_store(p: str | None, store: Path) -> str | None:
    """``p`` relative to the store (POSIX separators), as result files record paths."""
    if p is None:
        return None
    try:
        return Path(os.path.relpath(os.path.abspath(p), os.path.abspath(store))).as_posix()
    except ValueError:  # another drive (Windows): keep it absolute
        return Path(os.path.abspath(p)).as_posix()


def store_of(result_file) -> Path:
    """The store (the ``out_dir`` of :func:`evaluate_attack`) a result file lies in, from where it
    lies: ``<store>/<dataset>/<model>/<name>.json`` (or ``.../superseded/<name>-<hash>.json``)."""
    d = Path(result_file).parent
    if d.name == "superseded":
        d = d.parent
    return d.parent.parent


def _file_form(result: dict, store: Path) -> dict:
    """The result as written: paths relative to the store, JSON-safe, with its checksum."""
    r = _jsonable(result)
    r["path"] = _rel_to_store(r["path"], store)
    st = dict(r["settings"])
    for k in _PATH_SETTINGS:
        if st.get(k) is not None:
            st[k] = _rel_to_store(st[k], store)
    r["settings"] = st
    return io.with_checksum(r)


def _write_result(path: Path, result: dict) -> None:
    io.write_json_atomic(path, _file_form(result, store_of(path)), indent=1, sort_keys=False, default=None)


class _Damaged(DamagedFileError):
    def __init__(self, path, why: str):
        super().__init__(f"{path} is damaged ({why}); delete it to recompute it")
        self.why = why


def parse_result(data: bytes | str, path) -> dict:
    """A result from a file's bytes, checked, with its paths resolved from where it was found
    (``path``, never read back from the file: a copied results folder prints its own paths).

    Files with a checksum (schema 2) must match it. Files written before checksums (schema 1,
    e.g. those behind the committed reports) are accepted when their summary's counts and rates
    (n, clean accuracy, success / undetected / best-iterate undetected) recount from their
    per-example outcomes. Anything else raises :class:`~lit_caps.errors.DamagedFileError`."""
    try:
        r = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError (random bytes)
        raise _Damaged(path, f"not JSON: {type(e).__name__}") from None
    if not isinstance(r, dict) or not isinstance(r.get("settings"), dict):
        raise _Damaged(path, "not a result file")
    ok = io.checksum_ok(r)
    if ok is False:
        raise _Damaged(path, "checksum mismatch")
    if ok is None and r.get("status") == "complete":
        _check_legacy(r, path)
    r["path"] = str(path)
    if int(r.get("schema") or 1) >= 2:  # store-relative paths
        store = store_of(path)
        st = dict(r["settings"])
        for k in _PATH_SETTINGS:
            if st.get(k) is not None and not os.path.isabs(st[k]):
                st[k] = os.path.normpath(os.path.join(store, st[k]))
        r["settings"] = st
    return r


def _check_legacy(r: dict, path) -> None:
    """A result without a checksum: its summary must recount from its examples."""
    s, ex = r.get("summary"), r.get("examples")
    if not isinstance(s, dict) or not isinstance(ex, dict):
        raise _Damaged(path, "no summary or examples")
    n = s.get("n")
    cols = ("y", "clean_pred", "success", "undetected", "best_undetected")
    if not isinstance(n, int) or any(not isinstance(ex.get(k), list) or len(ex[k]) != n for k in cols):
        raise _Damaged(path, "examples do not match the summary's n")
    if n == 0:
        return
    counts = {"clean_accuracy": sum(int(p == y) for p, y in zip(ex["clean_pred"], ex["y"])),
              "success_rate": sum(bool(v) for v in ex["success"]),
              "undetected_rate": sum(bool(v) for v in ex["undetected"]),
              "best_undetected_rate": sum(bool(v) for v in ex["best_undetected"])}
    for k, c in counts.items():
        if s.get(k) is not None and not math.isclose(float(s[k]), c / n, rel_tol=1e-12, abs_tol=1e-12):
            raise _Damaged(path, f"its summary's {k} does not recount from its examples")


def load_result(path) -> dict:
    """A result file (:func:`parse_result`); raises FileNotFoundError or DamagedFileError."""
    path = Path(path)
    return parse_result(path.read_bytes(), path)


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


def _chunk_checksum(blob: dict) -> str:
    """sha256 over a chunk's record tensors and everything else in it (but the checksum)."""
    meta = {k: v for k, v in blob.items() if k not in ("records", io.CHECKSUM_KEY)}
    return io.tensors_checksum(blob["records"], meta)


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


class _Chunks:
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


# -- chunk claims: several processes (or machines on one filesystem) share one evaluation ---------
_HOST = socket.gethostname()
_LIVE_TOKENS: set = set()  # the claims this process holds


def claim_ttl_s() -> float:
    """``LIT_CAPS_CLAIM_TTL_S`` (default 300): a claim whose file was not refreshed for this long is
    expired (its process died or hangs, on any machine)."""
    return float(os.environ.get("LIT_CAPS_CLAIM_TTL_S", 300))


def claim_heartbeat_s() -> float:
    """``LIT_CAPS_CLAIM_HEARTBEAT_S`` (default 30, at most a third of the TTL): how often a
    working process refreshes its claim file's modification time."""
    return min(float(os.environ.get("LIT_CAPS_CLAIM_HEARTBEAT_S", 30)), claim_ttl_s() / 3)


def _claim_poll_s() -> float:
    return max(0.05, min(2.0, claim_heartbeat_s()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        pass
    try:  # a killed child its parent has not reaped yet holds its pid as a zombie
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def claim_status(path) -> tuple[str, dict]:
    """(``"free"`` | ``"live"`` | ``"expired"``, the claim's info) of a claim file. Expired: not
    refreshed for :func:`claim_ttl_s` seconds, or its process (on this host) is gone."""
    path = Path(path)
    ident = io.file_identity(path)
    if ident is None:
        return "free", {}
    try:
        info = json.loads(path.read_text() or "{}")
        info = info if isinstance(info, dict) else {}
    except FileNotFoundError:
        return "free", {}
    except (OSError, ValueError):  # being written (created, not yet filled) or torn
        info = {}
    info["age_s"] = time.time() - ident[3] / 1e9
    if info["age_s"] > claim_ttl_s():
        return "expired", info
    pid = info.get("pid")
    if info.get("host") == _HOST and isinstance(pid, int):
        if pid == os.getpid():
            return ("live" if info.get("token") in _LIVE_TOKENS else "expired"), info
        if not _pid_alive(pid):
            return "expired", info
    return "live", info


class ChunkClaim:
    """A claim on one chunk: ``chunk_NNNNN.claim`` created atomically (``O_CREAT | O_EXCL``, also
    on NFS) holding pid, host, time; its modification time is refreshed every
    :func:`claim_heartbeat_s` seconds by a thread while the chunk is computed; removed when done
    (or on an exception). Other processes skip a live claim and take over an expired one."""

    def __init__(self, path: Path, token: str):
        self.path, self.token = path, token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim-{path.name}", daemon=True)

    @classmethod
    def acquire(cls, path) -> ChunkClaim | None:
        """The claim, or None when another live process holds it (an expired one is taken over)."""
        path = Path(path)
        token = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        info = {"pid": os.getpid(), "host": _HOST, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                state, held = claim_status(path)
                if state == "live":
                    return None
                if state == "expired":
                    _take_over(path, held)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            claim = cls(path, token)
            _LIVE_TOKENS.add(token)
            claim._beat.start()
            return claim
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(claim_heartbeat_s()):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        _LIVE_TOKENS.discard(self.token)
        try:
            held = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return
        if isinstance(held, dict) and held.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _take_over(path: Path, held: dict) -> None:
    """Remove an expired claim. Renamed first (one process wins); a live claim renamed by mistake
    (another process took over and claimed between our look and the rename) is put back."""
    ident = io.file_identity(path)
    if ident is None:
        return
    tomb = path.with_name(f"{path.name}.expired-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, tomb)
    except OSError:
        return
    try:
        moved = io.file_identity(tomb)
        if moved is not None and moved[:2] != ident[:2]:
            with contextlib.suppress(OSError):
                os.link(tomb, path)
            return
        who = f"{held.get('host', '?')}:{held.get('pid', '?')}"
        print(f"[lit-caps] taking over {path.with_suffix('.pt')}: the claim of {who} expired "
              f"({held.get('age_s', 0):.0f} s old, or its process is gone)", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tomb)


def ensure_writable(folder, root=None) -> Path:
    """Create ``folder`` and check that files can be written there; a read-only one raises
    :class:`~lit_caps.errors.NotWritableError` (a PermissionError and a UserError: one line from
    the CLI) naming ``root`` (e.g. ``--out``) and the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            where = f"{root} ({e.filename or folder})" if root is not None else str(e.filename or folder)
            raise NotWritableError(f"cannot write to the results folder {where}: {e.strerror}; choose a writable "
                                   f"--out (out_dir) or fix the folder's permissions") from None
        raise
    return folder


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
    claim_wait_s: float | None = None,
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
        claim_wait_s: independent processes (``world_size`` 1 each, e.g. two sweep agents, or
            machines sharing the results folder) split the chunks through claim files (module doc);
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

    Returns the result dict (``status == "complete"``; ``path`` and the settings' checkpoint paths
    are where the file was found, see :func:`parse_result`), or, on a rank that cannot assemble yet,
    ``{"status": "incomplete", "name", "path", "chunks_total", "chunks_done", "missing_chunks"}``.
    A results folder that cannot be written raises a PermissionError naming it.
    """
    # numbers only: names are checked where they are resolved (a custom attack_fn may know other attacks)
    check_attack_args(beta=beta, eps=eps, n=n, chunk_size=chunk_size)
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
    cdir = chunk_dir(out_dir, dataset_name, model_name, name, shash)

    cached = _cached(path, shash) or _restore_superseded(path, shash)
    if cached is not None:
        return cached

    chunks = [positions[i:i + chunk_size] for i in range(0, n_eff, chunk_size)]
    store = _Chunks(cdir, chunk_dir(out_dir, dataset_name, model_name, name), shash, chunks)
    mine = list(range(rank, len(chunks), world_size))
    if only_cached:
        pend = _incomplete(name, path, store)
        pend.update(status="pending", settings=cfg, settings_hash=shash, stale=path.is_file())
        return pend

    todo = store.missing(mine)
    if todo:
        ensure_writable(cdir, root=out_dir)
        worker = _Worker(model, attacked, dataset, attack_name, attack_fn, attack_settings, dev, eps, beta, targeted,
                         attack_threshold, threshold, seed, positions, chunks, chunk_size, shash, compile,
                         trust_best_flag=source_model is None)
        bar = _tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{model_name}/{name}", disable=not progress)
        try:
            _work(store, mine, worker, bar, claim_wait_s, label=f"{dataset_name}/{model_name}/{name}")
        finally:
            bar.close()
            worker.close()

    ddp = _dist_group(world_size)
    if ddp:
        ddp.barrier()
    if rank != 0:
        if ddp:
            ddp.barrier()  # rank 0 has written the result (or found chunks missing)
        done = _cached(path, shash)
        return done if done is not None else _incomplete(name, path, store)

    deadline = time.monotonic() + float(wait_s)
    while True:
        missing = store.missing(range(len(chunks)))
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    if missing:
        if ddp:
            ddp.barrier()
        return _incomplete(name, path, store)

    done = _cached(path, shash)  # another process (sharing the chunks) has assembled it meanwhile
    if done is None:
        result = _assemble([store.get(c) for c in range(len(chunks))], cfg, shash, name, path, val, world_size,
                           dev, [store.found_at(c) for c in range(len(chunks))])
        ensure_writable(path.parent, root=out_dir)
        _keep_superseded(path, shash)
        _write_result(path, result)
        done = load_result(path)
    if ddp:
        ddp.barrier()
    return done


class _Worker:
    """Attacks chunks for :func:`evaluate_attack`; sets up (targets, the attack, compiled forwards,
    eval mode) on the first chunk it computes, restores the models' modes on :meth:`close`."""

    def __init__(self, model, attacked, dataset, attack_name, attack_fn, attack_settings, dev, eps, beta, targeted,
                 attack_threshold, threshold, seed, positions, chunks, chunk_size, shash, compile, trust_best_flag):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.stack = contextlib.ExitStack()
        self.modes = None
        self.attack = None

    def _setup(self) -> None:
        # targets for the whole subset from one generator seeded by `seed`: independent of chunks/ranks
        self.targets = None
        if self.targeted:
            ys = torch.tensor([int(self.dataset[int(p)][1]) for p in self.positions], dtype=torch.long)
            num_classes = int(getattr(self.model, "num_classes", 10))
            self.targets = random_targets(ys, num_classes, torch.Generator().manual_seed(int(self.seed))).long().cpu()
        attack_fn = self.attack_fn
        if attack_fn is None:
            from .attacks import build_attack as attack_fn  # lazy: no import-time dependency
        kw = dict(self.attack_settings)
        kw.pop("eps", None)
        if self.beta is not None:
            kw["beta"] = float(self.beta)
        self.modes = [(m, m.training) for m in {id(self.model): self.model, id(self.attacked): self.attacked}.values()]
        for m, _ in self.modes:
            m.to(self.dev).eval()
        self.compiled = self.stack.enter_context(
            compiled_forward((self.model, self.attacked), compile_requested(self.compile)))
        self.attack = attack_fn(self.attack_name, self.attacked, eps=self.eps, targeted=bool(self.targeted),
                                threshold=self.attack_threshold, **kw)

    def compute(self, c: int, path: Path) -> None:
        if self.attack is None:
            self._setup()
        pos = self.chunks[c]
        x, y, idx = _load_examples(self.dataset, pos)
        cs = self.chunk_size
        t = self.targets[c * cs: c * cs + len(pos)] if self.targets is not None else None
        started, t0 = time.time(), time.perf_counter()
        rec = run_chunk(self.model, self.attack, x, y, idx, t, threshold=float(self.threshold), seed=int(self.seed),
                        chunk_id=c, device=self.dev, trust_best_flag=self.trust_best_flag)
        wall = time.perf_counter() - t0
        finished = time.time()
        run = {"host": _HOST, "pid": os.getpid(), "started_at": _iso(started), "finished_at": _iso(finished),
               "finished_unix": finished, "device": str(self.dev), "compiled": bool(self.compiled),
               "wall_time_s": wall, "torch_version": str(torch.__version__), "python": platform.python_version(),
               "lit_caps_version": _lc_version()}
        blob = {"settings_hash": self.shash, "chunk": c, "positions": [int(p) for p in pos], "records": rec,
                "wall_time_s": wall, "device": str(self.dev), "compiled": bool(self.compiled), "run": run}
        blob[io.CHECKSUM_KEY] = _chunk_checksum(blob)
        io.atomic_write(path, lambda f: torch.save(blob, f))

    def close(self) -> None:
        self.stack.close()
        for m, mode in self.modes or ():
            m.train(mode)


def _work(store: _Chunks, ids: list[int], worker: _Worker, bar, claim_wait_s: float | None, label: str) -> None:
    """Compute the missing chunks among ``ids``, each under a claim: claimed chunks are skipped,
    the next free one taken; when only chunks other live processes hold are left, wait for them
    (up to ``claim_wait_s``; None: as long as their claims stay live) and take over any whose
    claim expires."""
    deadline = None if claim_wait_s is None else time.monotonic() + float(claim_wait_s)
    waiting = False
    shown = None
    while True:
        pending = store.missing(ids)
        done = len(ids) - len(pending)
        if shown is not None and done > shown:  # the bar counts the chunks other processes finish too
            bar.update(done - shown)
        shown = done
        if not pending:
            return
        took = False
        for c in pending:
            claim = ChunkClaim.acquire(store.claim_path(c))
            if claim is None:
                continue
            try:
                if store.get(c) is None:  # not finished by another process between our look and our claim
                    worker.compute(c, store.path(c))
                    if store.get(c) is None:
                        raise RuntimeError(f"chunk {c} written to {store.path(c)} does not read back")
            finally:
                claim.release()
            took = True
            break
        if took:
            waiting = False
            continue
        if deadline is not None and time.monotonic() >= deadline:
            return
        if not waiting:
            holders = sorted({f"{i.get('host', '?')}:{i.get('pid', '?')}"
                              for i in (claim_status(store.claim_path(c))[1] for c in pending)})
            print(f"[lit-caps] {label}: waiting for chunk(s) {pending} that other process(es) compute "
                  f"({', '.join(holders)})", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(_claim_poll_s())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def _lc_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("lit_caps")
    except Exception:  # noqa: BLE001
        return None


def _keep_superseded(path: Path, shash: str) -> Path | None:
    """Move a finished result made with other settings (e.g. another model: a retrained default
    config) out of the way instead of writing over it: to ``<dir>/superseded/<name>-<its hash>.json``.
    Tables only read ``<dir>/*.json``, so it stays on disk without being mixed in. A damaged file is
    moved aside instead (:func:`lit_caps.io.move_aside`)."""
    ident = io.file_identity(path)
    if ident is None:
        return None
    try:
        old = load_result(path).get("settings_hash") or "unknown"
    except FileNotFoundError:
        return None
    except DamagedFileError as e:
        io.move_aside(path, getattr(e, "why", str(e)), then="writing the new result", identity=ident)
        return None
    if old == shash:
        return None
    dest = path.parent / "superseded" / f"{path.stem}-{old}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if io.file_identity(path) != ident:  # rewritten meanwhile by another process: look again
        return _keep_superseded(path, shash)
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None
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
    try:
        os.replace(old, path)
    except FileNotFoundError:  # another process restored it first
        return _cached(path, shash)
    print(f"note: restored {path} from {old} (same settings)", flush=True)
    return _cached(path, shash)


def _cached(path: Path, shash: str) -> dict | None:
    """The one place an existing result is looked up: the finished result at ``path`` if it has
    these settings, else None. A damaged file is moved aside (a note on stderr) and recomputed."""
    ident = io.file_identity(path)
    if ident is None:
        return None
    try:
        r = load_result(path)
    except FileNotFoundError:
        return None
    except DamagedFileError as e:
        io.move_aside(path, getattr(e, "why", str(e)), then="recomputing it (from its chunks where they exist)",
                      identity=ident)
        return None
    except OSError:  # unreadable (permissions): as if absent
        return None
    return r if r.get("settings_hash") == shash and r.get("status") == "complete" else None


def _incomplete(name, path, store: _Chunks) -> dict:
    missing = store.missing(range(len(store.chunks)))
    return {"status": "incomplete", "name": name, "path": str(path), "chunks_total": len(store.chunks),
            "chunks_done": len(store.chunks) - len(missing), "missing_chunks": missing}


def _most_common(values, fallback):
    vals = [v for v in values if v is not None]
    if not vals:
        return fallback
    counts = collections.Counter(vals)
    top = max(counts.values())
    return sorted((v for v, k in counts.items() if k == top), key=str)[0]


def _assemble(blobs, cfg, shash, name, path, val, world_size, dev, chunk_paths) -> dict:
    """The result from its chunks. Everything in it derives from the chunks (their records and
    run info), the settings and ``world_size``, so two processes that assemble the same chunks
    write the same bytes (chunks from before per-chunk run info: the assembler's, and the
    chunk files' modification times)."""
    rec = {k: torch.cat([b["records"][k] for b in blobs]) for k in EXAMPLE_FIELDS}
    examples = {k: rec[k].tolist() for k in EXAMPLE_FIELDS}
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
        "wall_time_s": sum(chunk_times), "chunk_wall_time_s": chunk_times,
        "finished_at": _iso(max(finished)), "lit_caps_version": pick("lit_caps_version", _lc_version()),
        "host": pick("host", socket.gethostname()), "python": pick("python", platform.python_version()),
        "chunk_workers": [f"{r['host']}:{r['pid']}" if r.get("host") else None for r in runs],
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
