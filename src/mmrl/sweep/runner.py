"""Running cells: each in its own subprocess, from the job pool's threads (:mod:`mmrl.jobs`: one
slot per GPU of `--devices`, or `--jobs` CPU slots), each claimed first (:mod:`mmrl.sweep.state`)
and logged to `RUN_DIR/stdout.log`."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mmrl.engine.lock import HOST, Heartbeat, acquire_claim, release_claim
from mmrl.jobs import Job, JobPool, die_with_parent
from mmrl.fileio import write_failed
from mmrl.sweep.ablation import point_sets
from mmrl.sweep.grid import Cell, EvalJob
from mmrl.sweep.state import cell_state, claim_path
from mmrl.vocab import CONFIG_FILE, EVAL_DIR, RUN_FILE

# torchrun's variables: a sweep started under torchrun must not hand them to its children
_TORCHRUN_VARS = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                            "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                            "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"})


class SubprocessRunner:
    """Launches `mmrl train` / `mmrl eval` as subprocesses, output appended to RUN_DIR/stdout.log.

    `prefix` is the command before the subcommand: `[python, -m, mmrl]` by
    default, `[python, SCRIPT]` for a stand-in runner (tests). `threads`, when
    set, becomes OMP_NUM_THREADS of the child unless the environment sets it,
    so N CPU workers do not each start one thread per core.
    """

    def __init__(self, prefix: Sequence[str] | None = None, threads: int | None = None):
        self.prefix = list(prefix) if prefix else [sys.executable, "-m", "mmrl"]
        self.threads = threads
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def train_command(self, cell: Cell) -> list[str]:
        cmd = self.prefix + ["train", "--method", cell.method, "--dataset", cell.dataset,
                             "--protocol", cell.protocol, "--shots", str(cell.shots), "--seed", str(cell.seed),
                             "--output", str(cell.run_dir)]
        if cell.root is not None:
            cmd += ["--root", str(cell.root)]
        if cell.backbone is not None:
            cmd += ["--backbone", cell.backbone]
        for kv in [*cell.sets, *point_sets(cell.point)] if cell.point else cell.sets:
            cmd += ["--set", kv]
        # Re-running train on an unfinished folder resumes it anyway; `--resume` additionally makes
        # train refuse to start from scratch. It needs the run's config.yaml, written before run.json.
        if (cell.run_dir / RUN_FILE).exists() and (cell.run_dir / CONFIG_FILE).exists():
            cmd.append("--resume")
        return cmd

    def eval_command(self, cell: Cell, job: EvalJob) -> list[str]:
        cmd = self.prefix + ["eval", str(cell.run_dir), "--dataset", job.dataset, "--subsample", job.subsample]
        if job.logits != "auto":
            cmd += ["--logits", job.logits]
        if cell.root is not None:
            cmd += ["--root", str(cell.root)]
        return cmd

    def train(self, cell: Cell) -> int:
        return self._run(cell, self.train_command(cell))

    def evaluate(self, cell: Cell, job: EvalJob) -> int:
        return self._run(cell, self.eval_command(cell, job))

    def _run(self, cell: Cell, cmd: list[str]) -> int:
        # each run is its own single-process job: never inherit a surrounding torchrun's group
        env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
        if cell.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = cell.device
        if self.threads is not None and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(self.threads)
        from mmrl.errors import DEBUG_ENV, debug_enabled

        if debug_enabled():  # `mmrl --debug reproduce`: the runs' logs get full tracebacks too
            env[DEBUG_ENV] = "1"
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(cell.log_path, "a")
        try:
            try:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} host={HOST} pid={os.getpid()} "
                          f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')}\n=== {' '.join(cmd)}\n")
                log.flush()
            except OSError as e:  # a full disk: the run could not even log; the OS's message names no file
                raise write_failed(cell.log_path, e) from None
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                    preexec_fn=die_with_parent())
            with self._lock:
                self._procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
            try:
                log.write(f"=== exit code {rc}\n")
                log.flush()
            except OSError:
                pass  # the exit code is in the cell's outcome as well
        finally:
            try:
                log.close()
            except OSError:
                pass
        return rc

    def terminate_all(self, grace: float = 5.0) -> None:
        """Stop the children this runner started (on Ctrl-C / SIGTERM of the sweep).

        A terminal's Ctrl-C reaches the children too, and they are already stopping (marking their
        runs interrupted): they get ``grace`` seconds to finish that before SIGTERM, which would
        interrupt their clean-up a second time."""
        with self._lock:
            procs = list(self._procs)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


# ----------------------------------------------------------------------------------------------
# Running a list of cells
# ----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to a cell in this invocation.

    status: "done" (ran now), "skipped" (already finished), "elsewhere"
    (claimed by another live process), "interrupted" (its child was stopped by Ctrl-C or SIGTERM:
    not a failure, the next run resumes it), "failed".
    """
    cell: Cell
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.cell.log_path


