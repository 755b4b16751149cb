"""`mmrl data split|verify`: export the exact splits of a run, check datasets on disk."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from mmrl.fileio import dumps_json
from mmrl.vocab import SUBSAMPLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("split", formatter_class=fmt,
                       help="write the train/val/test lists a run with these settings uses",
                       description="Write the exact train/val/test lists (after few-shot sampling and base/novel "
                                   "selection) that a run with these settings uses, in the split-file format; "
                                   "pass the file to a run with --split-file to use it as is.")
    p.add_argument("--dataset", required=True,
                   help="benchmark name (e.g. DescribableTextures, dtd, imagenet-a) or folder:PATH, "
                        "manifest:FILE.csv|json, dataset:PATH")
    p.add_argument("--root", default=None, help="folder holding the datasets in the CoOp layout")
    p.add_argument("--shots", type=int, default=16, help="images per class (<= 0: all)")
    p.add_argument("--seed", type=int, default=1, help="run seed (decides the few-shot subset)")
    p.add_argument("--subsample", choices=SUBSAMPLES, default="all", help="classes to keep")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="label noise / class imbalance of the training list, as in a run: data.noise.type, "
                        "data.noise.shots, data.imbalance.type, data.imbalance.ratio, data.imbalance.order "
                        "(training rows then carry the given label and the true label)")
    _common(p)

    a = sub.add_parser("audit", formatter_class=fmt,
                       help="rank the images whose label looks wrong; rare classes; duplicate images",
                       description="Rank the training images whose given label is least likely under the frozen "
                                   "backbone's zero-shot scores (or an adapted run's, --run), with the class "
                                   "preferred instead; list rare classes and duplicate images (same file content). "
                                   "Writes suspects.csv, classes.csv and duplicates.csv to --out and prints a short "
                                   "table; changes no file of the dataset.")
    a.add_argument("dataset", help="folder:PATH, manifest:FILE.csv|json, dataset:PATH, or a benchmark name")
    a.add_argument("--root", default=None, help="folder holding the benchmark datasets in the CoOp layout")
    a.add_argument("--run", default=None, help="score with this run's adapted model instead of zero-shot")
    a.add_argument("--backbone", default="ViT-B-16", help="backbone spec of the zero-shot scores (without --run)")
    a.add_argument("--template", default=None, help="prompt template with one {} (default: the dataset's)")
    a.add_argument("--split", choices=("train", "val", "test"), default="train", help="whose labels to rank")
    a.add_argument("--top", type=int, default=10, help="suspects printed (the CSV lists all)")
    a.add_argument("--out", required=True, help="folder for the CSV files (outside the dataset's folder)")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")
    _common(a)

    v = sub.add_parser("verify", formatter_class=fmt, help="check that datasets are present and readable",
                       description="Report, per dataset, whether it is present, its split sizes and classes, "
                                   "images listed but absent and (--decode) images that fail to decode. Exit "
                                   "code 1 when a named dataset is missing or any present dataset is broken.")
    v.add_argument("--root", default=None, help="folder holding the datasets in the CoOp layout")
    v.add_argument("--dataset", action="extend", nargs="+", default=None,
                   help="datasets to check (default: all 15 benchmarks)")
    v.add_argument("--decode", action="store_true", help="also decode every image (slow)")
    v.add_argument("--json", action="store_true", help="print the reports as JSON")
    _common(v)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="cache folder (default: $MMRL_CACHE_DIR, else $XDG_CACHE_HOME/mmrl, else ~/.cache/mmrl)")
    p.add_argument("--split-seed", type=int, default=1,
                   help="seed of the 50/20/30 split built when a dataset has no split file (benchmarks: CoOp's "
                        "recipe; your own data: the seed of the per-image hash)")


def _setup_logging() -> None:
    log = logging.getLogger("mmrl")
    if not log.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


def main(args: argparse.Namespace) -> int:
    from mmrl.data import DataError, MissingDataError

    _setup_logging()
    try:
        if args.data_command == "split":
            return _split(args)
        if args.data_command == "verify":
            return _verify(args)
        if args.data_command == "audit":
            from mmrl.commands.common import run_reporting_errors

            return run_reporting_errors(lambda: _audit(args))
    except (DataError, MissingDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("usage: mmrl data {split,audit,verify} ... (see mmrl data --help)", file=sys.stderr)
    return 2


SPLIT_SET_SECTIONS = ("data.noise", "data.imbalance")


def _split_data_config(args: argparse.Namespace):
    """The ``data`` section a run with these flags and ``--set`` items has, checked (ConfigError)."""
    from mmrl.config import ConfigError, RunConfig, parse_override, set_key

    cfg = RunConfig()
    set_key(cfg, "data.shots", args.shots, "--shots")
    for item in args.overrides:
        key, value = parse_override(item)
        if not any(key == s or key.startswith(s + ".") for s in SPLIT_SET_SECTIONS):
            raise ConfigError(f"--set {key}: mmrl data split takes the data.noise.* and data.imbalance.* keys "
                              "(the other settings are its flags)")
        set_key(cfg, key, value, f"--set {key}")
    cfg.data.validate("mmrl data split")
    return cfg.data


def _split(args: argparse.Namespace) -> int:
    from mmrl.data import corruption_options, corruption_record, prepare_splits, write_split_file

    data_cfg = _split_data_config(args)  # refused before any work
    splits = prepare_splits(args.dataset, args.root, shots=args.shots, seed=args.seed, subsample=args.subsample,
                            cache_dir=args.cache_dir, split_seed=args.split_seed, **corruption_options(data_cfg))
    write_split_file(splits, args.out)
    record = corruption_record(splits, data_cfg)
    notes = []
    if "noise" in record:
        n = record["noise"]
        notes.append(f"{n['type']} noise: {n['wrong_images']} of {n['images']} training labels wrong "
                     f"({100 * n['rate']:.1f}%)")
    if "imbalance" in record:
        b = record["imbalance"]
        notes.append(f"{b['type']} imbalance: {b['max']} .. {b['min']} training images per class")
    print(f"{splits.summary()}{''.join('; ' + t for t in notes)} -> {args.out}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmrl.data import load_dataset, locate
    from mmrl.data.audit import class_counts, duplicate_groups, rank_suspects, summary_table, write_audit

    if args.top < 0 or args.batch_size < 1:
        raise ValueError(f"--top {args.top} / --batch-size {args.batch_size}: expected --top >= 0, --batch-size >= 1")
    out = Path(args.out).expanduser().absolute()
    image_dir = Path(locate(args.dataset, args.root, template=args.template).image_dir).absolute()
    if out == image_dir or image_dir in out.parents:  # refused before the dataset is read
        raise ValueError(f"--out {args.out} is inside the dataset's image folder {image_dir}; the audit changes "
                         "no file of the dataset: write elsewhere")
    splits = load_dataset(args.dataset, args.root, cache_dir=args.cache_dir, template=args.template,
                          split_seed=args.split_seed)
    items = getattr(splits, args.split)
    if not items:
        raise ValueError(f"{splits.name}: the {args.split} split is empty; nothing to audit")
    probs = _audit_probabilities(args, splits, items)
    suspects = rank_suspects(items, probs, splits.classnames)
    counts = class_counts(splits.train, splits.classnames)
    dups = duplicate_groups({"train": splits.train, "val": splits.val, "test": splits.test})
    paths = write_audit(out, suspects, splits.classnames, counts, dups)
    print(summary_table(suspects, splits.classnames, counts, dups, top=args.top))
    print(f"-> {', '.join(str(p) for p in paths)}")
    return 0


def _audit_probabilities(args: argparse.Namespace, splits, items) -> list[list[float]]:
    """Class probabilities (softmax of the logits, by label) of ``items``: the run's model with the
    logits decoupled inference uses on these classes, else the frozen backbone's zero-shot ones."""
    from mmrl.engine.decoupled import resolve_class_set
    from mmrl.engine.inference import run_inference
    from mmrl.engine.runtime import load_backbone_checked, resolve_device

    device = resolve_device(args.device or "auto")
    if args.run:
        from mmrl.engine import load_run

        model, cfg = load_run(args.run, device=device)
        cs = resolve_class_set(model, cfg, args.run, classes=splits.classnames, template=splits.template)
        kind, settings, template = cs.kind, cs.settings, cs.template if args.template is None else args.template
    else:
        from mmrl.models import ZeroShotCLIP

        model = ZeroShotCLIP(load_backbone_checked(args.backbone, device=device))
        kind, settings, template = "class", {}, splits.template
    with model.using(settings):
        logits, _, idx = run_inference(model, items, list(splits.classnames), template, kind,
                                       batch_size=args.batch_size, num_workers=0, progress=False, desc="audit")
    probs = logits.softmax(-1).tolist()
    order = sorted(range(len(idx)), key=lambda i: idx[i])
    return [probs[i] for i in order]


def _verify(args: argparse.Namespace) -> int:
    from mmrl.data.imagefolder import is_user_spec
    from mmrl.data.verify import format_report, verify

    if args.root is None and (not args.dataset or not all(is_user_spec(n) for n in args.dataset)):
        print("error: --root DIR is needed to check benchmark datasets", file=sys.stderr)
        return 2
    if args.root is not None and not Path(args.root).expanduser().is_dir():
        # otherwise every benchmark is merely "not present" and the check passes, checking nothing
        what = "is not a folder" if Path(args.root).expanduser().exists() else "no such folder"
        print(f"error: --root {args.root}: {what} (expected the folder holding the datasets in the CoOp layout)",
              file=sys.stderr)
        return 2
    reports = verify(args.dataset, args.root, decode=args.decode, cache_dir=args.cache_dir,
                     split_seed=args.split_seed)
    if args.json:
        print(dumps_json([{**asdict(r), "failed": r.failed} for r in reports], indent=2))
    else:
        for r in reports:
            print(format_report(r))
        found = [r.name for r in reports if r.status != "missing"]
        print(f"{len(found)} of {len(reports)} dataset(s) present; "
              f"{sum(r.failed for r in reports)} problem(s)")
    return 1 if any(r.failed for r in reports) else 0
