"""Errors a user can fix, and the interruption of a run.

Every exception class whose message is meant for the user (a wrong value, a missing or
damaged file, a busy run folder, no network for the default backbone) derives from
:class:`UserError`; the command line prints such an error as ONE line
(``mmrl: error: ...``) and exits non-zero, without a traceback unless ``--debug`` (or
``MMRL_DEBUG=1``) is given. No torch here: light modules import this.
"""
from __future__ import annotations


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


__all__ = ["UserError", "RunLockedError", "NotWritableError", "CorruptFileError", "BackboneUnavailableError",
           "RunInterrupted"]
