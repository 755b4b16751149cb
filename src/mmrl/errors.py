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
import reprlib
import unicodedata
from typing import Any


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


class PromptError(UserError, ValueError):
    """A class set whose prompts the text tower cannot tell apart (identical once cut to its context)."""


class UntrustedFileError(UserError, ValueError):
    """A file whose loading could run code written by its author (a ``.pt2`` archive, which
    ``torch.export.load`` may unpickle), and the caller has not said that it trusts the file."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run; the message says where and how to resume it.

    A KeyboardInterrupt so that code which stops on Ctrl-C keeps doing so.
    """




# ---------------------------------------------------------------------------- how errors are shown
SHOWN_MAX = 100        # characters of one value echoed in an error message
ERROR_LINE_MAX = 1000  # characters of a whole error line (a backstop: values are cut by shown())

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = SHOWN_MAX - 20  # strings and odd objects: head ... tail
_shown.maxlist = _shown.maxtuple = _shown.maxset = _shown.maxfrozenset = _shown.maxdeque = 6
_shown.maxdict = 4
_shown.maxlevel = 3


def shown(value: Any) -> str:
    """``repr(value)`` cut to at most SHOWN_MAX characters, for echoing a value in an error message.

    Values come from files and command lines of others: a long string, a deep or long list
    must not make a huge error line. reprlib looks at a few items of each container, a few
    levels deep, so this is cheap even for an enormous value.
    """
    try:
        text = _shown.repr(value)
    except Exception:  # a repr that fails (e.g. an int of more digits than Python converts)
        text = f"<{type(value).__name__}>"
    return clip(text)


def clip(text: str, limit: int = SHOWN_MAX) -> str:
    """``text`` cut to at most ``limit`` characters (``...`` marks the cut): for a message that
    quotes text from elsewhere as it is (another library's error, a line of a file)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def printable(text: str) -> str:
    """``text`` with every control or format character written as its escape (``\\n``, ``\\x1b``,
    ``\\u202e``): for names and paths from files of others shown on a terminal or in a report, where an
    ANSI escape would recolour or rewrite the screen, a NUL or newline cut the line, a bidi override
    reorder it. Everything else, backslashes included, is kept as it is."""
    if text.isprintable():  # the common case, in C
        return text
    # isprintable() is also False for spaces other than " " (e.g. a no-break space): those are kept
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text)


# control, format (bidi overrides, zero-width), line / paragraph separators, unassigned, surrogates
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn", "Cs"})


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
    ``Type: message``, of which the message is kept. A line longer than ERROR_LINE_MAX is cut
    in the middle.
    """
    msg = str(e)
    if _WORKER_TRACEBACK in msg:
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        msg = _EXC_PREFIX.sub("", lines[-1].strip(), count=1) if lines else msg
    line = " ".join(ln.strip() for ln in msg.splitlines() if ln.strip()) or type(e).__name__
    if len(line) > ERROR_LINE_MAX:  # a message that echoes a huge text whole: keep its start and end
        line = f"{line[:ERROR_LINE_MAX * 3 // 4]} [...] {line[-ERROR_LINE_MAX // 5:]}"
    return line


__all__ = ["UserError", "RunLockedError", "NotWritableError", "CorruptFileError", "BackboneUnavailableError",
           "UntrustedFileError", "RunInterrupted", "DEBUG_ENV", "set_debug", "debug_enabled", "error_line",
           "shown", "clip", "printable", "SHOWN_MAX"]
