"""A full disk: the error names the file being written (one line), the up-front writability check
writes real bytes, no empty ``.lock`` or ``*.tmp`` is left behind, and the next command is not refused.

The disk is made full by handing the writer a descriptor of ``/dev/full`` in place of its file (the
file itself is still created, as on a real full disk): every write then fails with the kernel's own
ENOSPC, whichever Python call makes it.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import make_benchmark_dataset, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.engine import lock
from mmrl.errors import NotWritableError, UserError
from mmrl.fileio import WriteFailedError, check_writable_dir, write_json_atomic

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
torch.set_num_threads(1)


def _to_dev_full(fd: int) -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)


def fill_disk(monkeypatch, where: Path, only: str = "") -> None:
    """From now on, files created under ``where`` (temporary files whose prefix contains ``only``,
    and every ``.lock`` when ``only`` is empty) cannot be written: ENOSPC."""
    where = where.resolve()
    real_mkstemp, real_open = tempfile.mkstemp, os.open

    def inside(p) -> bool:
        return Path(os.path.abspath(p)).is_relative_to(where)

    def mkstemp(*a, dir=None, prefix=None, **kw):
        fd, name = real_mkstemp(*a, dir=dir, prefix=prefix, **kw)
        if inside(name) and only in (prefix or ""):
            _to_dev_full(fd)
        return fd, name

    def open_(path, flags, *a, **kw):
        fd = real_open(path, flags, *a, **kw)
        if not only and inside(path) and str(path).endswith(".lock") and flags & os.O_WRONLY:
            _to_dev_full(fd)
        return fd

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "open", open_)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock"))
                  or p.name.startswith(".mmrl-write-test"))


def test_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "out" / "run.json"
    write_json_atomic({"old": 1}, target)
    fill_disk(monkeypatch, tmp_path)
    with pytest.raises(WriteFailedError) as e:
        write_json_atomic({"new": 2}, target)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {target}: No space left on device") and "\n" not in msg
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, UserError) and isinstance(e.value, OSError)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}       # the old content, untouched
    assert leftovers(tmp_path) == []                          # no .run.json.*.tmp


def test_writability_check_writes_real_bytes(tmp_path, monkeypatch):
    """On a full disk an empty file can still be created: the check must write, and say so."""
    folder = tmp_path / "runs"
    folder.mkdir()
    fill_disk(monkeypatch, tmp_path)
    with pytest.raises(NotWritableError, match=f"cannot write into {folder}: No space left on device; pick"):
        check_writable_dir(folder, "pick another --output")
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert check_writable_dir(folder, "x") == folder


def test_lock_on_a_full_disk_leaves_no_empty_lock(tmp_path, monkeypatch):
    path = tmp_path / "run" / ".lock"
    fill_disk(monkeypatch, tmp_path)
    with pytest.raises(WriteFailedError, match=f"cannot write {path}: No space left on device"):
        lock.acquire_claim(path)
    monkeypatch.undo()
    assert not path.exists()
    got = lock.acquire_claim(path)                            # at once, not after the 30 s grace
    assert got.claim is not None
    lock.release_claim(got.claim)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("disk")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures")
    return {"clip": write_tiny_clip(base / "clip.pt"), "root": root, "base": base}


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("mmrl: error: ")]


def test_train_on_a_full_disk(world, monkeypatch, capsys):
    run = world["base"] / "full-from-the-start"
    run.mkdir()
    fill_disk(monkeypatch, run)
    assert main([str(a) for a in tiny_train_argv(world["clip"], world["root"], run)]) == 1
    monkeypatch.undo()
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"mmrl: error: cannot write into {run}: No space left on device; choose another --output"]
    assert leftovers(run) == []


def test_disk_full_during_the_run_then_the_next_command_runs(world, monkeypatch, capsys):
    run = world["base"] / "fills-up"
    argv = [str(a) for a in tiny_train_argv(world["clip"], world["root"], run)]
    fill_disk(monkeypatch, world["base"], only=".run.json.")  # the check and the lock pass; run.json cannot
    assert main(argv) == 1
    monkeypatch.undo()
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"mmrl: error: cannot write {run / 'run.json'}: "
                                                   "No space left on device (the disk or your quota is full"), lines
    assert leftovers(run) == []                               # no .lock, no .run.json.*.tmp
    assert main(argv) == 0                                    # space freed: the same command runs
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_reproduce_on_a_full_disk_says_so_before_any_run(tmp_path, monkeypatch, capsys):
    from helpers import make_benchmark_folders

    make_benchmark_folders(tmp_path)
    out = tmp_path / "sweep"
    out.mkdir()
    started = []
    monkeypatch.setattr("mmrl.sweep.SubprocessRunner.train", lambda self, cell: started.append(cell) or 0)
    fill_disk(monkeypatch, out)
    rc = main(["reproduce", "fewshot", "--method", "mmrl", "--root", str(tmp_path), "--output", str(out),
               "--datasets", "dtd", "--shots", "1", "--seeds", "1"])
    monkeypatch.undo()
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 1 and lines == [f"mmrl: error: cannot write into {out}: No space left on device; "
                                 "choose another --output"], lines
    assert started == [] and leftovers(out) == [] and not list(out.rglob("grid-*.json"))
