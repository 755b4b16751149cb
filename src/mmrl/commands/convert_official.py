"""`mmrl convert-official`: turn the authors' released checkpoint (Dassl `model.pth.tar-N`)
into a run directory that `mmrl eval` evaluates like any trained run.

The checkpoint is read without executing pickled code; its adapter tensors are renamed
and checked against the model that --method/--backbone/--dataset/--protocol describe.
"""
from __future__ import annotations

import argparse

from mmrl import methods
from mmrl.commands.common import run_reporting_errors
from mmrl.vocab import PROTOCOLS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="official checkpoint (model.pth.tar-N)")
    p.add_argument("--method", choices=[n for n in methods.names() if methods.get(n).official], required=True,
                   help="the method the authors' checkpoint holds")
    p.add_argument("--backbone", default="ViT-B-16", help="backbone spec the checkpoint was trained on")
    p.add_argument("--dataset", required=True, help="dataset it was trained on")
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", "-o", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--root", help="data root stored in the run's config (data.root), the default of `mmrl eval`")
    p.add_argument("--config", help="YAML file with config keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. data.root=/data (repeatable)")


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from mmrl.engine.convert import convert_official

        run_dir = convert_official(args.checkpoint, args.method, args.backbone, args.dataset, args.protocol,
                                   shots=args.shots, seed=args.seed, output=args.output, config_file=args.config,
                                   overrides=[*args.overrides, *([("data.root", args.root)] if args.root else [])])
        print(f"wrote {run_dir}; evaluate with: mmrl eval {run_dir} --dataset {args.dataset}"
              + ("" if args.root else " --root DATA"))
        return 0

    # the checkpoint reader and the name/shape checks raise ValueError with a full explanation
    return run_reporting_errors(go, extra=(ValueError,))
