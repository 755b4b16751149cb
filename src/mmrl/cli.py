"""The `mmrl` command line.

Each subcommand lives in its own module under `mmrl.commands` and exposes
`add_arguments(parser)` and `main(args) -> int`; this file maps names to
modules (imported lazily so `mmrl --help` stays fast) and is the last line of
error handling: a mistake the user can fix is ONE line `mmrl: error: ...` and a
non-zero exit status, Ctrl-C is one line `mmrl: interrupted: ...` (status 130),
an unexpected error is one line that says how to see its traceback. `--debug`
(anywhere on the command line) or MMRL_DEBUG=1 shows every traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# OpenMP threads that spin while waiting steal the CPU from each other when the machine is
# shared (a 2-thread CPU step measured 0.32 s alone, 5.7 s beside another process); must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# subcommand name -> (module under mmrl.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the built-in demo: zero-shot CLIP vs MMRL vs MMRL++ on a synthetic world (CPU, minutes)"),
    "backbones": ("backbones", "which open_clip pretrained models MMRL accepts, and why not the others"),
    "describe": ("describe", "build a method on a backbone and print its settings and parameter counts"),
    "toyworld": ("toyworld", "synthetic world: pretrain the tiny CLIP, write its tasks"),
    "data": ("data", "prepare and check datasets"),
    "train": ("train", "train MMRL / MMRL++ with a protocol's preset, then evaluate (resumable)"),
    "eval": ("eval", "evaluate a run directory on any dataset (decoupled inference)"),
    "zeroshot": ("zeroshot", "CLIP zero-shot baseline with the dataset's hand-written template"),
    "predict": ("predict", "class probabilities for image files with a trained run"),
    "export": ("export", "write a run as one self-contained ONNX / torch.export file: images in, class logits out"),
    "convert-official": ("convert_official", "turn the authors' released checkpoint into a run directory"),
    "reproduce": ("reproduce", "run a protocol's whole grid (parallel, sharded, resumable), then report"),
    "report": ("report", "tables and figures (Markdown, HTML, CSV) of every run under a folder, beside the "
                         "published numbers"),
}


DEBUG_HELP = "show full tracebacks of errors (same as MMRL_DEBUG=1)"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a meaningful default (not None/[]/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, [], False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from mmrl import __version__

    parser = argparse.ArgumentParser(prog="mmrl", description="MMRL / MMRL++ few-shot adaptation of CLIP.")
    parser.add_argument("--version", action="version", version=f"mmrl {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"mmrl.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        # also accepted after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mmrl.commands.common import (debug_enabled, error_line, report_error, set_debug,
                                      sigterm_as_interrupt, user_errors)

    parser = build_parser()
    args = parser.parse_args(argv)
    set_debug(getattr(args, "debug", False))
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        with sigterm_as_interrupt():
            return int(args._main(args) or 0)
    except KeyboardInterrupt as e:
        if debug_enabled():
            raise
        from mmrl.errors import RunInterrupted

        what = error_line(e) if isinstance(e, RunInterrupted) else "stopped before finishing"
        print(f"mmrl: interrupted: {what}", file=sys.stderr, flush=True)
        return 130
    except user_errors() + (OSError,) as e:  # OSError: a full disk, a permission, ... names its file
        if debug_enabled():
            raise
        return report_error(e)
    except Exception as e:  # a bug or a case nobody foresaw: one line, and how to see more
        if debug_enabled():
            raise
        print(f"mmrl: error: {type(e).__name__}: {error_line(e)} (unexpected; run again with --debug, or "
              "MMRL_DEBUG=1, for the full traceback, and please report it)", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
