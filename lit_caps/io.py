"""Atomic files: a result is either complete on disk or absent (temp file in the same folder, then
``os.replace``), so a run killed at any moment never leaves a truncated file behind."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .errors import DamagedFileError


def unique_tmp(path: str | os.PathLike) -> Path:
    """A temp name beside ``path`` that no other process uses (pid + random suffix)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{os.urandom(3).hex()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(f)`` on a binary temp file beside ``path``, fsync, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    data = text.encode()
    return atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path: str | os.PathLike, obj, **dumps_kwargs) -> Path:
    kw = {"indent": 2, "sort_keys": True, "default": str} | dumps_kwargs
    return write_text_atomic(path, json.dumps(obj, **kw))


# -- checksums and damaged files (result and chunk files of lit_caps.evaluation) ---------------------------
CHECKSUM_KEY = "sha256"


def canonical_json(obj) -> bytes:
    """The canonical bytes of a JSON-safe object: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def json_checksum(obj: dict) -> str:
    """sha256 (hex) of ``obj``'s canonical JSON without its :data:`CHECKSUM_KEY` field. A file
    written with :func:`with_checksum` and read back gives the same value (JSON floats round-trip)."""
    import hashlib

    return hashlib.sha256(canonical_json({k: v for k, v in obj.items() if k != CHECKSUM_KEY})).hexdigest()


def with_checksum(obj: dict) -> dict:
    """A copy of ``obj`` (JSON-safe) with its checksum as the last field."""
    out = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
    out[CHECKSUM_KEY] = json_checksum(out)
    return out


def checksum_ok(obj: dict) -> bool | None:
    """True / False when ``obj`` carries a checksum that matches / does not; None when it has none."""
    want = obj.get(CHECKSUM_KEY) if isinstance(obj, dict) else None
    if want is None:
        return None
    return want == json_checksum(obj)


def tensors_checksum(tensors: dict, meta=None) -> str:
    """sha256 (hex) over named tensors (name, dtype, shape and bytes, in sorted name order) and a
    JSON-safe ``meta`` (canonical JSON): the checksum of a chunk file's records."""
    import hashlib

    import torch

    h = hashlib.sha256(canonical_json(meta if meta is not None else {}))
    for k in sorted(tensors):
        t = torch.as_tensor(tensors[k]).detach().cpu().contiguous()
        h.update(f"|{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_identity(path) -> tuple | None:
    """(device, inode, size, mtime_ns) of a file, or None when it is not there: a file replaced
    (atomically) since it was read has another identity."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def move_aside(path, why: str, then: str = "recomputing it", identity: tuple | None = None) -> Path | None:
    """Rename a damaged file to ``<name>.damaged-<timestamp>`` beside it, with a one-line note on
    stderr naming it and why. With ``identity`` (:func:`file_identity` when it was read) a file
    replaced meanwhile (another process rewrote it) is left alone. Returns the new path, or None
    when nothing was moved (gone, replaced, or the folder is read-only: said in the note)."""
    import sys
    import time

    path = Path(path)
    if identity is not None and file_identity(path) != identity:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    if dest.exists():
        dest = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    except OSError as e:
        print(f"[lit-caps] damaged file {path} ({why}); could not move it aside ({e.strerror}); ignoring it",
              file=sys.stderr, flush=True)
        return None
    print(f"[lit-caps] damaged file {path} ({why}); moved to {dest.name}, {then}", file=sys.stderr, flush=True)
    return dest


# -- checkpoints -------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, *, recover_hint: str, map_location="cpu") -> dict:
    """``torch.load`` of a checkpoint with ``weights_only=True`` (tensors and plain containers only:
    nothing in the file is executed). A file that cannot be read back (truncated, random bytes, not
    a checkpoint) raises :class:`~lit_caps.errors.DamagedFileError` with one line naming the file
    and ``recover_hint`` (the command that recovers). A missing file raises FileNotFoundError."""
    import torch

    path = Path(path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever the unpickler says, the file is unusable
        # the first line of torch's message, unless it suggests weights_only=False (that would run
        # code from the file): then only the kind of error
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        reason = (type(e).__name__ if "weights_only" in str(e) or not first
                  else f"{type(e).__name__}: {first if len(first) <= 120 else first[:117] + '...'}")
        raise DamagedFileError(f"{path} is damaged and cannot be loaded ({reason}; {path.stat().st_size} bytes); "
                               f"{recover_hint}") from None
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise DamagedFileError(f"{path} is damaged (it loads, but holds no model state_dict); {recover_hint}")
    return ck
