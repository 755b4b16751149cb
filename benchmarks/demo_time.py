"""How long `mmrl demo` takes: N runs, each in a fresh subprocess and a fresh folder.

Each run is ``python -m mmrl demo --out DIR --json [--threads T] [EXTRA...]`` in its own
interpreter, so imports, building the tiny CLIP and (with ``--tasks fresh``, the default)
writing the five task folders are counted as a new user meets them. Per run it records the
wall time, the child's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)``: less
sensitive than wall time to other jobs on a shared machine), the load average just before and
just after, the demo's own ``seconds`` and its average Base / Novel / HM (so that runs can be
checked to print the same numbers). The machine (CPU model, cores usable, memory, torch,
threads) is printed and stored with the results.

Usage::

    python benchmarks/demo_time.py --runs 3 --json demo_time.json
    python benchmarks/demo_time.py --runs 3 --threads 2             # torch threads of the demo
    python benchmarks/demo_time.py --tasks reuse                    # tasks written once, outside the timing
    python benchmarks/demo_time.py --env OMP_WAIT_POLICY=ACTIVE -- --methods mmrl   # env / demo arguments
    python benchmarks/demo_time.py --step-threads 1 2              # one training step at 1 and 2 threads

``--step-threads`` times the demo's training step alone instead (MMRL++ on the packaged tiny
CLIP with the toy preset's settings, batch 4 of random 32 x 32 images, 8 classes; 90 steps
after 10 warm-up steps, in a fresh subprocess per thread count) and prints a digest of the
trained parameters: equal digests mean bit-identical training.

Wall times on a machine other jobs share are noisy: compare CPU times, and read the load
average (``/proc/loadavg``; 1-minute value) recorded with every run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's `mmrl`, here and (PYTHONPATH) in the runs
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import cpu_name, load_average, mem_total_gb  # noqa: E402


def machine(threads: int | None, env: dict[str, str]) -> dict:
    """What the timings were measured on."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "cores_usable": usable, "memory_gb": round(mem_total_gb(), 1),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": threads if threads is not None else "demo default", "env": env}


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(out: Path, threads: int | None, extra: list[str], env: dict[str, str]) -> dict:
    """One `mmrl demo` in a fresh interpreter; wall / CPU seconds, load average, its numbers."""
    cmd = [sys.executable, "-m", "mmrl", "demo", "--out", str(out), "--json", *extra]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    full_env = dict(os.environ, **env)
    src = str(REPO / "src")  # this checkout's sources first, as the tests run them
    full_env["PYTHONPATH"] = src + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
    load_before, cpu0, t0 = load_average(), child_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    wall, cpu, load_after = time.perf_counter() - t0, child_cpu_s() - cpu0, load_average()
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "demo_seconds": res["seconds"],
            "loadavg_before": load_before, "loadavg_after": load_after,
            "average": res["average"],  # unrounded: runs are compared bit for bit
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


STEP_WORKER = r"""
import hashlib, json, sys, time, torch
threads = int(sys.argv[1])
torch.set_num_threads(threads)
from mmrl.models import build_method, load_backbone, method_config
from mmrl.toyworld.demo import toy_overrides
method = {k.split(".", 1)[1]: json.loads(v) for k, v in (o.split("=", 1) for o in toy_overrides("mmrl++"))
          if k.startswith("method.")}
torch.manual_seed(0)
model = build_method(load_backbone("toy-clip"), method_config("mmrl++", **method))
model.set_classes([f"red {s}" for s in "circle square triangle star cross heart moon arrow".split()], "a photo of a {}.")
model.train(); model.clip.eval()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(100, 4, 3, 32, 32, generator=g), torch.randint(0, 8, (100, 4), generator=g)
def step(i):
    out = model.loss(x[i], y[i]); opt.zero_grad(set_to_none=True); out.total.backward(); opt.step()
for i in range(10):
    step(i)
c0, w0 = time.process_time(), time.perf_counter()
for i in range(10, 100):
    step(i)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters() if p.requires_grad))
print(json.dumps({"threads": threads, "ms_per_step": round(1000 * wall / 90, 2),
                  "cpu_ms_per_step": round(1000 * cpu / 90, 2), "params_sha1": digest.hexdigest()[:12]}))
"""


