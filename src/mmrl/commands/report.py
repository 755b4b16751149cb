"""`mmrl report`: Markdown/CSV/JSON tables and PNG plots of a (partial) sweep folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrl.engine import sweep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="sweep folder (the --output of mmrl reproduce)")
    p.add_argument("--protocol", nargs="+", choices=sweep.PROTOCOLS, default=None,
                   help="protocols to report (default: every one present)")
    p.add_argument("--out", default=None, help="where to write the report (default OUTPUT/report)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.report import write_report

    output = Path(args.output)
    if not output.is_dir():
        print(f"mmrl report: error: {output} is not a folder", file=sys.stderr)
        return 2
    out = write_report(output, args.protocol, args.out, plots=not args.no_plots)
    print(f"report: {out / 'report.md'}")
    return 0
