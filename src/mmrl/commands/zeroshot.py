"""`mmrl zeroshot`: the CLIP zero-shot baseline with the dataset's hand-written template.

Writes OUTPUT/eval/<Dataset>-<subsample>.json in the same format as `mmrl eval`.
"""
from __future__ import annotations

import argparse

from mmrl.commands.common import (add_progress_flag, nonnegative_int, positive_int, progress_value,
                                  run_reporting_errors)
from mmrl.fileio import dumps_json
from mmrl.vocab import SUBSAMPLES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset name or alias, or folder:PATH")
    p.add_argument("--root", default="data", help="data root holding the datasets")
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all", help="classes to evaluate")
    p.add_argument("--backbone", default="ViT-B-16", help="backbone spec")
    p.add_argument("--output", "-o", help="output folder (default runs/zeroshot/<backbone>)")
    p.add_argument("--shots", type=int, default=16, help="few-shot K that decides base/novel classes")
    p.add_argument("--seed", type=int, default=1, help="seed that decides base/novel classes")
    p.add_argument("--template", help="prompt template with one {} (default: the dataset's)")
    p.add_argument("--predictions", metavar="FILE.jsonl", help="write one JSON object per test image")
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--num-workers", type=nonnegative_int, help="data-loading workers (default: one per CPU, at most 4)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable test images")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_progress_flag(p)


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from mmrl.engine.baseline import zeroshot
        from mmrl.engine.evaluator import EvalRequest

        request = EvalRequest(args.dataset, root=args.root, subsample=args.subsample, template=args.template,
                              predictions=args.predictions)
        settings = {"data.shots": args.shots, "seed": args.seed, "eval.batch_size": args.batch_size,
                    "eval.precision": args.precision, "device": args.device, "data.num_workers": args.num_workers,
                    "data.skip_bad_images": args.skip_bad_images}
        res = zeroshot(request, backbone=args.backbone, output=args.output, settings=settings,
                       progress=progress_value(args))
        if args.json:
            print(dumps_json(res, indent=2))
        else:
            print(f"{res['dataset']} {res['subsample']}: zero-shot accuracy {res['accuracy']:.2f}%  "
                  f"n={res['n']}  -> {res['path']}")
        return 0

    from mmrl.commands.eval import SKIP_BAD_HINT
    from mmrl.data import BadImageError

    return run_reporting_errors(go, hints={BadImageError: SKIP_BAD_HINT})
