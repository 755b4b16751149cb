"""`mmrl export`: a trained run as one self-contained file (ONNX or torch.export) mapping a
preprocessed image batch (N, 3, H, W) float32 to class logits (N, C), with its metadata."""
from __future__ import annotations

import argparse

from mmrl.commands.common import add_class_set_flags
from mmrl.fileio import dumps_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (mmrl train / mmrl convert-official)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file: *.onnx or *.pt2")
    add_class_set_flags(p)
    p.add_argument("--format", choices=["onnx", "torch"],
                   help="onnx (onnxruntime) or torch (torch.export .pt2); default: from the suffix of FILE")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (default) or bf16 (.pt2 only): the file's weights and computation in bf16 "
                        "(smaller; float32 input and logits)")
    p.add_argument("--json", action="store_true", help="print the file's metadata as JSON")


def main(args: argparse.Namespace) -> int:
    from mmrl.commands.common import run_reporting_errors
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from pathlib import Path

        from mmrl.classifier import Classifier
        from mmrl.engine.export import format_for, require_onnx_export

        fmt = format_for(args.output, args.format)  # a bad suffix or a missing package fails before the model loads
        if fmt == "onnx":
            if args.precision == "bf16":
                raise ValueError("--precision bf16 is for --format torch (.pt2): onnxruntime cannot run a bf16 "
                                 "ONNX graph on the CPU")
            require_onnx_export()
        classes = args.classes.split(",") if args.classes is not None else None
        clf = Classifier.from_run(args.run_dir, classes, dataset=args.dataset, root=args.root,
                                  subsample=args.subsample, logits=args.logits, template=args.template,
                                  device="cpu", precision="fp32")  # bf16: the exported copy is cast
        path = clf.export(args.output, fmt, precision=args.precision)
        meta = clf.metadata
        if args.json:
            print(dumps_json({"path": str(path), "format": fmt, "precision": args.precision,
                              "bytes": Path(path).stat().st_size, **meta}, indent=2))
        else:
            size = meta["input_size"]
            print(f"{path}: {fmt}, {args.precision}, {len(meta['classes'])} classes, {meta['logits']} logits, "
                  f"input (N, 3, {size}, {size}) float32, {Path(path).stat().st_size / 2**20:.1f} MiB")
        return 0

    return run_reporting_errors(go, extra=_user_errors())


def _user_errors() -> tuple[type[BaseException], ...]:
    from mmrl.engine.export import MissingDependencyError

    return (MissingDependencyError, ValueError)
