"""One run folder, one writer: the run-folder lock (`RUN_DIR/.lock`) of train, eval, convert-official,
shared with the sweep's claims (mmrl.engine.lock)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import (dead_pid, make_benchmark_dataset, tiny_method_overrides, tiny_train_argv,
                     train_killed_after_first_checkpoint, write_lock_file, write_tiny_clip)
from mmrl.cli import main
from mmrl import sweep
from mmrl.engine import lock
from mmrl.engine.lock import RunDirLock, run_lock_path
from mmrl.errors import RunLockedError

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("run_lock")
    clip = write_tiny_clip(base / "clip.pt")
    make_benchmark_dataset(base / "data", "DescribableTextures")
    return {"clip": clip, "root": base / "data", "base": base}


# --------------------------------------------------------------------------- the lock itself
def test_second_writer_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunDirLock.acquire(run, "mmrl train"):
        held = json.loads(run_lock_path(run).read_text())
        assert held["pid"] == os.getpid() and held["host"] == lock.HOST and held["command"] == "mmrl train"
        with pytest.raises(RunLockedError) as e:
            RunDirLock.acquire(run, "mmrl eval", hint="write the result elsewhere with --output-dir DIR")
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and f"host {lock.HOST}" in msg and held["time_iso"] in msg
        assert "mmrl train" in msg and "--output-dir" in msg and str(run) in msg
    assert not run_lock_path(run).exists()
    RunDirLock.acquire(run, "mmrl train").release()  # free again


def test_dead_holder_taken_over_live_one_of_another_host_respected(tmp_path):
    run = tmp_path / "run"
    write_lock_file(run_lock_path(run), pid=dead_pid(), command="mmrl train")
    with RunDirLock.acquire(run, "mmrl train"):
        assert json.loads(run_lock_path(run).read_text())["pid"] == os.getpid()
    # another host's lock: refused while refreshed, taken over once older than the timeout
    write_lock_file(run_lock_path(run), host="node7", boot_id="b", pid=42, command="mmrl train")
    with pytest.raises(RunLockedError, match=r"node7.*delete"):
        RunDirLock.acquire(run, "mmrl train", timeout_s=100)
    old = time.time() - 1000
    os.utime(run_lock_path(run), (old, old))
    RunDirLock.acquire(run, "mmrl train", timeout_s=100).release()
    assert not run_lock_path(run).exists()


def test_folders_created_for_nothing_are_removed(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    RunDirLock.acquire(run, "mmrl train").release()
    assert not (tmp_path / "a").exists()  # nothing was written: no empty folders left behind
    with RunDirLock.acquire(run, "mmrl train"):
        (run / "config.yaml").write_text("x")
    assert (run / "config.yaml").is_file() and not run_lock_path(run).exists()


def test_sweep_claims_are_the_same_mechanism():
    assert sweep.acquire_claim is lock.acquire_claim and sweep.pid_alive is lock.pid_alive
    assert sweep.Heartbeat is lock.Heartbeat


# --------------------------------------------------------------------------- through the commands
HOLD_SCRIPT = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from mmrl.cli import main
from mmrl.engine import trainer

go, started = Path(sys.argv[1]), Path(sys.argv[2])
real = trainer._train_and_evaluate
def held(cfg, run_dir, info, *a, **k):  # the lock is held from here on: wait for the test's signal
    started.write_text("1")
    while not go.exists():
        time.sleep(0.05)
    return real(cfg, run_dir, info, *a, **k)
trainer._train_and_evaluate = held
sys.exit(main(sys.argv[3:]))
"""


