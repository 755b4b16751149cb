"""The reproduction grid, run states, claim files and parallel workers.

A *cell* is one training run of the grid (one method, dataset, shot count and
seed; for cross-dataset also the evaluations of its targets). `mmrl
reproduce` builds the grid (`build_grid`), optionally keeps a shard of it
(`take_shard`) and hands it to `run_cells`, which runs cells in worker threads
(one per GPU of `--devices`, or `--jobs` CPU workers), each cell in its own
subprocess with its own log `RUN_DIR/stdout.log`.

Several processes (on one or several hosts) may work on the same output
directory: before running a cell a worker creates the claim file
`<RUN_DIR>.claim` (a sibling of the run folder) with O_CREAT|O_EXCL, so only
one of them runs it. A claim of a dead process on this host is taken over; a
claim of another host is respected until its modification time is older than
`claim_timeout` seconds (the holder touches its claims every `heartbeat`
seconds, so only abandoned claims age). Claims are the lock files of
`mmrl.engine.lock`; each child `mmrl train` / `mmrl eval` additionally holds
the run folder's own writer lock `RUN_DIR/.lock` while it writes (another
file, so a child never waits for its parent's claim), which also keeps a
user's manual `mmrl train --output` on the same folder out.

Run folder layout: `OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>/`.
"""
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
from typing import Callable, Iterable, Mapping, Sequence

# Claims are lock files of the same mechanism as the run folders' writer lock (mmrl.engine.lock);
# its names are re-exported here for the sweep's users.
from mmrl.engine.lock import (BOOT_ID, HOST, Claim, ClaimResult, Heartbeat, _proc_start, acquire_claim,  # noqa: F401
                              describe_holder, pid_alive, release_claim)
from mmrl.fileio import read_json_or_none as read_json
# The project's vocabulary lives in mmrl.vocab (torch-free); the names are re-exported for the sweep's users.
from mmrl.vocab import (  # noqa: F401
    ALL_DATASETS, CROSS_SOURCE, CROSS_TARGETS, DATASETS, DEFAULT_SEEDS, DEFAULT_SHOTS, METHODS, PROTOCOLS, VARIANTS,
    CONFIG_FILE, EVAL_DIR, RUN_FILE, STDOUT_LOG, canonical_benchmark, eval_file_name, sweep_run_dir,
)

def canonical_dataset(name: str) -> str:
    """Canonical name of a benchmark given its name (any case), its folder name or an alias
    (the one table, :data:`mmrl.vocab.DATASET_ALIASES`)."""
    canon = canonical_benchmark(name)
    if canon is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(ALL_DATASETS)} "
                         f"(or a folder name or short form such as dtd, eurosat, oxford_pets, textures)")
    return canon


def run_dir_for(output: Path | str, protocol: str, method: str, dataset: str, shots: int, seed: int) -> Path:
    """`OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>` (the layout the report reads)."""
    return sweep_run_dir(output, protocol, method, dataset, shots, seed)


