"""`mmrl toyworld`: the synthetic world (pretrain the tiny CLIP, write its tasks, zero-shot report)."""
from __future__ import annotations

import argparse
import sys

from mmrl.fileio import dumps_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Only light imports here: `mmrl --help` builds every subcommand's parser.
    from mmrl.toyworld.tasks import TASKS

    sub = parser.add_subparsers(dest="toyworld_command", metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    # Pretraining options default to None = the value of mmrl.toyworld.pretrain.PretrainConfig
    # (which built the committed checkpoint), so torch is not imported to build this parser.
    p = sub.add_parser("pretrain",
                       help="pretrain the tiny CLIP contrastively on generated image-caption pairs (CPU)")
    p.add_argument("--out", help="safetensors file to write, metrics beside it as .json "
                                 "(default: the checkpoint inside the package)")
    for flag, kind, text in (("--seed", int, "seed (0)"), ("--steps", int, "training steps (1500)"),
                             ("--batch-size", int, "batch size (256)"), ("--lr", float, "peak learning rate (2e-3)"),
                             ("--warmup-steps", int, "linear warm-up steps (100)"),
                             ("--threads", int, "CPU threads, fixed so that a seed repeats exactly (2)"),
                             ("--eval-every", int, "zero-shot check every N steps, 0 = only at the end (500)")):
        p.add_argument(flag, type=kind, help=text)

    p = sub.add_parser("make-tasks", formatter_class=fmt,
                       help="write the downstream task folders (read them with --dataset dataset:DIR/<task>) and the demo's "
                            "settings per method (DIR/settings-<method>.yaml, for --config)")
    p.add_argument("--out", required=True, help="folder to write the tasks into")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), metavar="TASK",
                   help=f"which tasks ({', '.join(TASKS)})")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("zero-shot", formatter_class=fmt,
                       help="zero-shot accuracy (all / base / novel) of the tiny CLIP on written task folders")
    p.add_argument("task_dirs", nargs="+", help="task folders written by make-tasks")
    p.add_argument("--checkpoint", help="safetensors file (default: the checkpoint inside the package)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    action = getattr(args, "toyworld_command", None)
    if action == "pretrain":
        return _pretrain(args)
    if action == "make-tasks":
        return _make_tasks(args)
    if action == "zero-shot":
        return _zero_shot(args)
    print("mmrl toyworld: choose an action: pretrain, make-tasks or zero-shot (see --help)", file=sys.stderr)
    return 2


def _pretrain(args: argparse.Namespace) -> int:
    from mmrl.toyworld.pretrain import PretrainConfig, pretrain

    given = {name: getattr(args, name) for name in ("out", "seed", "steps", "batch_size", "lr", "warmup_steps",
                                                     "threads", "eval_every") if getattr(args, name) is not None}
    pretrain(PretrainConfig(**given), log=lambda line: print(line, flush=True))
    return 0


def _make_tasks(args: argparse.Namespace) -> int:
    from mmrl.toyworld.demo import write_settings
    from mmrl.toyworld.tasks import TASKS, write_tasks

    for folder in write_tasks(args.out, args.tasks, seed=args.seed):
        task = TASKS[folder.name]
        print(f"{folder}: {len(task.classes)} classes ({task.n_base} base), "
              f"{task.n_train}/{task.n_val}/{task.n_test} train/val/test per class; {task.shift}")
    for path in write_settings(args.out):
        print(f"{path}: the demo's settings for --config")
    return 0


def _zero_shot(args: argparse.Namespace) -> int:
    import torch

    from mmrl.toyworld.model import load_tiny_clip
    from mmrl.toyworld.zeroshot import evaluate_task_folder

    torch.set_num_threads(2)
    model = load_tiny_clip(args.checkpoint) if args.checkpoint else load_tiny_clip()
    rows = [evaluate_task_folder(model, d) for d in args.task_dirs]
    if args.json:
        print(dumps_json(rows, indent=1))
        return 0
    print(f"{'task':<14}{'classes':>8}{'all':>8}{'base':>8}{'novel':>8}   chance all/base/novel")
    for r in rows:
        print(f"{r['name']:<14}{r['classes']:>8}{r['all']:>8.1f}{r['base']:>8.1f}{r['novel']:>8.1f}   "
              f"{r['all_chance']:.1f}/{r['base_chance']:.1f}/{r['novel_chance']:.1f}")
    return 0
