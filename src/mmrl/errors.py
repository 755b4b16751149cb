"""Errors a user can fix, and the interruption of a run.

Every exception class whose message is meant for the user (a wrong value, a missing or
damaged file, a busy run folder, no network for the default backbone) derives from
:class:`UserError`; the command line prints such an error as ONE line
(``mmrl: error: ...``) and exits non-zero, without a traceback unless ``--debug`` (or
``MMRL_DEBUG=1``) is given. No torch here: light modules import this.
"""
from __future__ import annotations

import os
import re


class UserError(Exception):
    """A mistake or a situation the user can fix; the message says what and how."""


class RunLockedError(UserError):
    """Another live process is writing into the same run folder."""


class NotWritableError(UserError, PermissionError):
    """A folder an mmrl command must write into cannot be written (checked before the work)."""


class CorruptFileError(UserError, ValueError):
    """A file mmrl wrote earlier (adapter, checkpoint) is truncated, damaged or does not fit the run."""


class BackboneUnavailableError(UserError):
    """The weights of a pretrained backbone are neither cached nor downloadable (e.g. offline)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run; the message says where and how to resume it.

    A KeyboardInterrupt so that code which stops on Ctrl-C keeps doing so.
    """




# ---------------------------------------------------------------------------- how errors are shown
DEBUG_ENV = "MMRL_DEBUG"
_debug_flag = False


def set_debug(on: bool) -> None:
    """Debug mode of this process (``--debug``); the environment variable also turns it on."""
    global _debug_flag
    _debug_flag = bool(on)


def debug_enabled() -> bool:
    """``--debug`` was given, or ``MMRL_DEBUG`` is set to 1/true/yes/on."""
    return _debug_flag or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


_WORKER_TRACEBACK = "Original Traceback (most recent call last)"
_EXC_PREFIX = re.compile(r"^[A-Za-z_][\w.]*: ")


def error_line(e: BaseException) -> str:
    """The exception's message on one line.

    An exception raised in a DataLoader worker process is re-raised in the main process
    with a message that embeds the worker's traceback; its last line is the original
    ``Type: message``, of which the message is kept.
    """
    msg = str(e)
    if _WORKER_TRACEBACK in msg:
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        msg = _EXC_PREFIX.sub("", lines[-1].strip(), count=1) if lines else msg
    return " ".join(ln.strip() for ln in msg.splitlines() if ln.strip()) or type(e).__name__


__all__ = ["UserError", "RunLockedError", "NotWritableError", "CorruptFileError", "BackboneUnavailableError",
           "RunInterrupted", "DEBUG_ENV", "set_debug", "debug_enabled", "error_line"]
