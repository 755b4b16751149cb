"""`mmrl data split|verify`: export the exact splits of a run, check datasets on disk."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from mmrl.fileio import dumps_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("split", formatter_class=fmt,
                       help="write the train/val/test lists a run with these settings uses",
                       description="Write the exact train/val/test lists (after few-shot sampling and base/novel "
                                   "selection) that a run with these settings uses, in the split-file format; "
                                   "pass the file to a run with --split-file to use it as is.")
    p.add_argument("--dataset", required=True,
                   help="benchmark name (e.g. DescribableTextures, dtd, imagenet-a) or folder:PATH, "
                        "manifest:FILE.csv|json, dataset:PATH")
    p.add_argument("--root", default=None, help="folder holding the datasets in the CoOp layout")
    p.add_argument("--shots", type=int, default=16, help="images per class (<= 0: all)")
    p.add_argument("--seed", type=int, default=1, help="run seed (decides the few-shot subset)")
    p.add_argument("--subsample", choices=("all", "base", "new"), default="all", help="classes to keep")
    p.add_argument("--out", required=True, help="output JSON file")
    _common(p)

    v = sub.add_parser("verify", formatter_class=fmt, help="check that datasets are present and readable",
                       description="Report, per dataset, whether it is present, its split sizes and classes, "
                                   "images listed but absent and (--decode) images that fail to decode. Exit "
                                   "code 1 when a named dataset is missing or any present dataset is broken.")
    v.add_argument("--root", default=None, help="folder holding the datasets in the CoOp layout")
    v.add_argument("--dataset", action="extend", nargs="+", default=None,
                   help="datasets to check (default: all 15 benchmarks)")
    v.add_argument("--decode", action="store_true", help="also decode every image (slow)")
    v.add_argument("--json", action="store_true", help="print the reports as JSON")
    _common(v)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="cache folder (default: $MMRL_CACHE_DIR, else $XDG_CACHE_HOME/mmrl, else ~/.cache/mmrl)")
    p.add_argument("--split-seed", type=int, default=1,
                   help="seed of the 50/20/30 split built when a dataset has no split file (benchmarks: CoOp's "
                        "recipe; your own data: the seed of the per-image hash)")


def _setup_logging() -> None:
    log = logging.getLogger("mmrl")
    if not log.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


def main(args: argparse.Namespace) -> int:
    from mmrl.data import DataError, MissingDataError

    _setup_logging()
    try:
        if args.data_command == "split":
            return _split(args)
        if args.data_command == "verify":
            return _verify(args)
    except (DataError, MissingDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("usage: mmrl data {split,verify} ... (see mmrl data --help)", file=sys.stderr)
    return 2


def _split(args: argparse.Namespace) -> int:
    from mmrl.data import prepare_splits, write_split_file

    splits = prepare_splits(args.dataset, args.root, shots=args.shots, seed=args.seed, subsample=args.subsample,
                            cache_dir=args.cache_dir, split_seed=args.split_seed)
    write_split_file(splits, args.out)
    print(f"{splits.summary()} -> {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from mmrl.data.imagefolder import is_user_spec
    from mmrl.data.verify import format_report, verify

    if args.root is None and (not args.dataset or not all(is_user_spec(n) for n in args.dataset)):
        print("error: --root DIR is needed to check benchmark datasets", file=sys.stderr)
        return 2
    if args.root is not None and not Path(args.root).expanduser().is_dir():
        # otherwise every benchmark is merely "not present" and the check passes, checking nothing
        what = "is not a folder" if Path(args.root).expanduser().exists() else "no such folder"
        print(f"error: --root {args.root}: {what} (expected the folder holding the datasets in the CoOp layout)",
              file=sys.stderr)
        return 2
    reports = verify(args.dataset, args.root, decode=args.decode, cache_dir=args.cache_dir,
                     split_seed=args.split_seed)
    if args.json:
        print(dumps_json([{**asdict(r), "failed": r.failed} for r in reports], indent=2))
    else:
        for r in reports:
            print(format_report(r))
        found = [r.name for r in reports if r.status != "missing"]
        print(f"{len(found)} of {len(reports)} dataset(s) present; "
              f"{sum(r.failed for r in reports)} problem(s)")
    return 1 if any(r.failed for r in reports) else 0
