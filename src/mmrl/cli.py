"""The `mmrl` command line.

Each subcommand lives in its own module under `mmrl.commands` and exposes
`add_arguments(parser)` and `main(args) -> int`; this file only maps names to
modules (imported lazily so `mmrl --help` stays fast).
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"mmrl.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
