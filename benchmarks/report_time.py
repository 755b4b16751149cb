"""How long `mmrl report DIR` takes on 100 runs (wall time of the whole command, as a user sees it).

Writes 100 fake run folders in the engine's file formats (tests/fake_runs.py) under a temporary
folder -- a base-to-novel sweep of both methods (11 datasets x 3 seeds x 2 methods = 66 runs),
a few-shot sweep of MMRL on 2 datasets (5 shot counts x 3 seeds = 30 runs, with its grid file),
a cross-dataset sweep of MMRL (3 seeds, 14 targets each) and one zero-shot run -- then times
``python -m mmrl report DIR`` in a fresh process ``--repeat`` times (median, min, max), with and
without the figures, and checks that the command did not import torch.

Usage::

    python benchmarks/report_time.py [--repeat 5] [--keep DIR] [--json FILE]

Accuracies are made up near the published MMRL numbers, so ``--keep DIR`` leaves a folder whose
report looks like a real one (used to review the figures).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

from fake_runs import write_run, write_zeroshot  # noqa: E402
from mmrl.report.published import b2n_dataset, cross_target, load_published  # noqa: E402
from mmrl.vocab import CROSS_TARGETS, DATASETS, sweep_run_dir  # noqa: E402


def jitter(*key: object) -> float:
    """A deterministic offset in [-1.5, 1.5) per key (stands in for seed-to-seed variation)."""
    return (zlib.crc32(repr(key).encode()) % 3000) / 1000.0 - 1.5


def make_runs(root: Path) -> int:
    """Write the 100 runs under ``root``; returns the number of run folders written."""
    pub = load_published()
    n = 0
    for method, shift in (("mmrl", 0.0), ("mmrl++", 0.6)):
        for d in DATASETS:
            p = b2n_dataset(pub, "MMRL", d)
            for s in (1, 2, 3):
                write_run(sweep_run_dir(root, "base2novel", method, d, 16, s), "base2novel", method, d, 16, s,
                          {(d, "base"): min(99.5, p["base"] + shift + jitter(method, d, s, "b")),
                           (d, "new"): min(99.5, p["novel"] + shift + jitter(method, d, s, "n"))})
                n += 1
    grid = {"protocol": "fewshot", "method": "mmrl", "datasets": ["DescribableTextures", "EuroSAT"], "targets": [],
            "shots": [1, 2, 4, 8, 16], "seeds": [1, 2, 3]}
    gdir = root / "fewshot" / "mmrl"
    gdir.mkdir(parents=True, exist_ok=True)
    (gdir / "grid-0123456789.json").write_text(json.dumps(grid))
    for d, top in (("DescribableTextures", 73.0), ("EuroSAT", 92.0)):
        for i, k in enumerate(grid["shots"]):
            for s in grid["seeds"]:
                acc = top - 4.0 * (4 - i) + jitter(d, k, s)
                write_run(sweep_run_dir(root, "fewshot", "mmrl", d, k, s), "fewshot", "mmrl", d, k, s,
                          {(d, "all"): acc})
                n += 1
    for s in (1, 2, 3):
        acc = {(t, "all"): cross_target(pub, "MMRL", t) + jitter("x", t, s) for t in ("ImageNet",) + CROSS_TARGETS}
        write_run(sweep_run_dir(root, "crossdataset", "mmrl", "ImageNet", 16, s), "crossdataset", "mmrl", "ImageNet",
                  16, s, acc)
        n += 1
    zs = {(d, sub): 60.0 + jitter("zs", d, sub) for d in DATASETS for sub in ("base", "new", "all")}
    write_zeroshot(root / "zeroshot" / "ViT-B-16", zs)
    return n + 1


def time_report(root: Path, out: Path, extra: list[str], repeat: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys; from mmrl.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'mmrl report imported torch'; sys.exit(rc)")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, "report", str(root), "--out", str(out), *extra], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", default=None, help="write the runs (and the report) here and keep them")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp) / "runs"
        n = make_runs(root)
        result = {"runs": n, "repeat": args.repeat, "python": sys.version.split()[0], "cpus": os.cpu_count()}
        for name, extra in (("no_figures", ["--no-plots"]), ("with_figures", [])):
            t = time_report(root, root / "report", extra, args.repeat)
            result[name] = {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
            print(f"mmrl report on {n} runs, {name.replace('_', ' ')}: median {statistics.median(t):.2f} s "
                  f"(min {min(t):.2f}, max {max(t):.2f}, {args.repeat} runs; torch not imported)")
        import mmrl.report.build as build

        t0 = time.perf_counter()
        build.collect(root)
        result["collect_in_process_s"] = time.perf_counter() - t0
        print(f"scan + tables in process (no interpreter start, no files written): "
              f"{result['collect_in_process_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