def _wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    while not path.exists():
        assert proc.poll() is None, f"{what} ended early: {proc.communicate()}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_concurrent_trains_one_refuses_folder_consistent(world, tmp_path):
    out = world["base"] / "two"
    script = tmp_path / "hold.py"
    script.write_text(HOLD_SCRIPT)
    go, started = tmp_path / "go", tmp_path / "started"
    first = subprocess.Popen([sys.executable, str(script), str(go), str(started),
                              *tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.lr=0.001"])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(started, first, "the first train")
        # the second one, another learning rate: refused at once, naming the holder, nothing written
        second = subprocess.run([sys.executable, "-m", "mmrl",
                                 *tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.lr=0.005"])],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr
        assert f"pid {first.pid}" in second.stderr and "mmrl train" in second.stderr and "Traceback" not in second.stderr
        assert "one writer per run folder" in second.stderr
        # the same config again: refused too (not a second resume of the same run)
        third = subprocess.run([sys.executable, "-m", "mmrl",
                                *tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.lr=0.001"])],
                               capture_output=True, text=True, timeout=300)
        assert third.returncode == 1 and f"pid {first.pid}" in third.stderr
        go.write_text("1")
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        go.write_text("1")
        if first.poll() is None:
            first.kill()
    # every file is the first run's
    from mmrl.config import load_config
    assert load_config(out / "config.yaml").optim.lr == 0.001
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["attempts"] == 1
    results = json.loads((out / "results.json").read_text())
    assert results["accuracy"] == json.loads((out / "eval" / "DescribableTextures-all.json").read_text())["accuracy"]
    assert not run_lock_path(out).exists()


@pytest.mark.multiprocess
def test_killed_holder_lock_is_taken_over(world):
    out = world["base"] / "killed"
    proc = train_killed_after_first_checkpoint(
        tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.epochs=3"]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = json.loads(run_lock_path(out).read_text())  # the dead process could not remove its lock
    assert left["command"] == "mmrl train" and left["host"] == lock.HOST
    assert not lock.pid_alive(left["pid"], left["proc_start"])
    assert main(tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.epochs=3"])) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["attempts"] == 2
    assert not run_lock_path(out).exists()


def test_eval_refused_while_the_run_is_written_but_may_write_elsewhere(world, tmp_path, capsys):
    out = world["base"] / "evallock"
    assert main(tiny_train_argv(world["clip"], world["root"], out)) == 0
    with RunDirLock.acquire(out, "mmrl train"):
        capsys.readouterr()
        assert main(["eval", str(out), "--dataset", "dtd", "--root", str(world["root"])]) == 1
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "--output-dir" in err and "Traceback" not in err
        # reading the run and writing the result outside it needs no lock
        assert main(["eval", str(out), "--dataset", "dtd", "--root", str(world["root"]),
                     "--output-dir", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "DescribableTextures-all.json").is_file()


def test_convert_official_takes_the_lock(world, tmp_path, capsys):
    from helpers import random_adapter, write_official_checkpoint
    from mmrl.config import resolve_config
    from mmrl.models import build_method, load_backbone

    cfg = resolve_config("mmrl", "fewshot", "dtd", overrides=tiny_method_overrides("mmrl"))
    shapes = build_method(load_backbone(str(world["clip"])), cfg.method).adapter_shapes()
    ckpt = write_official_checkpoint(tmp_path / "model.pth.tar-5", random_adapter(shapes), "mmrl")
    out = tmp_path / "converted"
    argv = ["convert-official", str(ckpt), "--method", "mmrl", "--backbone", str(world["clip"]), "--dataset", "dtd",
            "--protocol", "fewshot", "--output", str(out)]
    for item in tiny_method_overrides("mmrl"):
        argv += ["--set", item]
    with RunDirLock.acquire(out, "mmrl train"):
        capsys.readouterr()
        assert main(argv) == 1
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        assert not (out / "adapter.safetensors").exists()
    assert main(argv) == 0 and (out / "adapter.safetensors").is_file() and not run_lock_path(out).exists()


def test_report_shows_a_locked_run_as_running(tmp_path):
    from mmrl.report.scan import Run, scan

    rd = sweep.run_dir_for(tmp_path, "fewshot", "mmrl", "EuroSAT", 16, 1)
    rd.mkdir(parents=True)
    (rd / "run.json").write_text(json.dumps({"status": "running", "method": "mmrl", "dataset": "EuroSAT"}))

    def state() -> Run:
        return next(r for r in scan(tmp_path).runs if r.path == rd)

    with RunDirLock.acquire(rd, "mmrl train"):
        assert state().state == "running" and f"pid {os.getpid()}" in state().detail
    assert state().state == "unfinished"
    write_lock_file(run_lock_path(rd), pid=dead_pid(), command="mmrl train")  # a dead writer's lock: not running
    assert state().state == "unfinished"
