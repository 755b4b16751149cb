"""The toy-world robustness study of docs/robustness.md: noisy labels and class imbalance.

Through the product's own commands only (``mmrl toyworld make-tasks``, ``mmrl zeroshot``,
``mmrl reproduce fewshot --vary``, ``mmrl report``), on one toy task (default ``toy_outline``:
16 classes, 20 training images each), for MMRL and MMRL++ with the demo's settings:

* noise: ``data.noise.type`` symflip / pairflip x ``data.noise.shots`` 0, 1, 2, 4, 6 of 8 shots
  (0 / 12.5 / 25 / 50 / 75 %, JoAPR's rates; 8 shots because JoAPR's protocol draws a class's
  shots from the first half of its pool: 10 of the toy world's 20) x ``optim.loss`` ce / gce;
* imbalance: ``data.imbalance.type=exp`` x ``data.imbalance.ratio`` 1, 0.1, 0.02 of 8 shots
  x ``optim.balance`` none / logit_adjust;
* seeds 1, 2, 3; zero-shot CLIP (one evaluation: on all classes no seed matters) as the flat reference.

Each ``mmrl reproduce`` call shows its progress and resumes what a killed study left; the
results are the report's (``OUT/report/``: report.md, report.json, CSV and figures)::

    python benchmarks/robustness_study.py --out study/ --jobs 2
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

GRIDS = {
    "noise": ["--vary", "data.noise.type=symflip,pairflip", "--vary", "data.noise.shots=0,1,2,4,6",
              "--vary", "optim.loss=ce,gce"],
    "imbalance": ["--set", "data.imbalance.type=exp", "--vary", "data.imbalance.ratio=1,0.1,0.02",
                  "--vary", "optim.balance=none,logit_adjust"],
}


def mmrl(*args: str) -> None:
    cmd = [sys.executable, "-m", "mmrl", *args]
    print("+ mmrl", " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--task", default="toy_outline")
    p.add_argument("--methods", nargs="+", default=["mmrl", "mmrl++"])
    p.add_argument("--seeds", nargs="+", default=["1", "2", "3"])
    p.add_argument("--shots", default="8")
    p.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--jobs", default="2")
    args = p.parse_args()
    out = args.out.resolve()
    t0, c0 = time.perf_counter(), time.process_time()
    tasks = out / "toy"
    if not (tasks / args.task / "dataset.json").is_file():
        mmrl("toyworld", "make-tasks", "--out", str(tasks))
    dataset = f"folder:{tasks / args.task}"
    # the flat reference: the frozen tiny CLIP on the same test set (all classes: no seed decides anything)
    mmrl("zeroshot", "--dataset", dataset, "--backbone", "toy-clip", "--shots", args.shots,
         "--device", "cpu", "--precision", "fp32", "--output", str(out / "zeroshot"))
    for grid in args.grids:
        for method in args.methods:
            mmrl("reproduce", "fewshot", "--method", method, "--datasets", dataset, "--shots", args.shots,
                 "--seeds", *args.seeds, "--config", str(tasks / f"settings-{method}.yaml"), "--set", "device=cpu",
                 *GRIDS[grid], "--output", str(out / grid), "--jobs", args.jobs, "--no-report")
    mmrl("report", str(out))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cost = {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0 + children.ru_utime + children.ru_stime, 1)}
    (out / "study.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **cost}, indent=1))
    print(f"study: {cost['wall_s']} s wall, {cost['cpu_s']} CPU-s -> {out}")


if __name__ == "__main__":
    main()