def run_cell(cell: Cell, run_train: Callable[[Cell], int], run_eval: Callable[[Cell, EvalJob], int],
             claim_timeout: float | None, heartbeat: Heartbeat | None = None,
             on_start: Callable[[Cell], None] | None = None) -> Outcome:
    """Bring one cell to "finished": skip, or claim it, train (fresh or resumed) and run its missing
    evaluations (cross-dataset targets, explicitly chosen logits).

    `on_start` is called once the cell is claimed and work on it begins.
    """
    t0 = time.time()
    try:
        if cell_state(cell).kind == "finished":
            return Outcome(cell, "skipped", "already finished")
        got = acquire_claim(claim_path(cell), claim_timeout)
    except Exception as e:  # e.g. a folder name the file system refuses, a full disk: this cell only
        return Outcome(cell, "failed", _reason(e), time.time() - t0)
    if got.claim is None:
        h = got.holder or {}
        return Outcome(cell, "elsewhere", f"claimed by {h.get('host', '?')} pid {h.get('pid', '?')} "
                                          f"since {h.get('time_iso', '?')}")
    if heartbeat is not None:
        heartbeat.add(got.claim.path)
    try:
        # Re-check under the claim: another process may have finished it between our check and our claim.
        state = cell_state(cell)
        if state.kind == "finished":
            return Outcome(cell, "skipped", "already finished")
        if state.kind == "mismatch":
            return Outcome(cell, "failed", state.detail)
        if on_start is not None:
            on_start(cell)
        if state.kind in ("fresh", "resume"):
            rc = run_train(cell)
            if stopped_by_signal(rc):
                return Outcome(cell, "interrupted", f"train {stopped_by_signal(rc)}", time.time() - t0)
            if rc != 0:
                return Outcome(cell, "failed", f"train exited with code {rc}", time.time() - t0)
            state = cell_state(cell)
            if state.kind not in ("finished", "evals"):
                return Outcome(cell, "failed", f"train exited 0 but the run is not finished "
                                               f"({state.detail}; missing {', '.join(state.missing)})",
                               time.time() - t0)
        errors = []
        for job in cell.eval_jobs:
            if (cell.run_dir / EVAL_DIR / job.file).is_file():
                continue
            rc = run_eval(cell, job)
            what = f"eval {job.dataset}" + (f" {job.subsample}" if job.subsample != "all" else "") + \
                (f" --logits {job.logits}" if job.logits != "auto" else "")
            if stopped_by_signal(rc):
                return Outcome(cell, "interrupted", f"{what} {stopped_by_signal(rc)}", time.time() - t0)
            if rc != 0 or not (cell.run_dir / EVAL_DIR / job.file).is_file():
                errors.append(f"{what} exited with code {rc}" if rc else f"{what} wrote no file")
        if errors:
            return Outcome(cell, "failed", "; ".join(errors), time.time() - t0)
        return Outcome(cell, "done", "", time.time() - t0)
    except Exception as e:  # a runner bug, a full disk: fails this cell, never the worker
        return Outcome(cell, "failed", _reason(e), time.time() - t0)
    finally:
        if heartbeat is not None:
            heartbeat.discard(got.claim.path)
        try:
            release_claim(got.claim)
        except OSError:
            pass  # a claim that cannot be removed is taken over as stale (its holder is this process, once gone)


# How a child that Ctrl-C or SIGTERM stopped exits: `mmrl train`/`mmrl eval` catch the signal and exit
# 130 (the shell's 128 + SIGINT); one stopped before its handler was set is killed by the signal itself
# (Popen's -2 / -15); a shell in between reports 128 + the signal.
_INTERRUPTED = {130: "SIGINT", 143: "SIGTERM", -signal.SIGINT: "SIGINT", -signal.SIGTERM: "SIGTERM"}


