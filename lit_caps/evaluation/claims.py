"""Chunk claims: several processes (or machines on one filesystem) share one evaluation.

Independent processes (sweep agents, machines sharing the results folder) split the chunks through
*claims*: before computing a chunk a process creates ``chunk_NNNNN.claim`` atomically
(``O_CREAT | O_EXCL``; pid, host, time), refreshes its modification time every
``LIT_CAPS_CLAIM_HEARTBEAT_S`` (30) seconds while it works and removes it when done; the others skip
claimed chunks, take the next free one, and once none is free wait for the claimed ones
(``claim_wait_s``) and assemble. A claim expires when its process is gone (same host) or its file
was not refreshed for ``LIT_CAPS_CLAIM_TTL_S`` (300) seconds (any host; clocks should agree to well
within that); an expired claim is taken over.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from .. import io

#: this machine's name, as claims and chunk files record it.
HOST = socket.gethostname()
_LIVE_TOKENS: set = set()  # the claims this process holds


def claim_ttl_s() -> float:
    """``LIT_CAPS_CLAIM_TTL_S`` (default 300): a claim whose file was not refreshed for this long is
    expired (its process died or hangs, on any machine)."""
    return float(os.environ.get("LIT_CAPS_CLAIM_TTL_S", 300))


def claim_heartbeat_s() -> float:
    """``LIT_CAPS_CLAIM_HEARTBEAT_S`` (default 30, at most a third of the TTL): how often a
    working process refreshes its claim file's modification time."""
    return min(float(os.environ.get("LIT_CAPS_CLAIM_HEARTBEAT_S", 30)), claim_ttl_s() / 3)


def claim_poll_s() -> float:
    """How often a process waiting for chunks other processes hold looks again."""
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
    if info.get("host") == HOST and isinstance(pid, int):
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
        token = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        info = {"pid": os.getpid(), "host": HOST, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
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
