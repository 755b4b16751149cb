"""`mmrl reproduce`: run a protocol's whole grid (or a shard of it), then write the report.

Finished runs are skipped, unfinished ones resumed (train is re-run on the
same folder), cross-dataset runs whose training finished only get their
missing target evaluations. See :mod:`mmrl.sweep` for claims and workers.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mmrl import sweep
from mmrl.fileio import check_writable_dir, write_json_atomic
from mmrl.sweep import Cell, Outcome
from mmrl.sweep.ablation import Vary, check_grid, parse_vary, points
from mmrl.sweep.grid import EvalJob, check_data
from mmrl.sweep.runner import SweepInterrupted


@dataclass
class ReproduceResult:
    cells: list[Cell]                     # the cells of this shard
    outcomes: list[Outcome]
    report_dir: Path | None = None
    report_error: str | None = None
    interrupted: bool = False             # Ctrl-C / SIGTERM stopped the sweep

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        return not self.by_status("failed") and not self.by_status("interrupted") and self.report_error is None


def write_grid_spec(output: Path, cells: Sequence[Cell], defaults: dict[str, dict] | None = None) -> list[Path]:
    """Record the requested grid as `<base>/<protocol>/<method>/grid-<hash>.json` (the report's "expected"),
    one per ablation point (base = `OUTPUT/ablation/<point>`), else one (base = OUTPUT).

    One file per distinct grid, named by its content hash, so concurrent
    processes never rewrite each other's file; the report takes the union.
    """
    paths = []
    for point in dict.fromkeys(c.point for c in cells):
        mine = [c for c in cells if c.point == point]
        spec = sweep.grid_spec(mine, defaults)
        text = json.dumps(spec, sort_keys=True)
        base = mine[0].run_dir.parents[4]  # <base>/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>
        path = base / spec["protocol"] / spec["method"] / f"grid-{hashlib.sha1(text.encode()).hexdigest()[:10]}.json"
        if not path.exists():
            write_json_atomic(spec, path)
        paths.append(path)
    return paths


def plan_text(protocol: str, method: str, grid: Sequence[Cell], cells: Sequence[Cell], varies: Sequence[Vary],
              output: Path, shard: tuple[int, int] | None) -> str:
    """What the sweep will do, before it starts: the number of runs (and of evaluations after training),
    broken down as points x datasets x shots x seeds, and how many are finished already."""
    n_points = max(1, len({c.point for c in grid}))
    n_data = len({c.dataset for c in grid})
    shots = sorted({c.shots for c in grid})
    seeds = sorted({c.seed for c in grid})
    parts = [f"{len(v.values)} values of {v.key}" for v in varies]
    parts += [f"{n_data} dataset{'s' * (n_data != 1)}", f"{len(shots)} shot count{'s' * (len(shots) != 1)}",
              f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"]
    assert n_points * n_data * len(shots) * len(seeds) == len(grid)
    done = sum(sweep.cell_state(c).kind == "finished" for c in cells)
    evals = sum(len(c.eval_jobs) for c in cells)
    shard_note = f"; shard {shard[0]}/{shard[1]}: {len(cells)} of them" if shard else ""
    lines = [f"mmrl reproduce {protocol} {method}: {len(grid)} runs = {' x '.join(parts)}{shard_note}; "
             f"{done} already finished, {len(cells) - done} to run or resume"
             + (f"; {evals} evaluations after training" if evals else "") + f"; output {output}"]
    for v in varies:
        lines.append(f"  vary {v.key}: {', '.join(json.dumps(x) for x in v.values)}")
    return "\n".join(lines)


def reproduce(protocol: str, method: str, output: Path | str, *, root: Path | str | None = None,
              datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              shots: Sequence[int] | None = None, backbone: str | None = None, sets: Sequence[str] = (),
              vary: Sequence[str] = (), logits: Sequence[str] = (),
              devices: Sequence[str] | None = None, jobs: int = 1, shard: tuple[int, int] | None = None,
              claim_timeout: float | None = 6 * 3600.0, heartbeat_s: float = 60.0,
              run_train: Callable[[Cell], int] | None = None,
              run_eval: Callable[[Cell, EvalJob], int] | None = None,
              runner_prefix: Sequence[str] | None = None, write_report: bool = True, dry_run: bool = False,
              log: Callable[[str], None] = print) -> ReproduceResult:
    """Run the grid of `protocol` for `method` under `output`, then write `output/report/`.

    vary: ``KEY=V1,V2,...`` items (:mod:`mmrl.sweep.ablation`): the grid is run for every
    combination of the values, under `output/ablation/<point>/`. logits: logit kinds
    (fused, class, rep) to evaluate every trained run with besides the protocol's choice.
    Every (point, dataset) config is resolved and checked before any work (ValueError naming
    the grid point). devices: run one cell per listed GPU at a time (each child gets
    CUDA_VISIBLE_DEVICES); a GPU listed twice runs two cells. Without
    devices, `jobs` CPU workers. shard: (I, N) keeps grid cells with
    position % N == I. run_train / run_eval default to subprocesses of
    `runner_prefix` (default `python -m mmrl`) logging to RUN_DIR/stdout.log.
    dry_run: print the plan (the number of runs) and stop.
    """
    output = Path(output)
    varies = parse_vary(vary)
    grid_points = points(varies)
    grid = sweep.build_grid(protocol, method, output, datasets=datasets, seeds=seeds, shots=shots,
                            root=root, backbone=backbone, sets=sets, points=grid_points, logits=logits)
    defaults = check_grid(protocol, method, list(dict.fromkeys(c.dataset for c in grid)), grid_points, sets,
                          backbone, min((c.shots for c in grid), default=1))
    cells = sweep.take_shard(grid, *shard) if shard else grid
    check_data(cells, root)  # this shard's: on a cluster each node may hold only the data of its own cells
    log(plan_text(protocol, method, grid, cells, varies, output, shard))
    if dry_run:
        from mmrl.sweep.estimate import plan_cost_text

        log(plan_cost_text(grid, cells, len(devices) if devices else max(1, jobs)))
        return ReproduceResult(cells, [])
    # a few KB written and removed: a read-only or full output folder is said before any run starts
    check_writable_dir(output, "choose another --output")
    write_grid_spec(output, grid, defaults)
    workers: list[str | None] = list(devices) if devices else [None] * max(1, jobs)
    runner = sweep.SubprocessRunner(
        runner_prefix, threads=None if devices else max(1, (os.cpu_count() or 1) // len(workers)))
    train = run_train or runner.train
    evaluate = run_eval or runner.evaluate
    log(f"{len(workers)} worker(s)")
    if claim_timeout is not None:  # refresh held claims well within the timeout others apply
        heartbeat_s = min(heartbeat_s, max(claim_timeout / 4, 0.05))
    try:
        outcomes = sweep.run_cells(cells, train, evaluate, workers, claim_timeout, heartbeat_s, log,
                                   on_interrupt=runner.terminate_all)
    except SweepInterrupted as e:  # say what became of each run, then stop as asked (no report)
        log(summary(ReproduceResult(cells, e.outcomes, interrupted=True)))
        raise
    result = ReproduceResult(cells, outcomes)
    if write_report:
        from mmrl.report import write_report as write_report_files
        try:
            # Processes sharing the output finish in any order: each scans and writes under one lock,
            # so the last report written is never older than an earlier one (runs only ever finish).
            with _report_lock(output):
                result.report_dir = write_report_files(output)
        except Exception as e:  # the runs are safe on disk; say why the report failed
            result.report_error = f"{type(e).__name__}: {e}"
    log(summary(result))
    return result


@contextlib.contextmanager
def _report_lock(output: Path | str):
    """An exclusive ``flock`` on ``OUTPUT/.report.lock`` (waits for the holder; released on exit,
    also when the process dies)."""
    path = Path(output) / ".report.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def summary(result: ReproduceResult) -> str:
    """Human-readable end-of-sweep summary (failures with their log paths)."""
    counts = {s: len(result.by_status(s)) for s in ("done", "skipped", "elsewhere", "failed", "interrupted")}
    head = "summary (interrupted)" if result.interrupted else "summary"
    lines = [f"{head}: {counts['done']} run now, {counts['skipped']} already finished, "
             f"{counts['elsewhere']} in progress elsewhere, {counts['failed']} failed"]
    if counts["interrupted"]:
        lines[0] += f", {counts['interrupted']} interrupted"
    if result.interrupted and (left := len(result.cells) - len(result.outcomes)):
        lines[0] += f", {left} not started"
    for o in result.by_status("elsewhere"):
        lines.append(f"  in progress elsewhere: {o.cell.name} ({o.detail})")
    for o in result.by_status("interrupted"):
        lines.append(f"  interrupted: {o.cell.name}: {o.detail}")
    if counts["interrupted"] or result.interrupted:
        lines.append("  interrupted and not started runs resume when you run the same command again "
                     "(finished runs are kept)")
    for o in result.by_status("failed"):
        lines.append(f"  FAILED: {o.cell.name}: {o.detail}\n          log: {o.log_path}")
    if result.report_dir is not None:
        lines.append(f"report: {result.report_dir / 'report.md'}")
    if result.report_error is not None:
        lines.append(f"report FAILED: {result.report_error}")
    return "\n".join(lines)