def step_once(threads: int, env: dict[str, str]) -> dict:
    """The demo's training step at ``threads`` torch threads, in a fresh interpreter."""
    full_env = dict(os.environ, **env)
    full_env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + full_env["PYTHONPATH"]
                                                  if full_env.get("PYTHONPATH") else "")
    load_before = load_average()
    proc = subprocess.run([sys.executable, "-c", STEP_WORKER, str(threads)], capture_output=True, text=True,
                          env=full_env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"step timing at {threads} thread(s) failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "loadavg_before": load_before,
            "loadavg_after": load_average()}


def summary(runs: list[dict]) -> dict:
    walls, cpus = [r["wall_s"] for r in runs], [r["cpu_s"] for r in runs]
    return {"runs": len(runs), "wall_s_min": min(walls), "wall_s_median": statistics.median(walls),
            "wall_s_max": max(walls), "cpu_s_min": min(cpus), "cpu_s_median": statistics.median(cpus),
            "same_numbers_every_run": all(r["average"] == runs[0]["average"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:  # everything after `--` goes to `mmrl demo`
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="number of runs (each a fresh subprocess and folder)")
    ap.add_argument("--threads", type=int, default=None, help="`mmrl demo --threads` (default: the demo's own)")
    ap.add_argument("--tasks", choices=("fresh", "reuse"), default="fresh",
                    help="fresh: every run writes the task images too (a first run); reuse: written once "
                         "before the timed runs and copied into each run's folder")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable of the demo processes (repeatable)")
    ap.add_argument("--step-threads", type=int, nargs="+", default=None, metavar="T",
                    help="time the demo's training step at these thread counts (--runs times each) instead")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs' folders under this folder")
    ap.add_argument("--json", type=Path, default=None, help="write machine, runs and summary here")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: expected at least 1")

    info = machine(args.threads, env)
    print(f"machine: {info['cpu']}, {info['cores_usable']} usable of {info['cores']} cores, "
          f"{info['memory_gb']} GB, torch {info['torch']}, threads {info['threads']}"
          + (f", env {env}" if env else ""), flush=True)
    if args.step_threads:
        steps = []
        for _ in range(args.runs):
            for t in args.step_threads:
                r = step_once(t, env)
                steps.append(r)
                print(f"{t} thread(s): {r['ms_per_step']:.1f} ms/step wall, {r['cpu_ms_per_step']:.1f} ms cpu, "
                      f"parameters {r['params_sha1']}, load {r['loadavg_before']} -> {r['loadavg_after']}",
                      flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps({"machine": info, "steps": steps}, indent=1) + "\n")
        return 0
    work = Path(tempfile.mkdtemp(prefix="mmrl-demo-time-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        tasks = None
        if args.tasks == "reuse":
            from mmrl.toyworld.demo import DemoConfig, ensure_tasks

            tasks = work / "tasks-once"
            ensure_tasks(DemoConfig(out=tasks))
        for i in range(args.runs):
            out = work / f"run{i + 1}"
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            if tasks is not None:
                shutil.copytree(tasks / "tasks", out / "tasks")
            r = run_once(out, args.threads, extra, env)
            runs.append(r)
            avg = "  ".join(f"{m} {a['base']:.1f}/{a['novel']:.1f}/{a['hm']:.1f}" for m, a in r["average"].items())
            print(f"run {i + 1}: wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, load {r['loadavg_before']} -> "
                  f"{r['loadavg_after']} | {avg}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    s = summary(runs)
    print(f"wall min {s['wall_s_min']:.1f} / median {s['wall_s_median']:.1f} / max {s['wall_s_max']:.1f} s; "
          f"cpu min {s['cpu_s_min']:.1f} / median {s['cpu_s_median']:.1f} s; "
          f"same numbers in every run: {s['same_numbers_every_run']}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "tasks": args.tasks, "demo_args": extra, "runs": runs,
                                         "summary": s}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
