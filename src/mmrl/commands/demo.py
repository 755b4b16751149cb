"""`mmrl demo`: the built-in default job. Zero-shot CLIP, MMRL and MMRL++ with the base-to-novel
protocol on the synthetic world's tasks with the packaged tiny CLIP; prints Base / Novel / HM."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mmrl import methods
from mmrl.fileio import dumps_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mmrl.toyworld.demo import DEMO_THREADS
    from mmrl.toyworld.tasks import TASKS

    p.add_argument("--out", type=Path, help="folder for the task images and runs (default ~/.cache/mmrl/demo)")
    p.add_argument("--seed", type=int, default=1, help="run seed")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), metavar="TASK",
                   help=f"tasks to run ({', '.join(TASKS)})")
    p.add_argument("--methods", nargs="+", choices=methods.names(), default=list(methods.names()))
    p.add_argument("--backbone", default="toy-clip", help="tiny CLIP to adapt (the packaged one by default)")
    p.add_argument("--threads", type=int, default=DEMO_THREADS,
                   help="CPU threads for torch; more threads make the tiny model slower, and the last digit of "
                        "the results can change with the thread count")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes, each running whole runs with --threads threads (default: one per CPU "
                        "core, at most 4; 1 runs everything in this process); the results do not depend on it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for the MMRL runs (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--progress", choices=["auto", "bar", "lines"], default="lines",
                   help="progress display of each training run (with --jobs 1; worker processes print a line per "
                        "finished run instead)")


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import setup_cli_logging
    from mmrl.toyworld.demo import DemoConfig, default_out, format_table, run_demo

    for flag, value in (("--threads", args.threads), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            print(f"mmrl demo: error: {flag} {value}: expected a whole number >= 1", file=sys.stderr)
            return 2
    setup_cli_logging()
    cfg = DemoConfig(out=args.out or default_out(), seed=args.seed, tasks=tuple(args.tasks),
                     methods=tuple(args.methods), backbone=args.backbone, threads=args.threads, jobs=args.jobs,
                     overrides=tuple(args.overrides))
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]
    try:
        result = run_demo(cfg, progress=progress)
    except KeyboardInterrupt:
        again = " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "demo"
        print(f"mmrl demo: interrupted; `mmrl {again}` continues (finished runs are reused, unfinished ones "
              f"resume from their last epoch)", file=sys.stderr)
        return 130
    if args.json:
        print(dumps_json(result, indent=2))
    else:
        print(format_table(result))
        print(f"\n{result['seconds']:.0f} s; runs and task images in {result['out']}")
    return 0
