"""Reusing finished results: the one look-up of an existing result file (:func:`cached_result`),
and results made with other settings kept under ``superseded/`` instead of being written over
(:func:`keep_superseded`), put back when their settings come back (:func:`restore_superseded`)."""
from __future__ import annotations

import os
from pathlib import Path

from .. import io
from ..errors import DamagedFileError
from .results import load_result


def keep_superseded(path: Path, shash: str) -> Path | None:
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
        return keep_superseded(path, shash)
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None
    print(f"note: {path} held a result made with other settings (settings hash {old}, e.g. another "
          f"checkpoint); kept as {dest}", flush=True)
    return dest


def restore_superseded(path: Path, shash: str) -> dict | None:
    """A finished result with exactly these settings kept under ``superseded/`` (e.g. from before a
    default config changed and changed back) is put back in place instead of being recomputed; the
    result it replaces is kept there in turn."""
    old = path.parent / "superseded" / f"{path.stem}-{shash}.json"
    if cached_result(old, shash) is None:
        return None
    keep_superseded(path, shash)
    try:
        os.replace(old, path)
    except FileNotFoundError:  # another process restored it first
        return cached_result(path, shash)
    print(f"note: restored {path} from {old} (same settings)", flush=True)
    return cached_result(path, shash)


def cached_result(path: Path, shash: str) -> dict | None:
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
