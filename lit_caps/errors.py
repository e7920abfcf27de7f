"""User errors: mistakes a user can fix (a typo, missing data, a damaged file, a busy run folder).

The CLI prints ``str(error)`` as one line on stderr and exits 2, with no traceback
(``LIT_CAPS_DEBUG=1`` shows it). The message names the fix. Anything else is a bug and keeps its
traceback. Library code raises these; only ``cli.main`` catches them.
"""
from __future__ import annotations


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
