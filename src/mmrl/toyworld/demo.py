"""`mmrl demo`: zero-shot CLIP vs MMRL vs MMRL++, base-to-novel, on the synthetic world.

Everything runs through the normal pipeline: the tasks are written to disk as
``dataset.json`` folders (read by ``mmrl.data`` like any benchmark with a split file),
the tiny CLIP is the packaged ``toy-clip`` backbone (an OpenAI-format state dict loaded
by the normal loader), and each method is trained and evaluated by ``mmrl.engine`` with
the ``base2novel`` preset plus the toy overrides of ``presets/toy.yaml`` (the token
blocks are the upper half of the 6-block towers and K, d_r scale down; see
docs/toyworld.md). Novel classes are evaluated with class-only logits as the protocol
says; the fused logits on novel classes are computed as well, to show what decoupled
inference changes.

Speed (docs/performance.md): the tiny model runs with one torch thread per process
(:data:`DEMO_THREADS`), and the demo's independent pieces (writing a task; zero-shot on a
task; training + evaluating one method on a task) run in ``jobs`` worker processes of the job
pool (:mod:`mmrl.jobs`), so two cores do two runs at once instead of splitting every small op
between them. Every run depends only on its own config, so the table is the same for any ``jobs``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmrl import methods
from mmrl.config import resolve_config, toy_settings
from mmrl.fileio import write_text_atomic
from mmrl.jobs import Job, JobPool
from mmrl.toyworld.tasks import TASKS, write_task
from mmrl.vocab import BASE2NOVEL_SUBSAMPLES, RESULTS_FILE, harmonic_mean

LOG = logging.getLogger("mmrl")
# torch CPU threads of the demo. One: a training step of the tiny CLIP (batch 4, ~1300 small
# ops) is dispatch overhead, not arithmetic, and a second thread adds a wake-up or a spin-wait
# to every op (2 AMD EPYC cores: 10-12 ms per step with one thread; 16-30 ms with two sleeping
# threads, OMP_WAIT_POLICY=PASSIVE as `mmrl` sets it; 9.5-154 ms with two spinning ones,
# depending on what else runs; docs/performance.md). Two cores run two runs instead (`jobs`).
# The count also fixes the float summation order of the matmuls, so the demo's numbers do not
# depend on how many cores a machine has.
DEMO_THREADS = 1


def default_out() -> Path:
    from mmrl.data import default_cache_dir  # here: `mmrl --help` imports this module (the demo's flags)

    return Path(default_cache_dir()) / "demo"


@dataclass
class DemoConfig:
    out: Path = field(default_factory=default_out)   # tasks and runs go here
    seed: int = 1                                    # run seed (few-shot subset, init, data order)
    task_seed: int = 0                               # seed the task images are rendered with
    tasks: tuple[str, ...] = tuple(TASKS)
    methods: tuple[str, ...] = field(default_factory=methods.names)  # every registered method
    backbone: str = "toy-clip"                       # the packaged tiny CLIP (or another small CLIP file)
    threads: int | None = DEMO_THREADS               # torch CPU threads per process (None: torch's setting)
    jobs: int | None = None                          # worker processes (None: default_jobs(); 1: all in this one)
    overrides: tuple[str, ...] = ()                  # extra `key=value` config overrides


def toy_overrides(method: str) -> list[str]:
    """The toy preset (presets/toy.yaml) as `key=value` overrides for ``method``."""
    return [f"{k}={json.dumps(v)}" for k, v in toy_settings(method).items()]


def write_settings(out_dir: str | os.PathLike, backbone: str = "toy-clip") -> list[Path]:
    """``OUT/settings-<method>.yaml``: the demo's settings of each method (backbone included), as a
    config file for ``mmrl train --config`` and ``mmrl reproduce --config``."""
    paths = []
    for method in methods.names():
        items = {"backbone": backbone, **toy_settings(method)}
        text = (f"# {method} on the toy world's tasks, as `mmrl demo` trains it (presets/toy.yaml on top of\n"
                "# the base2novel preset): mmrl train --config / mmrl reproduce --config this file.\n"
                + "".join(f"{k}: {json.dumps(v)}\n" for k, v in items.items()))
        path = Path(out_dir) / f"settings-{method}.yaml"
        write_text_atomic(text, path)
        paths.append(path)
    return paths


def default_jobs() -> int:
    """One worker process per usable CPU core, at most 4 (each holds its own torch: ~0.6 GB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def missing_tasks(cfg: DemoConfig) -> list[str]:
    """Tasks whose folder is not finished (a finished folder has its dataset.json)."""
    return [name for name in cfg.tasks if not (cfg.out / "tasks" / name / "dataset.json").is_file()]


def write_one_task(name: str, cfg: DemoConfig) -> None:
    LOG.info("writing toy task %s -> %s", name, cfg.out / "tasks" / name)
    write_task(TASKS[name], cfg.out / "tasks", seed=cfg.task_seed)


def ensure_tasks(cfg: DemoConfig) -> dict[str, Path]:
    """Write the task folders that are missing; returns {task: folder}."""
    for name in missing_tasks(cfg):
        write_one_task(name, cfg)
    return {name: cfg.out / "tasks" / name for name in cfg.tasks}


hm = harmonic_mean  # the name this module's callers use


def zero_shot_row(name: str, cfg: DemoConfig, progress: bool | None) -> dict:
    """Zero-shot CLIP on one task's base and novel classes: the table's CLIP row."""
    from mmrl.engine import EvalRequest, zeroshot  # torch: here, as `mmrl --help` imports this module

    folder = cfg.out / "tasks" / name
    acc = {}
    for sub in BASE2NOVEL_SUBSAMPLES:
        zs = zeroshot(EvalRequest(f"folder:{folder}", subsample=sub), backbone=cfg.backbone,
                      output=cfg.out / "runs" / "zeroshot" / name, progress=progress,
                      settings={"data.shots": 16, "seed": cfg.seed, "eval.precision": "fp32", "device": "cpu",
                                "data.num_workers": 0})
        acc[sub] = zs["accuracy"]
    return {"dataset": name, "method": "CLIP", "base": acc["base"], "novel": acc["new"],
            "hm": hm(acc["base"], acc["new"]), "novel_fused": None, "chance_novel": 100 / zs["n_classes"]}


def method_row(name: str, method: str, cfg: DemoConfig, progress: bool | None) -> dict:
    """Train ``method`` on one task's base classes (or reuse the finished run), evaluate base and
    novel as the protocol says and novel with fused logits too: the table's row."""
    from mmrl.engine import EvalRequest, evaluate, train  # torch: as above

    dataset = f"folder:{cfg.out / 'tasks' / name}"
    run_dir = demo_run_dir(cfg, name, method)
    run_cfg = resolve_config(method, "base2novel", dataset,
                             overrides=[*toy_overrides(method), f"backbone={cfg.backbone}", f"seed={cfg.seed}",
                                        "device=cpu", f"output={run_dir}", *cfg.overrides])
    res = train(run_cfg, progress=progress)
    fused = evaluate(run_dir, EvalRequest(dataset, subsample="new", logits="fused"),
                     progress=progress)
    return {"dataset": name, "method": methods.title(method),
            "base": res["base"], "novel": res["novel"], "hm": res["hm"],
            "novel_fused": fused["accuracy"], "chance_novel": 100 / fused["n_classes"]}


def demo_run_dir(cfg: DemoConfig, task: str, method: str) -> Path:
    """Where the demo trains ``method`` on ``task``: ``OUT/runs/<method>/<task>/seed_<s>``."""
    return cfg.out / "runs" / method / task / f"seed_{cfg.seed}"


def say_reused_runs(cfg: DemoConfig) -> int:
    """Log how many of the demo's training runs are already finished under ``cfg.out`` (a rerun
    evaluates them again instead of training); returns that number."""
    runs = [demo_run_dir(cfg, t, m) for t in cfg.tasks for m in cfg.methods]
    done = sum((r / RESULTS_FILE).is_file() for r in runs)
    if done:
        LOG.info("demo: %d of %d training runs are already finished under %s and are reused (evaluated, not "
                 "trained again); --out ANOTHER_DIR, or deleting that folder, trains them anew", done, len(runs),
                 cfg.out / "runs")
    return done


def run_demo(cfg: DemoConfig, progress: str | bool | None = None) -> dict:
    """Run the whole demo; returns {"rows": [...], "average": {...}, "seconds": ...}.

    With ``cfg.jobs`` > 1 (default: :func:`default_jobs`) the runs go to that many worker
    processes (spawned, so calling this from a script needs the usual
    ``if __name__ == "__main__":`` guard); the table is the same as with ``jobs=1``.
    """
    t0 = time.time()
    say_reused_runs(cfg)
    pieces = len(cfg.tasks) * (1 + len(cfg.methods))  # per task: zero-shot, one run per method
    jobs = min(cfg.jobs if cfg.jobs is not None else default_jobs(), pieces)
    if jobs > 1:
        rows = _rows_in_workers(cfg, jobs)
    else:
        import torch  # as above (and the parent of worker processes never needs it)

        threads_before = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            ensure_tasks(cfg)
            rows = []
            for name in cfg.tasks:
                rows.append(zero_shot_row(name, cfg, progress))
                rows.extend(method_row(name, method, cfg, progress) for method in cfg.methods)
        finally:  # the thread count is process-wide: give the caller back its own
            torch.set_num_threads(threads_before)
    average = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        b = sum(r["base"] for r in mine) / len(mine)
        n = sum(r["novel"] for r in mine) / len(mine)
        fused = [r["novel_fused"] for r in mine if r["novel_fused"] is not None]
        average[m] = {"base": b, "novel": n, "hm": hm(b, n),
                      "novel_fused": sum(fused) / len(fused) if fused else None}
    return {"rows": rows, "average": average, "seed": cfg.seed, "seconds": round(time.time() - t0, 1),
            "out": str(cfg.out)}


# --------------------------------------------------------------------------- worker processes
def _init_worker(threads: int | None, console: bool) -> None:
    """A worker (the job pool's, :mod:`mmrl.jobs`, which also makes it ignore Ctrl-C between
    pieces and end with its parent): its torch thread count; warnings (not the runs' INFO lines,
    which would interleave; each run keeps them in its train.log) on the console."""
    if threads:
        import torch  # as above

        torch.set_num_threads(threads)
    if console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.WARNING)
        LOG.addHandler(handler)


