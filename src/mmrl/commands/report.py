"""`mmrl report`: tables (Markdown, HTML, CSV, JSON) and figures of every run under a folder."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmrl.vocab import PROTOCOLS

SHOWN_PROBLEMS = 10  # run folders to check named on the terminal; the rest are in report.md


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", metavar="DIR",
                   help="folder holding runs, in any layout (mmrl train --output folders, a mmrl reproduce sweep, "
                        "converted official checkpoints, zero-shot results)")
    p.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=None,
                   help="protocols to report (default: every one present)")
    p.add_argument("--out", default=None, help="where to write the report (default DIR/report)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")


def main(args: argparse.Namespace) -> int:
    from mmrl.errors import error_line, printable
    from mmrl.report.build import write_report_data

    output = Path(args.output)
    if not output.is_dir():
        print(f"mmrl report: error: {printable(str(output))} is not a folder", file=sys.stderr)
        return 2
    hint = "give --out OTHER_DIR to write the report elsewhere"
    try:
        out, data = write_report_data(output, args.protocol, args.out, plots=not args.no_plots, hint=hint)
    except OSError as e:  # NotWritableError (read-only, not permitted), a full disk: the message names the file
        print(f"mmrl report: error: {printable(error_line(e))}", file=sys.stderr)
        return 1
    # names and paths come from the folder's files: shown with their control characters escaped
    if not data["n_run_folders"]:
        print(f"No runs found under {printable(str(output))}: no folder under it holds run.json, config.yaml or "
              "eval/*.json (what `mmrl train`, `mmrl zeroshot`, `mmrl convert-official` and `mmrl reproduce` write)")
    c = data["checks"]
    flagged = [(e, "unreadable") for e in c["unreadable"]] + [(e, "inconsistent") for e in c["inconsistent"]]
    for e, what in flagged[:SHOWN_PROBLEMS]:
        print(f"mmrl report: {what}: {printable(e['run'])}: {printable(e['reason'])}", file=sys.stderr)
    if len(flagged) > SHOWN_PROBLEMS:
        print(f"mmrl report: ... and {len(flagged) - SHOWN_PROBLEMS} more", file=sys.stderr)
    if flagged:
        print(f"mmrl report: {len(flagged)} file(s) or run folder(s) not used in the tables: see "
              "\"Run folders to check\" in report.md", file=sys.stderr)
    print(f"report: {printable(str(out / 'report.md'))} (also report.html, report.json, CSV files)")
    return 0
