"""Helpers shared by the engine's subcommands (mmrl.commands.train, eval, ...): error reporting, flags."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

# Errors a user can fix (bad config, missing data, wrong file): one clear line, no traceback.
def user_errors() -> tuple[type[BaseException], ...]:
    from mmrl.config import ConfigError
    from mmrl.data import DataError, MissingDataError
    from mmrl.engine.trainer import NonFiniteLossError

    return (ConfigError, DataError, MissingDataError, FileNotFoundError, NonFiniteLossError)


def run_reporting_errors(fn: Callable[[], int], extra: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``fn``; print a user-fixable error (``user_errors()`` and ``extra``) as
    ``mmrl: error: ...`` and return 2 (config) or 1."""
    from mmrl.config import ConfigError

    try:
        return fn()
    except user_errors() + tuple(extra) as e:
        print(f"mmrl: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="progress display: tqdm bars (bar), periodic log lines (lines), or bars on a terminal")


def progress_value(args: argparse.Namespace) -> bool | None:
    return {"auto": None, "bar": True, "lines": False}[getattr(args, "progress", "auto")]
