"""Result files of :func:`~lit_caps.evaluation.evaluate_attack`: names and paths, the query of a
results folder, identities (hashes), the JSON file form, reading and checking a file.

One result file per settings::

    <out_dir>/<dataset>/<model>/<attack>-<targeted|untargeted>[-beta<b>]-eps<e>-n<N>-s<seed>[-bb<h>].json

``-bb<h>`` marks a black-box transfer result (``source_model`` given, paper Section 3 "Threat
Model" and Table 7): the adversarial examples are crafted on the source (substitute) model, with
its own predicted-class reconstructions for the R-* attacks and its own threshold (if any) for the
attack's best-iterate bookkeeping, and success / undetected are measured on the target ``model``
with the target's threshold. ``<h>`` = the first 8 hex digits of the source's model hash.
:func:`result_name` writes these names and :func:`parse_result_name` reads them back;
:func:`find_results` lists the result files of one (attack, targeted, eps, n, seed), any beta.

**Integrity.** Result files carry a sha256 checksum (``sha256``: of the canonical JSON without that
field). A damaged file (truncated, random bytes, checksum mismatch) is moved aside to
``<name>.damaged-<timestamp>`` with a one-line note on stderr naming it, and recomputed (from its
chunks). Result files from before checksums (schema 1) are read when their summary recounts from
their examples (:func:`parse_result`).

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
               chunks), chunk_wall_time_s, cpu_time_s (process CPU time summed over chunks; null when a
               chunk predates it), threads (torch's, most common over chunks), finished_at (the last chunk's), lit_caps_version, host, python,
               chunk_workers ("host:pid" that computed each chunk)},
    summary:  {n, clean_accuracy, clean_flagged_rate, success_rate, success_ci, undetected_rate,
               undetected_ci, best_undetected_rate, best_undetected_ci, roc_auc,
               mean_clean_dist, mean_adv_dist, mean_adv_dist_success, mean_adv_dist_undetected,
               mean_linf, max_linf, mean_l2, linf_violations, mean_iterations,
               undetected_vs_fpr: {fpr: [...], undetected_rate: [...]}},
    examples: {index, y, target, clean_pred, clean_dist, adv_pred, adv_dist, success, undetected,
               best_undetected, linf, l2, iterations[, first_undetected]},   # column lists: pandas.DataFrame(r["examples"])
    sha256
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import io
from ..errors import DamagedFileError, NotWritableError

#: 2: a checksum (``sha256``) and store-relative paths; 1 (read, never written): neither.
SCHEMA = 2
#: per-example fields of a result, in order (``target`` is None for untargeted attacks).
EXAMPLE_FIELDS = ("index", "y", "target", "clean_pred", "clean_dist", "adv_pred", "adv_dist", "success",
                  "undetected", "best_undetected", "linf", "l2", "iterations")
#: per-example fields a result has when every chunk of it has them: ``first_undetected`` (the
#: iteration at which best-iterate scoring first counted the example, -1 if never; attacks with a
#: threshold, from :attr:`~lit_caps.attacks.AttackResult.first_undetected`).
OPTIONAL_EXAMPLE_FIELDS = ("first_undetected",)
#: settings recorded but not part of the identity hash (a copy of a checkpoint is the same model).
_UNHASHED = ("checkpoint", "source_checkpoint")
#: settings that are paths: recorded relative to the store, resolved from where the file is found.
_PATH_SETTINGS = ("checkpoint", "source_checkpoint")


# -- names: written by result_name, read back by parse_result_name (keep the two side by side) ----
def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{float(v):g}"


def result_name(attack: str, targeted: bool, eps: float | None, n: int, seed: int, beta: float | None = None,
                source_hash: str | None = None, precision: str = "fp32", loss: str = "ce") -> str:
    """``<attack>-<targeted|untargeted>[-beta<b>]-eps<e>-n<N>-s<seed>[-<loss>][-<precision>][-bb<h>]``
    (no extension); ``e`` is ``f"{eps:g}"`` (0.3, 0.0313725) or ``none`` for unbounded attacks (CW-L2);
    ``-<loss>`` when the classifier loss is not the paper's cross-entropy (``cw``, ``dlr``, ``logodds``);
    ``-bf16`` when the attack's iterations ran under bf16 autocast (the fast path; fp32 names carry
    nothing, so they are what they always were); ``-bb<h>`` (black-box transfer from a source model)
    with ``h`` the first 8 hex digits of the source's model hash."""
    parts = [attack, "targeted" if targeted else "untargeted"]
    if beta is not None:
        parts.append(f"beta{_fmt(beta)}")
    parts += [f"eps{_fmt(eps)}", f"n{int(n)}", f"s{int(seed)}"]
    if loss != "ce":
        parts.append(str(loss))
    if precision != "fp32":
        parts.append(str(precision))
    if source_hash is not None:
        parts.append(f"bb{source_hash[:8]}")
    return "-".join(parts)


