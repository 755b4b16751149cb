"""`mmrl train`: train MMRL / MMRL++ on one dataset with a protocol's preset, then evaluate.

Configuration layers (later wins): preset <method>-<protocol>.yaml -> per-dataset values
(presets/datasets.yaml) -> --config FILE -> flags (--shots, --seed, ...) -> --set key=value.
Re-running the same command on an unfinished run directory resumes it; `--resume RUN_DIR`
resumes from the run's stored config.

Under `torchrun --nproc_per_node N -m mmrl train ...` the run is trained data-parallel
(DistributedDataParallel) with the same trajectory as one process; see docs/distributed.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrl.commands.common import add_progress_flag, progress_value, run_reporting_errors
from mmrl import methods
from mmrl.config import PRECISIONS, key_docs, key_help
from mmrl.fileio import dumps_json
from mmrl.vocab import CONFIG_FILE, PROTOCOLS


SKIP_BAD_HINT = " (to skip unreadable images instead: --set data.skip_bad_images=true)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    docs = key_docs()
    p.add_argument("--method", choices=methods.names(), help=f"{docs['method.name']} (required unless --resume)")
    p.add_argument("--dataset", help=key_help("data.dataset"))
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help=f"{docs['protocol']}: the preset to use (required unless --resume)")
    p.add_argument("--root", help=key_help("data.root"))
    p.add_argument("--shots", type=int, help=key_help("data.shots"))
    p.add_argument("--seed", type=int, help=key_help("seed"))
    p.add_argument("--backbone", help=key_help("backbone"))
    p.add_argument("--output", "-o", help=key_help("output"))
    p.add_argument("--config", help="YAML file with config keys (nested or dotted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. optim.lr=2e-3 or method.reg_weight=0.5 (repeatable)")
    p.add_argument("--split-file", help=key_help("data.split_file"))
    p.add_argument("--template", help=key_help("data.template"))
    p.add_argument("--device", help=key_help("device"))
    p.add_argument("--precision", choices=PRECISIONS, help=key_help("precision"))
    p.add_argument("--report-to", type=_report_to, metavar="NAMES",
                   help=key_help("logging.report_to") + "; comma-separated, e.g. tensorboard,wandb,csv")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="resume RUN_DIR (or the run the other flags name) from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_progress_flag(p)


def _report_to(text: str) -> list[str]:
    """``tensorboard,wandb`` -> the names (checked, with the other keys, as logging.report_to)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _flags(args: argparse.Namespace) -> dict:
    return {"data.root": args.root, "data.shots": args.shots, "seed": args.seed, "backbone": args.backbone,
            "output": args.output, "data.split_file": args.split_file, "data.template": args.template,
            "device": args.device,
            "precision": args.precision, "logging.report_to": args.report_to}


def build_config(args: argparse.Namespace):
    """The RunConfig the arguments describe (a stored one for --resume RUN_DIR)."""
    from mmrl.config import ConfigError, load_config, resolve_config, resume_config

    if isinstance(args.resume, str):
        run_dir = Path(args.resume)
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        for flag in ("method", "dataset", "protocol", "config"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag} cannot be combined with --resume RUN_DIR (the run's config.yaml "
                                  "is used; --root, --device and --set for such keys may change)")
        return resume_config(load_config(cfg_path), run_dir, args.overrides, flags=_flags(args))
    missing = [f"--{f}" for f in ("method", "dataset", "protocol") if not getattr(args, f)]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required (or --resume RUN_DIR)")
    return resolve_config(args.method, args.protocol, args.dataset, args.config, args.overrides, flags=_flags(args))


def main(args: argparse.Namespace) -> int:
    from mmrl.engine import distributed
    from mmrl.engine.runtime import setup_cli_logging

    setup_cli_logging()

    def go() -> int:
        from mmrl.engine.trainer import train

        cfg = build_config(args)
        if args.resume is True and not (cfg.run_dir() / CONFIG_FILE).is_file():
            from mmrl.config import ConfigError

            raise ConfigError(f"--resume: {cfg.run_dir()} holds no run to resume")
        results = train(cfg, progress=progress_value(args))
        if not distributed.env_info().is_main:
            return 0  # under torchrun rank 0 reports
        if args.json:
            print(dumps_json(results, indent=2))
        elif "hm" in results:
            print(f"{results['dataset']}: base {results['base']:.2f}%  novel {results['novel']:.2f}%  "
                  f"HM {results['hm']:.2f}%   ({cfg.run_dir()})")
        else:
            print(f"{results['dataset']}: accuracy {results['accuracy']:.2f}%   ({cfg.run_dir()})")
        return 0

    from mmrl.data import BadImageError

    # under torchrun: a failing rank names itself and leaves the process group at once
    return distributed.run_cli(lambda: run_reporting_errors(go, hints={BadImageError: SKIP_BAD_HINT}))