def _base_classes(name: str) -> int:
    """A task's number of base classes (the first half, rounded up): its training steps are
    proportional to it (16 shots each), so it orders the runs longest first."""
    return (len(TASKS[name].classes) + 1) // 2


def _rows_in_workers(cfg: DemoConfig, jobs: int) -> list[dict]:
    """The demo's pieces in ``jobs`` spawned processes: first the missing tasks, then the
    training runs, longest first (so the workers finish together), then the zero-shot rows.
    Returns the rows in the in-process order."""

    console = any(getattr(h, "_mmrl_console", False) for h in LOG.handlers)
    pieces: list[Job[tuple[str, str]]] = []
    for name in sorted(cfg.tasks, key=_base_classes, reverse=True):
        pieces += [Job((name, method), method_row, (name, method, cfg, False)) for method in cfg.methods]
    pieces += [Job((name, "CLIP"), zero_shot_row, (name, cfg, False)) for name in cfg.tasks]
    results: dict[tuple, dict] = {}

    def report(key: tuple, row: dict) -> None:
        results[key] = row
        fused = "" if row["novel_fused"] is None else f", novel (fused) {row['novel_fused']:.1f}"
        LOG.info("demo %d/%d: %s %s: base %.1f, novel %.1f, HM %.1f%s", len(results), len(pieces),
                 row["dataset"], row["method"], row["base"], row["novel"], row["hm"], fused)

    LOG.info("demo: %d runs (training + evaluation, zero-shot) in %d worker processes, %s torch thread(s) each; "
             "each training run's log is its train.log", len(pieces), jobs, cfg.threads or "default")
    # a piece's error (e.g. a bad --set value) ends the demo once the running pieces finish; Ctrl-C
    # (which every worker gets too) or SIGTERM once they stop
    with JobPool(jobs, processes=True, initializer=_init_worker, initargs=(cfg.threads, console)) as pool:
        todo = missing_tasks(cfg)
        if todo:
            LOG.info("writing %d toy task(s) under %s", len(todo), cfg.out / "tasks")
            pool.run([Job(name, write_one_task, (name, cfg)) for name in todo], lambda key, _: None)
        pool.run(pieces, report)
    return [results[(name, key)] for name in cfg.tasks for key in ("CLIP", *cfg.methods)]


def format_table(result: dict) -> str:
    """The Base / Novel / HM table per dataset and the average (HM of the averages)."""
    lines = ["| dataset | method | Base | Novel | HM | Novel (fused logits) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: "—" if v is None else f"{v:.1f}"
    for r in result["rows"]:
        lines.append(f"| {r['dataset']} | {r['method']} | {fmt(r['base'])} | {fmt(r['novel'])} | {fmt(r['hm'])} "
                     f"| {fmt(r['novel_fused'])} |")
    for m, a in result["average"].items():
        lines.append(f"| **average** | {m} | {fmt(a['base'])} | {fmt(a['novel'])} | {fmt(a['hm'])} "
                     f"| {fmt(a['novel_fused'])} |")
    return "\n".join(lines)
