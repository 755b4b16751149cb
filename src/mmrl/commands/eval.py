"""`mmrl eval`: evaluate a run directory (trained or converted) on any dataset.

Logits (decoupled inference, docs/method.md#decoupled-inference): `auto` = fused on the classes the run was
trained on (same dataset, training subsample), class-only on novel classes and other
datasets; MMRL++ uses the per-target beta of the run's eval.target_beta. Results go to
RUN_DIR/eval/<Dataset>-<subsample>.json (an explicit --logits KIND: <Dataset>-<subsample>-<KIND>.json;
or --output-dir), checked to be writable before the work;
writing into RUN_DIR holds its writer lock (one writer per run folder).
Under `torchrun --nproc_per_node N -m mmrl eval ...` the test set is sharded over the
processes, with the same results and predictions as one process.
"""
from __future__ import annotations

import argparse

from mmrl.commands.common import (add_progress_flag, nonnegative_int, positive_int, progress_value,
                                  run_reporting_errors)
from mmrl.fileio import dumps_json
from mmrl.vocab import LOGIT_CHOICES, SUBSAMPLES

SKIP_BAD_HINT = " (to skip unreadable images instead: --skip-bad-images)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (mmrl train / mmrl convert-official)")
    p.add_argument("--dataset", required=True, help="dataset name or alias, or folder:PATH")
    p.add_argument("--root", help="data root (default: the run's data.root)")
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all", help="classes to evaluate")
    p.add_argument("--split-file", help="evaluate on the test list of this split file (e.g. from mmrl data split)")
    p.add_argument("--template", help="prompt template with one {} (default: the run's / the dataset's)")
    p.add_argument("--logits", choices=LOGIT_CHOICES, default="auto",
                   help="logits that decide: auto = the protocol's choice (fused on the training classes, class "
                        "elsewhere); fused, class (class token only) or rep (representation tokens only): an "
                        "evaluation-only ablation, written to eval/<Dataset>-<subsample>-<kind>.json")
    p.add_argument("--predictions", metavar="FILE.jsonl", help="write one JSON object per test image")
    p.add_argument("--batch-size", type=positive_int, help="evaluation batch (default: the run's eval.batch_size)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="default: the run's eval.precision")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--num-workers", type=nonnegative_int, help="data-loading workers (default: the run's data.num_workers)")
    p.add_argument("--output-dir", help="folder for the result JSON (default RUN_DIR/eval; use it for a run "
                                        "folder you cannot write into)")
    p.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip unreadable test images (default: the run's data.skip_bad_images)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    add_progress_flag(p)


def main(args: argparse.Namespace) -> int:
    from mmrl.engine import distributed
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from mmrl.engine.evaluator import EvalRequest, evaluate

        request = EvalRequest(args.dataset, args.root, args.subsample, args.logits, split_file=args.split_file,
                              template=args.template, predictions=args.predictions, output_dir=args.output_dir)
        settings = {"eval.batch_size": args.batch_size, "eval.precision": args.precision, "device": args.device,
                    "data.num_workers": args.num_workers, "data.skip_bad_images": args.skip_bad_images}
        res = evaluate(args.run_dir, request, settings=settings, progress=progress_value(args))
        if not distributed.env_info().is_main:
            return 0  # under torchrun rank 0 reports
        if args.json:
            print(dumps_json(res, indent=2))
        else:
            beta = f", beta {res['beta']}" if res.get("beta") is not None else ""
            print(f"{res['dataset']} {res['subsample']}: accuracy {res['accuracy']:.2f}%  macro "
                  f"{res['macro_accuracy']:.2f}%  n={res['n']}  ({res['logits']} logits{beta})  -> {res.get('path')}")
        return 0

    from mmrl.data import BadImageError

    # under torchrun: a failing rank names itself and leaves the process group at once
    return distributed.run_cli(lambda: run_reporting_errors(go, hints={BadImageError: SKIP_BAD_HINT}))