def stopped_by_signal(rc: int) -> str:
    """'was interrupted (exit code 130)' when exit status ``rc`` means Ctrl-C / SIGTERM, else ''."""
    return f"was interrupted ({_INTERRUPTED[rc]}, exit code {rc})" if rc in _INTERRUPTED else ""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped :func:`run_cells`; ``outcomes`` are those of the cells handled
    (in grid order), so the caller can still say what happened to each."""

    def __init__(self, outcomes: list["Outcome"]):
        super().__init__("interrupted")
        self.outcomes = outcomes


def _reason(e: BaseException) -> str:
    """Why a cell failed, on one line (the summary lists it); the traceback too with ``--debug``."""
    from mmrl.errors import UserError, debug_enabled, error_line

    line = error_line(e) if isinstance(e, (UserError, OSError)) else f"{type(e).__name__}: {error_line(e)}"
    return f"{line}\n{traceback.format_exc(limit=5).strip()}" if debug_enabled() else line


def _eta(elapsed: float, ran: int, left: int, grid: Sequence[Cell] = (), waiting: Sequence[Cell] = (),
         workers: int = 1) -> str:
    """'; 12 left, about 3 min': the cells not yet handled, each estimated as `mmrl reproduce --dry-run`
    does from the finished runs (:mod:`mmrl.sweep.estimate`), over the workers; without such runs the
    wall-clock time per run so far (all workers together)."""
    if not ran or not left:
        return ""
    from mmrl.sweep.estimate import Estimator

    s = Estimator(grid).left(waiting, workers)[0] if waiting else None
    if s is None:
        s = elapsed / ran * left
    when = f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"
    return f"; {left} left, about {when}"


def run_cells(cells: Sequence[Cell], run_train: Callable[[Cell], int], run_eval: Callable[[Cell, EvalJob], int],
              workers: Sequence[str | None] = (None,), claim_timeout: float | None = None,
              heartbeat_s: float = 60.0, log: Callable[[str], None] = print,
              on_interrupt: Callable[[], None] | None = None) -> list[Outcome]:
    """Run `cells` on a :class:`mmrl.jobs.JobPool` of threads, one slot per entry of `workers`
    (a CUDA_VISIBLE_DEVICES value, or None).

    Each cell, when a slot is free, gets that slot's `device` and runs in a thread (the runner
    starts a subprocess, so the threads only wait). Outcomes are returned in
    grid order. A failing cell does not stop the others. On Ctrl-C (or
    SIGTERM turned into KeyboardInterrupt) no new cell starts, `on_interrupt`
    stops the running children, the workers release their claims, and
    :class:`SweepInterrupted` (a KeyboardInterrupt carrying the outcomes so far) is raised.
    """
    outcomes: list[Outcome | None] = [None] * len(cells)
    total = len(cells)

    def started(c: Cell) -> None:  # in the cell's thread, once it is claimed
        where = f" on GPU {c.device}" if c.device is not None else ""
        log(f"[{positions[c.run_dir]}/{total}] {c.name}: starting{where} (log: {c.log_path})")

    positions = {c.run_dir: i + 1 for i, c in enumerate(cells)}
    t_start = time.time()

    def work(device: str | None, c: Cell) -> Outcome:
        return run_cell(dataclasses.replace(c, device=device), run_train, run_eval, claim_timeout, hb,
                        on_start=started)

    def done(i: int, out: Outcome) -> None:  # in this thread, as each cell's outcome comes in
        outcomes[i] = out
        if out.status == "skipped":
            return  # counted in the summary; one line per finished run would drown the rest
        handled = sum(o is not None for o in outcomes)
        ran = sum(o is not None and o.status in ("done", "failed") for o in outcomes)
        msg = {"done": f"done in {out.seconds:.0f} s", "elsewhere": f"in progress elsewhere ({out.detail})",
               "interrupted": f"interrupted: {out.detail}; it resumes when the sweep runs again",
               "failed": f"FAILED: {out.detail} (log: {out.cell.log_path})"}[out.status]
        waiting = [cells[j] for j, o in enumerate(outcomes) if o is None]
        eta = _eta(time.time() - t_start, ran, total - handled, cells, waiting, len(workers))
        log(f"[{i + 1}/{total}] {out.cell.name}: {msg}{eta}")

    # on Ctrl-C: the children stopped, then up to 60 s for the cells to record their outcome and
    # release their claims
    pool = JobPool(list(workers), stop=on_interrupt, stop_wait_s=60.0)
    with Heartbeat(heartbeat_s) as hb:
        try:
            pool.run([Job(i, work, (c,)) for i, c in enumerate(cells)], done)
        except KeyboardInterrupt:
            raise SweepInterrupted([o for o in outcomes if o is not None]) from None
    return [o for o in outcomes if o is not None]
