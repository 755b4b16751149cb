"""Exclusive lock files: the sweep's cell claims and the one-writer lock of a run folder.

One mechanism for both. A lock is a small JSON file created with ``O_CREAT|O_EXCL`` (only
one process can create it) holding the holder's host, boot id, pid, process start time,
time and a random token. It is *stale*, and may be taken over, when

* its holder ran on this host (same host name and boot id) and that process is gone (the
  pid is checked together with its start time, so a reused pid does not count; a zombie --
  killed but not yet reaped by its parent -- counts as gone), or
* its holder ran on another host and the file was not touched for ``timeout_s`` seconds
  (holders touch their locks every ``heartbeat`` seconds with :class:`Heartbeat`, so only
  abandoned locks age).

Takeover runs under a short-lived ``<lock>.takeover`` file (itself ``O_EXCL``), so two
processes never both remove a stale lock and both believe they hold it.

Users of it:

* ``mmrl reproduce`` claims a cell with ``<RUN_DIR>.claim`` (beside the run folder) for as
  long as it trains and evaluates that cell in its child processes
  (:mod:`mmrl.sweep`);
* every command that writes into a run folder (``mmrl train``, ``mmrl eval``, ``mmrl
  convert-official``; so also the sweep's children) holds ``RUN_DIR/.lock`` while it
  writes (:class:`RunDirLock`). The two files differ, so a sweep's child never waits for
  its own parent's claim. Under ``torchrun`` rank 0 (the only writer) holds the lock.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.errors import RunLockedError
from mmrl.fileio import check_writable_dir, read_json_or_none, write_failed

RUN_LOCK_FILE = ".lock"
# Another host's run-folder lock not refreshed for this long belongs to a machine that went away.
RUN_LOCK_TIMEOUT_S = 900.0
RUN_LOCK_HEARTBEAT_S = 60.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or [] where /proc
    does not have them."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()


def _proc_start(pid: int) -> str:
    """Start time of a process (clock ticks since boot) or "" where /proc is not there; guards pid reuse."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""


HOST = socket.gethostname()
BOOT_ID = _boot_id()


def pid_alive(pid: int, proc_start: str = "") -> bool:
    """Whether process `pid` on this host runs (and, if `proc_start` is known, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        # killed (or exited) but not yet reaped by its parent: a zombie runs nothing and holds nothing;
        # its pid stays taken until then, so os.kill alone says "alive"
        return False
    if proc_start and len(fields) > 19 and fields[19] != proc_start:
        return False  # the pid was reused by another process
    return True


@dataclass
class Claim:
    """A lock this process holds."""
    path: Path
    token: str


@dataclass
class ClaimResult:
    claim: Claim | None              # set when acquired
    holder: dict | None = None       # the other holder's lock content when not acquired


def _claim_is_stale(info: dict | None, mtime: float, timeout_s: float | None, now: float) -> bool:
    if info is None:
        # Unreadable: another process is between O_EXCL create and write, or crashed right there.
        return now - mtime > 30.0
    same_host = info.get("host") == HOST and info.get("boot_id", "") == BOOT_ID
    if same_host and isinstance(info.get("pid"), int):
        return not pid_alive(info["pid"], str(info.get("proc_start", "")))
    return timeout_s is not None and now - mtime > timeout_s


def _read_claim(path: Path) -> tuple[dict | None, float] | None:
    """(content, mtime) of a lock file; None when it does not exist."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return read_json_or_none(path), mtime


