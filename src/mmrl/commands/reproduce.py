"""`mmrl reproduce`: run a protocol's whole grid (skip finished runs, resume unfinished), then report.

Parallel: `--devices 0,1,2,3` runs one run per listed GPU at a time (a GPU
listed twice runs two); `--jobs N` runs N CPU workers. Several machines:
`--shard I/N` (0-based I; or `--shard slurm` inside a Slurm job array) takes
grid cells whose position % N == I; processes sharing one output folder
never run the same run (claim files `<run>.claim`).

Ablations: `--vary KEY=V1,V2,...` (repeatable: the product of the values) runs the grid for every
combination under OUTPUT/ablation/<point>/; `--logits fused,class,rep` also evaluates every trained
run with those logits (no retraining). The plan (number of runs) is printed first; `--dry-run` stops
there. Every grid point's config is checked before any run starts.
"""
from __future__ import annotations

import argparse
import os
import sys

from mmrl import methods, sweep
from mmrl.commands.common import sigterm_as_interrupt
from mmrl.errors import shown

RUNNER_ENV = "MMRL_REPRODUCE_RUNNER"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("protocol", choices=sweep.PROTOCOLS, help="which table to reproduce")
    p.add_argument("--method", required=True, choices=methods.names())
    p.add_argument("--root", default=None,
                   help="datasets folder (CoOp layout); needed for the benchmark datasets, not for user datasets")
    p.add_argument("--output", required=True,
                   help="sweep folder; runs go to OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>/")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="subset of the 11 datasets (cross-dataset: of the 14 targets), and/or user datasets "
                        "(dataset:PATH, folder:PATH, manifest:FILE; base2novel and fewshot); None = the 11")
    p.add_argument("--seeds", nargs="+", type=int, default=list(sweep.DEFAULT_SEEDS), metavar="S")
    p.add_argument("--shots", nargs="+", type=int, default=None, metavar="K",
                   help="shot counts; None = 16 (base2novel, crossdataset) or 1 2 4 8 16 (fewshot)")
    p.add_argument("--backbone", default=None, help="backbone spec passed to mmrl train; None = train's default")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to every mmrl train (repeatable, as for mmrl train); for a key "
                        "also given to --vary it is the default the ablation is compared with")
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="config keys (nested or dotted YAML) passed to every mmrl train, before the --set items")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="ablation: run the grid once per value of this config key (any key --set takes but the "
                        "run's name, grid and place); repeat for a product grid, e.g. --vary "
                        "method.n_rep_tokens=1,3,5,10 --vary method.first_rep_block=3,6,9; runs go to "
                        "OUTPUT/ablation/<point>/...")
    p.add_argument("--logits", default=None, metavar="KIND[,KIND]",
                   help="also evaluate every trained run with these logits (fused, class, rep): the decoupled-"
                        "inference ablation, without retraining; results eval/<Dataset>-<subsample>-<kind>.json")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (number of runs, what is finished) and the checks, then stop")
    par = p.add_mutually_exclusive_group()
    par.add_argument("--devices", default=None,
                     help="comma-separated GPU ids, one concurrent run per entry (CUDA_VISIBLE_DEVICES of each run)")
    par.add_argument("--jobs", type=int, default=1, help="concurrent CPU runs when --devices is not given")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only grid cells with index %% N == I (0-based I); 'slurm' reads "
                        "SLURM_ARRAY_TASK_ID/COUNT/MIN (e.g. sbatch --array=0-3 ... --shard slurm)")
    p.add_argument("--claim-timeout", type=float, default=6 * 3600.0, metavar="SECONDS",
                   help="take over another host's claim not refreshed for this long (claims are refreshed "
                        "every minute while their run is alive; negative: never)")
    p.add_argument("--no-report", action="store_true", help="do not write OUTPUT/report/ at the end")
    # Hidden: a stand-in for `python -m mmrl` (a script taking the same train/eval arguments), for tests.
    p.add_argument("--runner", default=os.environ.get(RUNNER_ENV), help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    from mmrl.sweep.reproduce import reproduce

    try:
        shard = sweep.parse_shard(args.shard) if args.shard else None
        devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
        if args.devices is not None and not devices:
            raise ValueError(f"--devices {shown(args.devices)}: expected comma-separated GPU ids such as 0,1")
        if args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: expected >= 1")
        if args.root is None and (not args.datasets or not all(sweep.is_user_dataset(d) for d in args.datasets)):
            raise ValueError("--root is needed for the benchmark datasets (the folder holding them in CoOp's layout)")
        logits = [k.strip() for k in args.logits.split(",") if k.strip()] if args.logits is not None else []
        if args.logits is not None and not logits:
            raise ValueError(f"--logits {shown(args.logits)}: expected some of fused, class, rep (comma-separated)")
    except ValueError as e:
        print(f"mmrl reproduce: error: {e}", file=sys.stderr)
        return 2
    bad = [kv for kv in args.sets if "=" not in kv]
    if bad:
        print(f"mmrl reproduce: error: --set {shown(bad[0])}: expected KEY=VALUE", file=sys.stderr)
        return 2
    prefix = [sys.executable, args.runner] if args.runner else None
    sets = list(args.sets)
    if args.config is not None:
        from mmrl.config import ConfigError, file_overrides

        try:
            sets = file_overrides(args.config) + sets
        except ConfigError as e:
            print(f"mmrl reproduce: error: {e}", file=sys.stderr)
            return 2
    try:
        with sigterm_as_interrupt():  # SIGTERM (e.g. scancel) -> same clean-up as Ctrl-C
            result = reproduce(args.protocol, args.method, args.output, root=args.root, datasets=args.datasets,
                               seeds=args.seeds, shots=args.shots, backbone=args.backbone, sets=sets,
                               vary=args.vary, logits=logits, dry_run=args.dry_run, devices=devices,
                               jobs=args.jobs, shard=shard,
                               claim_timeout=None if args.claim_timeout < 0 else args.claim_timeout,
                               runner_prefix=prefix, write_report=not args.no_report,
                               log=lambda s: print(s, flush=True))
    except ValueError as e:
        print(f"mmrl reproduce: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the summary above says what became of each run
        print("mmrl reproduce: interrupted; finished runs are kept, unfinished ones resume next time",
              file=sys.stderr)
        return 130
    return 0 if result.ok else 1
