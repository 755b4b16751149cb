"""`mmrl predict`: class probabilities for image files with a trained run."""
from __future__ import annotations

import argparse
import json

from mmrl.engine.clitools import run_reporting_errors


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    src = p.add_mutually_exclusive_group()  # neither: the run's own training classes
    src.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog,bird" (default: the run\'s '
                                       'training classes, fused logits)')
    src.add_argument("--dataset", help="take the classes of this dataset (with --root)")
    p.add_argument("--root", help="data root for --dataset (default: the run's data.root)")
    p.add_argument("--subsample", choices=["all", "base", "new"], default="all", help="classes of --dataset")
    p.add_argument("--template", help="prompt template with one {} (default: the run's / dataset's)")
    p.add_argument("--logits", choices=["auto", "fused", "class"], default="auto",
                   help="auto: fused on the run's training classes, else class")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from mmrl.engine.evaluator import predict

        classes = args.classes.split(",") if args.classes is not None else None
        out = predict(args.run_dir, args.images, classes=classes, dataset=args.dataset, root=args.root,
                      subsample=args.subsample, top_k=args.top_k, logits=args.logits, template=args.template,
                      device=args.device)
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        for r in out:
            print(f"{r['image']}: {r['prediction']}  ({r['logits']} logits)")
            for t in r["top"]:
                print(f"  {100 * t['probability']:6.2f}%  {t['class']}")
        return 0

    return run_reporting_errors(go)