def acquire_claim(path: Path, timeout_s: float | None = None, extra: dict[str, Any] | None = None) -> ClaimResult:
    """Create the lock file `path` atomically; take it over when its holder is gone.

    Returns the claim, or the current holder's content when another live
    process holds it. `extra` (JSON-able) is stored in the file beside the
    holder's identity (e.g. the command that holds it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        token = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = _read_claim(path)
            if seen is None:
                continue  # released meanwhile: try again
            info, mtime = seen
            if not _claim_is_stale(info, mtime, timeout_s, time.time()):
                return ClaimResult(None, info or {"host": "?", "pid": "?", "note": "being written"})
            if not _take_over(path, info, mtime, timeout_s):
                return ClaimResult(None, info or {"host": "?", "pid": "?"})
            continue
        content = {**(extra or {}), "host": HOST, "boot_id": BOOT_ID, "pid": os.getpid(),
                   "proc_start": _proc_start(os.getpid()), "time": time.time(),
                   "time_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
        try:
            _write_all(fd, json.dumps(content).encode())
            os.fsync(fd)
        except OSError as e:
            # e.g. a full disk: the file exists but is empty, and would keep the next command out
            # (an unreadable lock counts as being written for 30 s); it is ours, so remove it
            path.unlink(missing_ok=True)
            raise write_failed(path, e) from None
        finally:
            os.close(fd)
        return ClaimResult(Claim(path, token))
    seen = _read_claim(path)
    return ClaimResult(None, (seen[0] if seen else None) or {"host": "?", "pid": "?"})


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _take_over(path: Path, judged: dict | None, judged_mtime: float, timeout_s: float | None) -> bool:
    """Remove the stale lock `path` if it is still the one judged stale. True when removed."""
    lock = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > 60.0:  # a taker died inside this short section
                lock.unlink()
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        seen = _read_claim(path)
        if seen is None:
            return True
        info, mtime = seen
        same = (info or {}).get("token") == (judged or {}).get("token") and mtime == judged_mtime
        if not same or not _claim_is_stale(info, mtime, timeout_s, time.time()):
            return False
        path.unlink()
        return True
    finally:
        lock.unlink(missing_ok=True)


def release_claim(claim: Claim) -> None:
    """Remove the lock file if it is still ours."""
    info = read_json_or_none(claim.path)
    if info is not None and info.get("token") == claim.token:
        claim.path.unlink(missing_ok=True)


def read_holder(path: Path) -> dict | None:
    """Content of the lock file `path` when it exists and its holder may still be alive, else None."""
    seen = _read_claim(path)
    if seen is None:
        return None
    info, mtime = seen
    if info is None or _claim_is_stale(info, mtime, None, time.time()):
        return None
    return info


def describe_holder(holder: dict | None) -> str:
    """``mmrl train, pid 123 on host n1, since 2025-01-01T10:00:00+0000``."""
    h = holder or {}
    what = f"{h['command']}, " if h.get("command") else ""
    return f"{what}pid {h.get('pid', '?')} on host {h.get('host', '?')}, since {h.get('time_iso', '?')}"


class Heartbeat:
    """Touches the held locks every `interval` seconds so other hosts see they are alive."""

    def __init__(self, interval: float):
        self.interval = interval
        self.claims: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="claim-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, path: Path) -> None:
        with self._lock:
            self.claims.add(path)

    def discard(self, path: Path) -> None:
        with self._lock:
            self.claims.discard(path)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                paths = list(self.claims)
            for p in paths:
                try:
                    os.utime(p)
                except OSError:
                    pass


# ----------------------------------------------------------------------------------------------
# The run folder's writer lock
# ----------------------------------------------------------------------------------------------

def run_lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RUN_LOCK_FILE


class RunDirLock:
    """The exclusive writer lock of one run folder, ``RUN_DIR/.lock``.

    ``RunDirLock.acquire(run_dir, "mmrl train", hint=...)`` first proves that the folder can
    be written (:func:`mmrl.fileio.check_writable_dir`, whose error carries ``hint``), then
    creates the lock; when another live process holds it, raises
    :class:`mmrl.errors.RunLockedError` naming that process. ``release()`` (or leaving the
    ``with`` block) removes the lock and any folders that acquiring created and nothing
    filled since.
    """

    def __init__(self, run_dir: Path, claim: Claim, created: list[Path], heartbeat: Heartbeat):
        self.run_dir, self.claim, self._created, self._heartbeat = run_dir, claim, created, heartbeat

    @classmethod
    def acquire(cls, run_dir: str | Path, command: str, *, hint: str = "choose another --output",
                timeout_s: float = RUN_LOCK_TIMEOUT_S, heartbeat_s: float = RUN_LOCK_HEARTBEAT_S) -> "RunDirLock":
        run_dir = Path(run_dir)
        created = []
        p = run_dir.absolute()
        while not p.exists() and p != p.parent:
            created.append(p)
            p = p.parent
        try:
            check_writable_dir(run_dir, hint)
            got = acquire_claim(run_lock_path(run_dir), timeout_s, extra={"command": command})
        except OSError:  # not writable, or a full disk: leave no empty folders behind either
            _remove_empty(created)
            raise
        if got.claim is None:
            _remove_empty(created)
            h = got.holder or {}
            elsewhere = "" if h.get("host") == HOST else (
                f" (if that machine is gone: its lock expires {timeout_s / 60:.0f} min after its last heartbeat, "
                f"or delete {run_lock_path(run_dir)})")
            raise RunLockedError(f"{run_dir} is in use by another mmrl process ({describe_holder(h)}): one writer "
                                 f"per run folder; wait for it to finish, or {hint}{elsewhere}")
        hb = Heartbeat(heartbeat_s).__enter__()
        hb.add(got.claim.path)
        return cls(run_dir, got.claim, created, hb)

    def release(self) -> None:
        if self.claim is None:
            return
        self._heartbeat.__exit__(None, None, None)
        release_claim(self.claim)
        self.claim = None
        _remove_empty(self._created)

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _remove_empty(folders: list[Path]) -> None:
    """rmdir the folders (deepest first) as long as they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


__all__ = ["HOST", "BOOT_ID", "pid_alive", "Claim", "ClaimResult", "acquire_claim", "release_claim", "read_holder",
           "describe_holder", "Heartbeat", "RunDirLock", "run_lock_path", "RUN_LOCK_FILE"]
