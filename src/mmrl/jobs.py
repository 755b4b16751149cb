"""The one job pool: run independent jobs, a bounded number at once, and stop cleanly.

Used by `mmrl reproduce` (:func:`mmrl.sweep.runner.run_cells`: each job a grid cell, run from a
thread as `mmrl train` / `mmrl eval` subprocesses, one slot per GPU of ``--devices`` or per
``--jobs`` worker) and `mmrl demo` (:mod:`mmrl.toyworld.demo`: each job a run, in one of ``--jobs``
spawned worker processes that keep torch imported between jobs). What :class:`JobPool` guarantees:

- at most one job per slot at a time, started in the order given; nothing waits in an executor's
  queue, so a job not yet started can always be left unstarted;
- each result is handed to ``on_done(key, result)`` in the calling thread as its job finishes;
- Ctrl-C, or SIGTERM turned into KeyboardInterrupt (:func:`mmrl.commands.common.sigterm_as_interrupt`),
  in the calling thread: no new job starts, the running ones are stopped (``stop``; by default a
  worker process gets SIGINT, as a terminal's Ctrl-C would send it), their results are still
  reported as they come in, then the KeyboardInterrupt is raised again;
- a job's error (or ``on_done``'s): no new job starts, the running ones finish (reported), the error
  is raised;
- nothing outlives the parent: worker threads are daemons, worker processes end within a second
  of it (:func:`_init_worker`), and a subprocess started with ``preexec_fn=die_with_parent()``
  gets SIGTERM when it dies.

This module is light (no torch): sweep planning imports it.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class Job(Generic[K]):
    """One job: ``fn(*args)`` (``fn(slot, *args)`` in a pool of named slots), reported under ``key``.
    In a pool of processes ``fn`` and ``args`` must pickle (a module-level function)."""
    key: K
    fn: Callable[..., Any]
    args: tuple = ()


class JobPool:
    """Runs :class:`Job` s, at most one per slot at a time (see the module's docstring).

    ``workers``: a number of anonymous slots, or a sequence of named ones (e.g. the
    CUDA_VISIBLE_DEVICES value of each; one listed twice is two slots), each job then called
    with the slot it got as its first argument. ``processes``: run the jobs in that many spawned
    worker processes (``initializer(*initargs)`` runs once in each) instead of threads.
    ``stop``: called once on Ctrl-C / SIGTERM to stop the running jobs (threads cannot be stopped
    from outside: a thread's job must end when asked, e.g. by stopping its subprocess); default
    for processes: a worker still running its job 5 s later gets SIGINT (:meth:`_interrupt_workers`).
    ``stop_wait_s``: how long to wait, after that, for the running jobs to end (None: as long as
    they take).

    A context manager: leaving it shuts the worker processes down.
    """

    def __init__(self, workers: int | Sequence[Any], *, processes: bool = False,
                 initializer: Callable[..., None] | None = None, initargs: tuple = (),
                 stop: Callable[[], None] | None = None, stop_wait_s: float | None = None):
        self.named = not isinstance(workers, int)
        self.slots: list[Any] = list(workers) if self.named else [None] * max(1, workers)
        if not self.slots:
            raise ValueError("a job pool needs at least one worker")
        self.stop_wait_s = stop_wait_s
        self._executor: ProcessPoolExecutor | None = None
        if processes:
            self._executor = ProcessPoolExecutor(len(self.slots), mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(initializer, initargs))
        self._stop = stop

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker processes down (they have no job left by then)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def run(self, jobs: Iterable[Job[K]], on_done: Callable[[K, Any], None]) -> None:
        """Run ``jobs``, calling ``on_done(key, result)`` as each finishes; see the class."""
        todo = iter(jobs)
        free = list(reversed(self.slots))  # popped from the end: the first job gets the first slot
        running: dict[Future, tuple[K, Any]] = {}

        def start_next() -> None:
            for job in todo:
                slot = free.pop()
                args = (slot, *job.args) if self.named else job.args
                self._submit(running, (job.key, slot), job.fn, args)
                return

        def finish(fut: Future) -> None:
            key, slot = running.pop(fut)
            free.append(slot)
            on_done(key, fut.result())

        try:
            for _ in self.slots:
                start_next()
            while running:
                # short waits so that Ctrl-C reaches this (the main) thread
                done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    finish(fut)
                    start_next()
        except KeyboardInterrupt:
            self._cancel_unstarted(running)
            if running:
                if self._stop is not None:
                    self._stop()
                elif self._executor is not None:
                    self._interrupt_workers(list(running))
            self._drain(running, finish, self.stop_wait_s)
            raise
        except BaseException:
            self._cancel_unstarted(running)
            self._drain(running, finish, None)
            raise

    def _submit(self, running: dict[Future, Any], entry: Any, fn: Callable[..., Any], args: tuple) -> None:
        if self._executor is not None:
            running[self._executor.submit(_call_in_worker, fn, *args)] = entry
            return
        fut: Future = Future()
        running[fut] = entry  # registered before it starts: a Ctrl-C now still waits for it

        def body() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args)
            except BaseException as e:
                fut.set_exception(e)
            else:
                fut.set_result(result)

        threading.Thread(target=body, name=f"mmrl-job-{len(running)}", daemon=True).start()

    @staticmethod
    def _cancel_unstarted(running: dict[Future, Any]) -> None:
        """A job submitted at the moment of the stop may not have started: it never will."""
        for fut in list(running):
            fut.cancel()  # False (nothing done) for one that runs

    @staticmethod
    def _drain(running: dict[Future, Any], finish: Callable[[Future], None], limit_s: float | None) -> None:
        """Wait for the running jobs (at most ``limit_s``), reporting each that ends with a result
        (an error, or a cancelled job, is not reported: the error being raised says what happened)."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while running:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return  # daemon threads: they end with the process
            done, _ = wait(running, timeout=0.2 if left is None else min(0.2, left), return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    finish(fut)
                except BaseException:
                    pass

    def _interrupt_workers(self, running: list[Future], grace: float = 5.0) -> None:
        """Stop the jobs running in worker processes as Ctrl-C stops them (a run is marked
        interrupted and resumes later). A terminal's Ctrl-C reaches the workers too and they are
        already stopping: they get ``grace`` seconds to end before the SIGINT, which would
        interrupt their clean-up a second time. Idle workers ignore it."""
        if wait(running, timeout=grace).not_done:
            for p in list((getattr(self._executor, "_processes", None) or {}).values()):
                if p.is_alive() and p.pid is not None:
                    try:
                        os.kill(p.pid, signal.SIGINT)
                    except OSError:
                        pass


# --------------------------------------------------------------------------- worker processes
def _init_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A worker process: Ctrl-C only while a job runs (see :func:`_call_in_worker`), so an idle
    worker does not die with a traceback; it ends within a second of its parent (the pool's queues
    would otherwise keep an orphan waiting); then the pool's own ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch_parent, name="mmrl-parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _call_in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one job in a worker process; Ctrl-C interrupts it as it would in the parent."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return fn(*args)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- subprocesses
def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when this process dies, or None off Linux.

    Without it a ``kill -9`` of ``mmrl reproduce`` leaves its ``mmrl train`` children running
    unsupervised (their claims look abandoned, so a rerun would start a second writer; the run
    folder lock stops that, but the orphans still hold the GPUs). SIGTERM, not SIGKILL: the child
    stops as on Ctrl-C, marks its run interrupted and releases its lock, so a rerun resumes it.
    The signal comes when the *thread* that started the child ends: a job's thread waits for
    its child, so that is when the parent process dies. Linux then hands the child to another
    thread of the dying parent and signals it again, once per thread: `mmrl train` and `mmrl eval`
    act on the first SIGTERM only (:func:`mmrl.commands.common.sigterm_as_interrupt`).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:  # looked up here, in the parent: after fork the child only makes the call
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec
