"""Helpers shared by the subcommands (mmrl.commands.train, eval, ...): error reporting, debug mode, flags.

Errors a user can fix (:class:`mmrl.errors.UserError` and its kin) are printed as ONE line,
``mmrl: error: ...``, with a non-zero exit status and no traceback; ``mmrl --debug`` (or
``MMRL_DEBUG=1`` in the environment) lets every exception through with its full traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Callable, Iterator, Mapping

from mmrl.errors import DEBUG_ENV, debug_enabled, error_line, set_debug  # noqa: F401 (the CLI's helpers)
from mmrl.errors import shown
from mmrl.vocab import LOGIT_CHOICES, SUBSAMPLES


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user: one line, no traceback.

    ``UserError`` covers ConfigError, DataError, MissingDataError, BadImageError,
    NonFiniteLossError, RunLockedError, NotWritableError, CorruptFileError and
    BackboneUnavailableError; a plain FileNotFoundError names the missing path.
    """
    from mmrl.errors import UserError

    return (UserError, FileNotFoundError)


def exit_status(e: BaseException) -> int:
    """2 for a configuration error (like argparse's usage errors), else 1."""
    from mmrl.config import ConfigError

    return 2 if isinstance(e, ConfigError) else 1


def report_error(e: BaseException, hint: str = "") -> int:
    """Print ``mmrl: error: <message><hint>`` on stderr; return the exit status."""
    print(f"mmrl: error: {error_line(e)}{hint}", file=sys.stderr, flush=True)
    return exit_status(e)


def run_reporting_errors(fn: Callable[[], int], extra: tuple[type[BaseException], ...] = (),
                         hints: Mapping[type[BaseException], str] | None = None) -> int:
    """Run ``fn``; print a user-fixable error (``user_errors()`` and ``extra``) as one line
    ``mmrl: error: ...`` and return 2 (config) or 1. ``hints`` maps an exception type to
    text appended to its message (e.g. the flag of this command that skips bad images).
    In debug mode the exception propagates with its traceback."""
    try:
        return fn()
    except user_errors() + tuple(extra) as e:
        if debug_enabled():
            raise
        hint = next((h for t, h in (hints or {}).items() if isinstance(e, t)), "")
        return report_error(e, hint)


def _raise_interrupt(signum, frame):  # SIGTERM (kill, scancel, a sweep stopping its runs) -> as Ctrl-C
    # Only the first: the clean-up it starts (the run marked interrupted, the lock released) must not
    # be cut short by the next. They come in bursts: a dying `mmrl reproduce` sends its children's
    # parent-death SIGTERM once per thread it had (Linux re-sends it at every re-parenting).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt (so a run stops cleanly, marked interrupted).
    Outside the main thread (Python code calling a command from a thread) nothing changes."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a count)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (e.g. data-loading workers, 0 = the main process)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)}: expected an integer >= {lo}") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"{shown(text)}: expected an integer >= {lo}")
    return value


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="progress display: tqdm bars (bar), periodic log lines (lines), or bars on a terminal")


def progress_value(args: argparse.Namespace) -> bool | None:
    return {"auto": None, "bar": True, "lines": False}[getattr(args, "progress", "auto")]


def add_class_set_flags(p: argparse.ArgumentParser) -> None:
    """The classes a run is applied to (``mmrl predict``, ``mmrl export``): the run's own training
    classes with fused logits by default, or ``--classes`` / ``--dataset`` with class-token logits
    (decoupled inference; :func:`mmrl.engine.decoupled.resolve_class_set` decides)."""
    src = p.add_mutually_exclusive_group()  # neither: the run's own training classes
    src.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog,bird" (default: the run\'s '
                                       'training classes, fused logits)')
    src.add_argument("--dataset", help="take the classes (and template, MMRL++ beta) of this dataset, as mmrl eval "
                                       "does (with --root)")
    p.add_argument("--root", help="data root for --dataset (default: the run's data.root)")
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all", help="classes of --dataset")
    p.add_argument("--template", help="prompt template with one {} (default: the run's / dataset's)")
    p.add_argument("--logits", choices=LOGIT_CHOICES, default="auto",
                   help="auto: fused on the run's training classes, else class-token logits; or fused, class "
                        "(class token only), rep (representation tokens only)")
