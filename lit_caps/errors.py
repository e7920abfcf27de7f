"""User errors: mistakes a user can fix (a typo, missing data, a damaged file, a busy run folder).

The CLI prints ``str(error)`` as one line on stderr and exits 2, with no traceback
(``LIT_CAPS_DEBUG=1`` shows it). The message names the fix. Anything else is a bug and keeps its
traceback. Library code raises these; only ``cli.main`` catches them (:func:`user_error_message`).
"""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A mistake the user can fix; the message says how (one line)."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """An unknown config key, a value of the wrong type, or an unknown config name."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """No config of that name (``--arch``, ``--train``, ``--data``) or no such ``--config`` file."""


class InvalidArgumentError(UserError, ValueError):
    """A command-line or API argument out of range (beta 1.5, eps < 0, n = 0, an unknown attack...)."""


class DamagedFileError(UserError):
    """A checkpoint, chunk or result file that cannot be read back (truncated, random bytes)."""


class RunBusyError(UserError):
    """A run folder (or result) another process holds the lock on."""


class NotWritableError(UserError, PermissionError):
    """An output folder (--runs, --out, --reports) that cannot be written to."""


def one_line(msg: str) -> str:
    """A multi-line message (the data module's, a run lookup's) joined into one line."""
    out = ""
    for part in (" ".join(line.split()) for line in str(msg).splitlines()):
        if not part:
            continue
        if not out:
            out = part
        elif out.endswith((":", ".", ";")) or part.startswith("("):
            out += " " + part
        else:
            out += "; " + part
    return out


#: OS errors that a user fixes (a folder without write permission, a read-only or full disk)
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def user_error_message(e: BaseException, sweep: bool = False) -> str | None:
    """The one-line message of a user error, None for anything else (a bug: it keeps its traceback).
    ``sweep``: a ValueError is a malformed or unsupported sweep YAML (``lit-caps sweep``)."""
    if isinstance(e, UserError):
        return one_line(str(e))
    if isinstance(e, OSError) and e.errno in USER_ERRNOS:
        where = e.filename if e.filename is not None else "a file"
        folder = os.path.dirname(os.path.abspath(where)) if e.filename is not None else "its folder"
        return (f"cannot write {where}: {e.strerror}; choose another output folder (--runs, --out, --reports) "
                f"or make {folder} writable")
    if sweep and isinstance(e, ValueError):
        return one_line(str(e))
    return None