@dataclass(frozen=True)
class Cell:
    """One run of the grid, with everything needed to launch it.

    `targets` is empty except for cross-dataset, where it lists the datasets
    evaluated (with `mmrl eval`) on the model trained on `dataset`.
    `device` is filled in by the worker that runs the cell (None: inherit).
    """
    protocol: str
    method: str
    dataset: str
    shots: int
    seed: int
    run_dir: Path
    targets: tuple[str, ...] = ()
    root: Path | None = None
    backbone: str | None = None
    sets: tuple[str, ...] = ()
    device: str | None = None

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.method}/{self.dataset}/shots_{self.shots}/seed_{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / STDOUT_LOG

    @property
    def train_evals(self) -> tuple[str, ...]:
        """Eval files (under RUN_DIR/eval/) a finished `mmrl train` leaves behind."""
        if self.protocol == "base2novel":
            return (eval_file_name(self.dataset, "base"), eval_file_name(self.dataset, "new"))
        return (eval_file_name(self.dataset, "all"),)

    @property
    def target_evals(self) -> tuple[str, ...]:
        return tuple(eval_file_name(t, "all") for t in self.targets)


def build_grid(protocol: str, method: str, output: Path | str, *, datasets: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None, shots: Sequence[int] | None = None,
               root: Path | str | None = None, backbone: str | None = None,
               sets: Sequence[str] = ()) -> list[Cell]:
    """The grid of a protocol in canonical order: dataset (papers' order), then shots, then seed.

    The order does not depend on the order of the arguments, so `take_shard`
    splits the same grid the same way on every machine. For cross-dataset,
    `datasets` selects the targets (default: the 10 other datasets and the 4
    ImageNet variants) and there is one cell per shot count and seed, trained
    on ImageNet.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    seeds = sorted(set(int(s) for s in (seeds or DEFAULT_SEEDS)))
    shot_list = sorted(set(int(k) for k in (shots or DEFAULT_SHOTS[protocol])))
    if any(k < 1 for k in shot_list):
        raise ValueError(f"shots must be >= 1, got {shot_list}")
    chosen = None if not datasets else {canonical_dataset(d) for d in datasets}
    common = dict(root=Path(root) if root is not None else None, backbone=backbone, sets=tuple(sets))
    cells: list[Cell] = []
    if protocol == "crossdataset":
        targets = tuple(t for t in CROSS_TARGETS if chosen is None or t in chosen)
        if chosen is not None and (bad := chosen - set(CROSS_TARGETS)):
            raise ValueError(f"cross-dataset targets must be among {', '.join(CROSS_TARGETS)}; got {sorted(bad)}")
        for k in shot_list:
            for s in seeds:
                cells.append(Cell(protocol, method, CROSS_SOURCE, k, s,
                                  run_dir_for(output, protocol, method, CROSS_SOURCE, k, s), targets, **common))
        return cells
    if chosen is not None and (bad := chosen - set(DATASETS)):
        raise ValueError(f"{protocol} runs on the 11 datasets {', '.join(DATASETS)}; got {sorted(bad)}")
    for d in DATASETS:
        if chosen is not None and d not in chosen:
            continue
        for k in shot_list:
            for s in seeds:
                cells.append(Cell(protocol, method, d, k, s, run_dir_for(output, protocol, method, d, k, s),
                                  **common))
    return cells


_TORCHRUN_VARS = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                            "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                            "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"})


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """`"I/N"` (0-based I in [0, N)) -> (I, N); `"slurm"` reads a Slurm job array.

    With `slurm`, I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN and
    N = SLURM_ARRAY_TASK_COUNT, so both `--array=0-(N-1)` and `--array=1-N` work.
    """
    env = os.environ if environ is None else environ
    if text.strip().lower() == "slurm":
        try:
            task = int(env["SLURM_ARRAY_TASK_ID"])
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        except (KeyError, ValueError) as e:
            raise ValueError(f"--shard slurm needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                             f"in the environment (a Slurm job array): {e}") from None
        index = task - first
    else:
        try:
            i, n = text.split("/")
            index, count = int(i), int(n)
        except ValueError:
            raise ValueError(f"--shard expects I/N (e.g. 0/4) or 'slurm', got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= I < N (I is 0-based: "
                         f"use --array=0-{max(count - 1, 0)} in Slurm, or --shard slurm)")
    return index, count


def take_shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Cells whose position in the canonical grid is `index` modulo `count`."""
    return [c for i, c in enumerate(cells) if i % count == index]


# ----------------------------------------------------------------------------------------------
# Run state
# ----------------------------------------------------------------------------------------------

@dataclass
class CellState:
    """What is left to do for a cell.

    kind: "finished" (nothing), "fresh" (no run.json: train from scratch),
    "resume" (run.json exists but the run is not finished: train again, it
    resumes), "evals" (training finished, some cross-dataset targets not yet
    evaluated) or "mismatch" (run.json describes another run).
    """
    kind: str
    missing: tuple[str, ...] = ()
    detail: str = ""


def cell_state(cell: Cell) -> CellState:
    run = read_json(cell.run_dir / RUN_FILE)
    if run is None:
        return CellState("fresh", cell.train_evals + cell.target_evals)
    want = {"method": cell.method, "dataset": cell.dataset, "protocol": cell.protocol,
            "shots": cell.shots, "seed": cell.seed}
    if cell.backbone is not None:
        want["backbone"] = cell.backbone
    diff = {k: (run.get(k), v) for k, v in want.items() if k in run and run.get(k) != v}
    if diff:
        detail = "; ".join(f"{k}={have!r} in run.json, expected {exp!r}" for k, (have, exp) in diff.items())
        return CellState("mismatch", (), f"{cell.run_dir / RUN_FILE}: {detail}")
    evals = cell.run_dir / EVAL_DIR
    missing_train = tuple(n for n in cell.train_evals if not (evals / n).is_file())
    missing_targets = tuple(n for n in cell.target_evals if not (evals / n).is_file())
    if run.get("status") != "finished" or missing_train:
        return CellState("resume", missing_train + missing_targets, f"status {run.get('status')!r}")
    if missing_targets:
        return CellState("evals", missing_targets)
    return CellState("finished")


# ----------------------------------------------------------------------------------------------
# Claim files
# ----------------------------------------------------------------------------------------------

def claim_path(cell: Cell) -> Path:
    """`<RUN_DIR>.claim`: beside the run folder, which holds the child's own writer lock (`RUN_DIR/.lock`)."""
    return cell.run_dir.with_name(cell.run_dir.name + ".claim")


def read_claim_holder(cell_run_dir: Path) -> dict | None:
    """Content of the claim beside a run folder (for the report), or None."""
    p = cell_run_dir.with_name(cell_run_dir.name + ".claim")
    return read_json(p) if p.exists() else None


# ----------------------------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------------------------

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
        for kv in cell.sets:
            cmd += ["--set", kv]
        # Re-running train on an unfinished folder resumes it anyway; `--resume` additionally makes
        # train refuse to start from scratch. It needs the run's config.yaml, written before run.json.
        if (cell.run_dir / RUN_FILE).exists() and (cell.run_dir / CONFIG_FILE).exists():
            cmd.append("--resume")
        return cmd

    def eval_command(self, cell: Cell, target: str) -> list[str]:
        cmd = self.prefix + ["eval", str(cell.run_dir), "--dataset", target, "--subsample", "all"]
        if cell.root is not None:
            cmd += ["--root", str(cell.root)]
        return cmd

    def train(self, cell: Cell) -> int:
        return self._run(cell, self.train_command(cell))

    def evaluate(self, cell: Cell, target: str) -> int:
        return self._run(cell, self.eval_command(cell, target))

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


def run_cell(cell: Cell, run_train: Callable[[Cell], int], run_eval: Callable[[Cell, str], int],
             claim_timeout: float | None, heartbeat: Heartbeat | None = None,
             on_start: Callable[[Cell], None] | None = None) -> Outcome:
    """Bring one cell to "finished": skip, or claim it, train (fresh or resumed) and evaluate missing targets.

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
        for target in cell.targets:
            if (cell.run_dir / EVAL_DIR / eval_file_name(target, "all")).is_file():
                continue
            rc = run_eval(cell, target)
            if rc != 0 or not (cell.run_dir / EVAL_DIR / eval_file_name(target, "all")).is_file():
                errors.append(f"eval {target} exited with code {rc}" if rc else f"eval {target} wrote no file")
        if errors:
            return Outcome(cell, "failed", "; ".join(errors), time.time() - t0)
        return Outcome(cell, "done", "", time.time() - t0)
    except Exception:  # a runner bug must not stop the other workers
        return Outcome(cell, "failed", traceback.format_exc(limit=3).strip(), time.time() - t0)
    finally:
        if heartbeat is not None:
            heartbeat.discard(got.claim.path)
        release_claim(got.claim)


def run_cells(cells: Sequence[Cell], run_train: Callable[[Cell], int], run_eval: Callable[[Cell, str], int],
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
            if out.status == "skipped":
                continue  # counted in the summary; one line per finished run would drown the rest
            msg = {"done": f"done in {out.seconds:.0f} s", "elsewhere": f"in progress elsewhere ({out.detail})",
                   "failed": f"FAILED: {out.detail} (log: {c.log_path})"}[out.status]
            log(f"[{i + 1}/{total}] {c.name}: {msg}")

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


def grid_spec(cells: Iterable[Cell]) -> dict:
    """The grid as data (written to `<protocol>/<method>/grid-*.json` so the report knows what is expected)."""
    cells = list(cells)
    return {
        "protocol": cells[0].protocol if cells else None,
        "method": cells[0].method if cells else None,
        "datasets": sorted({c.dataset for c in cells}, key=ALL_DATASETS.index),
        "targets": list(cells[0].targets) if cells else [],
        "shots": sorted({c.shots for c in cells}),
        "seeds": sorted({c.seed for c in cells}),
    }
