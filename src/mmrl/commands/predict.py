"""`mmrl predict`: class probabilities for image files with a trained run.

An image that cannot be read (missing, a folder, not an image) is reported on stderr and
the others are still predicted; the exit status is then 1. Flags are checked before the
model is loaded.
"""
from __future__ import annotations

import argparse
import sys

from mmrl.commands.common import add_class_set_flags, run_reporting_errors
from mmrl.errors import shown
from mmrl.fileio import dumps_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_class_set_flags(p)
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _check_flags(args: argparse.Namespace) -> list[str] | None:
    """The class list of --classes; ConfigError (exit 2) for a bad --top-k or --classes."""
    from mmrl.config import ConfigError
    from mmrl.engine.decoupled import check_class_list

    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: expected a number >= 1 (classes shown per image)")
    if args.classes is None:
        return None
    try:
        return check_class_list(args.classes.split(","))
    except ValueError as e:
        raise ConfigError(f"--classes {shown(args.classes)}: {e}; expected distinct comma-separated names, "
                          'e.g. --classes "cat,dog,bird"') from None


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from mmrl.engine.prediction import predict

        classes = _check_flags(args)
        out = predict(args.run_dir, args.images, classes=classes, dataset=args.dataset, root=args.root,
                      subsample=args.subsample, top_k=args.top_k, logits=args.logits, template=args.template,
                      device=args.device, skip_bad=True)
        failed = [r for r in out if "error" in r]
        for r in failed:
            print(f"mmrl: error: {r['error']}", file=sys.stderr)
        if args.json:
            print(dumps_json(out, indent=2))
        else:
            for r in out:
                if "error" in r:
                    continue
                print(f"{r['image']}: {r['prediction']}  ({r['logits']} logits)")
                for t in r["top"]:
                    print(f"  {100 * t['probability']:6.2f}%  {t['class']}")
        if failed:
            others = "; the others were predicted" if len(failed) < len(out) else ""
            print(f"mmrl: error: {len(failed)} of {len(out)} images could not be read (see above){others}",
                  file=sys.stderr)
        return 1 if failed else 0

    return run_reporting_errors(go)
