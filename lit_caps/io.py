"""Atomic files: a result is either complete on disk or absent (temp file in the same folder, then
``os.replace``), so a run killed at any moment never leaves a truncated file behind."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(f)`` on a binary temp file beside ``path``, fsync, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
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
