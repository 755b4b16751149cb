"""Running cells: each in its own subprocess, in worker threads (one per GPU of `--devices`,
or `--jobs` CPU workers), each claimed first (:mod:`mmrl.sweep.state`) and logged to
`RUN_DIR/stdout.log`."""
from __future__ import annotations

import dataclasses
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mmrl.engine.lock import HOST, Heartbeat, acquire_claim, release_claim
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
        with open(cell.log_path, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} host={HOST} pid={os.getpid()} "
                      f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')}\n=== {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
            with self._lock:
                self._procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
            log.write(f"=== exit code {rc}\n")
        return rc

    def terminate_all(self) -> None:
        """Stop the children this runner started (on Ctrl-C / SIGTERM of the sweep)."""
        with self._lock:
            procs = list(self._procs)
        for p in procs:
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
    (claimed by another live process), "failed".
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
    if cell_state(cell).kind == "finished":
        return Outcome(cell, "skipped", "already finished")
    got = acquire_claim(claim_path(cell), claim_timeout)
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
            if rc != 0 or not (cell.run_dir / EVAL_DIR / job.file).is_file():
                errors.append(f"{what} exited with code {rc}" if rc else f"{what} wrote no file")
        if errors:
            return Outcome(cell, "failed", "; ".join(errors), time.time() - t0)
        return Outcome(cell, "done", "", time.time() - t0)
    except Exception:  # a runner bug must not stop the other workers
        return Outcome(cell, "failed", traceback.format_exc(limit=3).strip(), time.time() - t0)
    finally:
        if heartbeat is not None:
            heartbeat.discard(got.claim.path)
        release_claim(got.claim)


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
    """Run `cells` with one thread per entry of `workers` (a CUDA_VISIBLE_DEVICES value, or None).

    Each thread takes the next cell, sets its `device` and runs it (the runner
    starts a subprocess, so the threads only wait). Outcomes are returned in
    grid order. A failing cell does not stop the others. On Ctrl-C (or
    SIGTERM turned into KeyboardInterrupt) no new cell starts, `on_interrupt`
    stops the running children, the workers release their claims, and the
    KeyboardInterrupt is re-raised.
    """
    todo: queue.Queue[tuple[int, Cell]] = queue.Queue()
    for i, c in enumerate(cells):
        todo.put((i, c))
    outcomes: list[Outcome | None] = [None] * len(cells)
    lock = threading.Lock()
    total = len(cells)
    stop = threading.Event()

    def started(c: Cell) -> None:
        where = f" on GPU {c.device}" if c.device is not None else ""
        log(f"[{positions[c.run_dir]}/{total}] {c.name}: starting{where} (log: {c.log_path})")

    positions = {c.run_dir: i + 1 for i, c in enumerate(cells)}
    t_start = time.time()

    def worker(device: str | None) -> None:
        while not stop.is_set():
            try:
                i, c = todo.get_nowait()
            except queue.Empty:
                return
            c = dataclasses.replace(c, device=device)
            out = run_cell(c, run_train, run_eval, claim_timeout, hb, on_start=started)
            with lock:
                outcomes[i] = out
                handled = sum(o is not None for o in outcomes)
                ran = sum(o is not None and o.status in ("done", "failed") for o in outcomes)
            if out.status == "skipped":
                continue  # counted in the summary; one line per finished run would drown the rest
            msg = {"done": f"done in {out.seconds:.0f} s", "elsewhere": f"in progress elsewhere ({out.detail})",
                   "failed": f"FAILED: {out.detail} (log: {c.log_path})"}[out.status]
            with lock:
                waiting = [cells[j] for j, o in enumerate(outcomes) if o is None]
            eta = _eta(time.time() - t_start, ran, total - handled, cells, waiting, len(workers))
            log(f"[{i + 1}/{total}] {c.name}: {msg}{eta}")

    # Wait on an Event, not Thread.join: a join interrupted by Ctrl-C can mark a running thread as
    # stopped (CPython bpo-45274 handling), and then we could no longer wait for it to clean up.
    all_done = threading.Event()
    running = [len(workers)]

    def run_worker(device: str | None) -> None:
        try:
            worker(device)
        finally:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    all_done.set()

    with Heartbeat(heartbeat_s) as hb:
        try:
            for j, d in enumerate(workers):
                threading.Thread(target=run_worker, args=(d,), name=f"worker-{j}", daemon=True).start()
            while not all_done.wait(0.2):  # short waits so Ctrl-C reaches the main thread
                pass
        except KeyboardInterrupt:
            stop.set()
            if on_interrupt is not None:
                on_interrupt()
            all_done.wait(60.0)  # let the workers record their outcome and release their claims
            raise
    return [o for o in outcomes if o is not None]