_G = r"-?(?:inf|nan|\d+(?:\.\d+)?(?:e[-+]\d+)?)"  # what f"{x:g}" writes
_NAME_RE = re.compile(rf"(?P<attack>.+)-(?P<targeted>targeted|untargeted)(?:-beta(?P<beta>{_G}))?"
                      rf"-eps(?P<eps>none|{_G})-n(?P<n>\d+)-s(?P<seed>-?\d+)(?:-(?P<loss>cw|dlr|logodds))?"
                      rf"(?:-(?P<precision>bf16))?"
                      rf"(?:-bb(?P<source_hash>[0-9a-f]+))?")


def parse_result_name(name: str) -> dict | None:
    """The settings in a name written by :func:`result_name` (with or without ``.json``), as
    :func:`result_name`'s arguments: ``{attack, targeted, eps, n, seed, beta, source_hash, precision, loss}``
    (``result_name(**parse_result_name(x)) == x``); None for any other name. ``eps`` and ``beta``
    are what the name holds (``f"{v:g}"``: 6 significant digits)."""
    m = _NAME_RE.fullmatch(name[:-len(".json")] if name.endswith(".json") else name)
    if m is None:
        return None
    num = lambda s: None if s is None or s == "none" else float(s)  # noqa: E731
    return {"attack": m["attack"], "targeted": m["targeted"] == "targeted", "eps": num(m["eps"]),
            "n": int(m["n"]), "seed": int(m["seed"]), "beta": num(m["beta"]), "source_hash": m["source_hash"],
            "precision": m["precision"] or "fp32", "loss": m["loss"] or "ce"}


def find_results(out_dir, dataset: str, model: str, *, attack: str, targeted: bool, eps: float | None, n: int,
                 seed: int, source_hash: str | None = None, precision: str = "fp32",
                 loss: str = "ce") -> list[tuple[float | None, Path]]:
    """``(beta, path)`` of every result file of these settings under ``out_dir`` (any beta; None for
    a name without one), from the file names alone, ordered by beta (None first). White-box results
    only unless ``source_hash`` (black-box transfer from that source model) is given. Files kept under
    ``superseded/`` are not listed; whether a file's settings match is checked when it is read."""
    out = []
    for p in (Path(out_dir) / dataset / model).glob("*.json"):
        got = parse_result_name(p.name)
        if got is None or not p.is_file():
            continue
        # the name these settings and the file's beta would have: eps compared as written (f"{eps:g}")
        if p.stem == result_name(attack, targeted, eps, n, seed, got["beta"], source_hash=source_hash,
                                 precision=precision, loss=loss):
            out.append((got["beta"], p))
    return sorted(out, key=lambda bp: (bp[0] is not None, bp[0] or 0.0, bp[1].name))


def result_path(out_dir, dataset: str, model: str, name: str) -> Path:
    return Path(out_dir) / dataset / model / f"{name}.json"


def chunk_dir(out_dir, dataset: str, model: str, name: str, settings_hash: str | None = None) -> Path:
    """``<out_dir>/<dataset>/<model>/.chunks/<name>/<settings hash>``: one folder per settings, so
    evaluations of other settings under the same name (another checkpoint, threshold, ...) never
    touch each other's chunks or claims. Without ``settings_hash``: the folder that held the chunks
    of every settings before (still read, never written)."""
    d = Path(out_dir) / dataset / model / ".chunks" / name
    return d if settings_hash is None else d / settings_hash


# -- identities ----------------------------------------------------------------------------------
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
    return hashlib.sha256(json.dumps(jsonable(ident), sort_keys=True).encode()).hexdigest()[:16]


def jsonable(v: Any) -> Any:
    """JSON-safe copy: tensors/arrays -> lists, NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Tensor):
        return jsonable(v.detach().cpu().tolist())
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


# -- the file form: store-relative paths, checksum -----------------------------------------------
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
    r = jsonable(result)
    r["path"] = _rel_to_store(r["path"], store)
    st = dict(r["settings"])
    for k in _PATH_SETTINGS:
        if st.get(k) is not None:
            st[k] = _rel_to_store(st[k], store)
    r["settings"] = st
    return io.with_checksum(r)


def write_result(path: Path, result: dict) -> None:
    io.write_json_atomic(path, _file_form(result, store_of(path)), indent=1, sort_keys=False, default=None)


# -- reading and checking ------------------------------------------------------------------------
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


def results_frame(result: dict):
    """The per-example outcomes of a result as a pandas DataFrame."""
    import pandas as pd
    return pd.DataFrame(result["examples"])
