"""`mmrl report`: tables (Markdown, HTML, CSV, JSON) and figures of every run under a folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrl.vocab import PROTOCOLS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="DIR",
                   help="folder holding runs, in any layout (mmrl train --output folders, a mmrl reproduce sweep, "
                        "converted official checkpoints, zero-shot results)")
    p.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=None,
                   help="protocols to report (default: every one present)")
    p.add_argument("--out", default=None, help="where to write the report (default DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def main(args: argparse.Namespace) -> int:
    from mmrl.report import write_report

    output = Path(args.output)
    if not output.is_dir():
        print(f"mmrl report: error: {output} is not a folder", file=sys.stderr)
        return 2
    out = write_report(output, args.protocol, args.out, plots=not args.no_plots)
    print(f"report: {out / 'report.md'} (also report.html, report.json, CSV files)")
    return 0
