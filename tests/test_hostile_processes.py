"""Processes: a killed `mmrl reproduce` takes its `mmrl train` children with it and a rerun resumes them;
a zombie lock holder counts as dead; one cell's exception never stops a worker; dataset names that cannot
name a run folder are refused before any work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import make_benchmark_folders, make_folder_dataset, write_lock_file
from mmrl import sweep
from mmrl.engine import lock
from test_sweep_reproduce import FAKE_RUNNER, FakeTrain, quiet

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process semantics (/proc, prctl)")


def _wait_for(cond, timeout: float, what: str) -> float:
    """Seconds until ``cond()`` holds (fails the test after ``timeout``)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def test_zombie_lock_holder_counts_as_dead(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # exits at once; not reaped until wait()
    try:
        _wait_for(lambda: lock._proc_stat(child.pid)[:1] == ["Z"], 30, "the child to become a zombie")
        path = tmp_path / "run" / ".lock"
        write_lock_file(path, pid=child.pid, proc_start=lock._proc_start(child.pid), command="mmrl train")
        assert not lock.pid_alive(child.pid, lock._proc_start(child.pid))
        assert lock.read_holder(path) is None
        got = lock.acquire_claim(path)
        assert got.claim is not None, got.holder         # taken over, not "in use by pid ..."
        lock.release_claim(got.claim)
    finally:
        child.wait()


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.multiprocess
def test_kill_9_of_reproduce_kills_its_children_and_a_rerun_resumes(tmp_path):
    script = tmp_path / "fake_mmrl.py"
    script.write_text(FAKE_RUNNER)
    calls = tmp_path / "calls.jsonl"
    make_benchmark_folders(tmp_path)
    env = dict(os.environ, FAKE_CALLS=str(calls), FAKE_SLEEP="120", MMRL_REPRODUCE_RUNNER=str(script))
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "mmrl", "reproduce", "base2novel", "--method", "mmrl", "--root", str(tmp_path),
            "--output", str(out), "--datasets", "Caltech101", "EuroSAT", "--seeds", "1", "--jobs", "2", "--no-report"]
    cells = sweep.build_grid("base2novel", "mmrl", out, datasets=["Caltech101", "EuroSAT"], seeds=[1])
    sweep_proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # both children training: their run.json written (what makes the rerun resume), now sleeping
        _wait_for(lambda: all((c.run_dir / "config.yaml").exists() for c in cells), 60, "both train children")
    finally:
        t_kill = time.monotonic()
        sweep_proc.kill()                                  # SIGKILL: no handler of the sweep runs
        sweep_proc.wait()
    children = [c["pid"] for c in _calls(calls)]
    _wait_for(lambda: not any(lock.pid_alive(pid) for pid in children), 10, "the children to die")
    print(f"children gone {time.monotonic() - t_kill:.3f} s after the kill -9 of their sweep")

    env["FAKE_SLEEP"] = "0"
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "summary: 2 run now, 0 already finished" in again.stdout, again.stdout
    resumed = _calls(calls)[2:]
    assert len(resumed) == 2 and all(c["args"][-1] == "--resume" for c in resumed)
    for c in cells:
        assert sweep.cell_state(c).kind == "finished"


def test_an_exception_in_one_cell_fails_only_that_cell(tmp_path):
    """A run folder the file system refuses (a 300-character name): that cell fails with the reason,
    the same worker goes on to the next cell."""
    good = sweep.build_grid("fewshot", "mmrl", tmp_path, datasets=["dtd"], shots=[1], seeds=[1, 2])
    bad = sweep.Cell("fewshot", "mmrl", "dataset:x", 1, 1, tmp_path / ("d" * 300) / "shots_1" / "seed_1",
                     table_name="d" * 300)
    train = FakeTrain()
    outcomes = sweep.run_cells([good[0], bad, good[1]], train, lambda c, j: 0, workers=[None], log=quiet)
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert "File name too long" in outcomes[1].detail and "\n" not in outcomes[1].detail
    assert "Traceback" not in outcomes[1].detail
    assert train.calls == [good[0].name, good[1].name]


def _named_dataset(path: Path, name: str) -> str:
    make_folder_dataset(path / "images", per_class=4)
    (path / "dataset.json").write_text(json.dumps({"name": name, "image_dir": "images"}))
    return f"dataset:{path}"


@pytest.mark.parametrize("name, why", [
    ("..", "'..' is not a folder name"),
    ("x" * 300, "would be 300 bytes long (at most 200)"),
    ("a/b", "it holds '/'"),
    ("a\0b", "it holds a NUL character"),
    ("EuroSAT", "would share the run folder 'EuroSAT' with the benchmark EuroSAT"),
])
def test_names_that_cannot_name_a_run_folder_are_refused_before_any_work(tmp_path, capsys, name, why):
    from mmrl.cli import main

    make_benchmark_folders(tmp_path / "root")
    spec = _named_dataset(tmp_path / "mine", name)
    out = tmp_path / "sweep"
    rc = main(["reproduce", "fewshot", "--method", "mmrl", "--root", str(tmp_path / "root"), "--output", str(out),
               "--datasets", spec, "eurosat", "--seeds", "1", "--shots", "1", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and why in err and "cannot name a run folder" in err and 'change "name" in its dataset.json' in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_two_datasets_that_become_one_folder(tmp_path):
    a = _named_dataset(tmp_path / "a", "my data")
    b = _named_dataset(tmp_path / "b", "my_data")
    with pytest.raises(ValueError, match="would share the run folder 'my_data' with --datasets"):
        sweep.build_grid("fewshot", "mmrl", tmp_path / "out", datasets=[a, b], shots=[1], seeds=[1])
    ok = _named_dataset(tmp_path / "c", "other")
    assert len(sweep.build_grid("fewshot", "mmrl", tmp_path / "out", datasets=[a, ok], shots=[1], seeds=[1])) == 2


def test_dry_run_checks_that_the_data_exist(tmp_path, capsys):
    from mmrl.cli import main

    root = tmp_path / "root"
    (root / "eurosat").mkdir(parents=True)                # EuroSAT is there, DTD is not
    base = ["reproduce", "fewshot", "--method", "mmrl", "--root", str(root), "--output", str(tmp_path / "out"),
            "--seeds", "1", "--shots", "1", "--dry-run"]
    assert main([*base, "--datasets", "eurosat", "dtd"]) == 2
    err = capsys.readouterr().err
    assert f"data not found: DescribableTextures: {root / 'dtd'}/ not found" in err and "mmrl data verify" in err
    assert "EuroSAT" not in err
    assert main([*base, "--datasets", "eurosat"]) == 0
    assert "1 runs" in capsys.readouterr().out


def test_child_gets_sigterm_not_orphaned_between_fork_and_prctl():
    """The parent-death signal is set in the child before it runs anything (Linux)."""
    from mmrl.jobs import die_with_parent

    preexec = die_with_parent()
    assert preexec is not None
    probe = subprocess.run([sys.executable, "-c", "import ctypes, sys; s = ctypes.c_int(); "
                            "ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)"],  # PR_GET_PDEATHSIG
                           preexec_fn=preexec, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(int(signal.SIGTERM))


def test_a_burst_of_sigterms_interrupts_once():
    """A dying multi-threaded sweep sends its children's parent-death SIGTERM once per thread: only
    the first interrupts, so the clean-up it starts (run marked interrupted, lock released) finishes.
    (In a subprocess: a second KeyboardInterrupt must not reach the test runner.)"""
    script = textwrap.dedent("""
        import os, signal, time
        from mmrl.commands.common import sigterm_as_interrupt
        before = signal.getsignal(signal.SIGTERM)
        with sigterm_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                print("not interrupted")
            except KeyboardInterrupt:
                os.kill(os.getpid(), signal.SIGTERM)   # the second of the burst, inside the clean-up
                time.sleep(0.05)
                print("cleaned up")
        print("handler restored" if signal.getsignal(signal.SIGTERM) == before else "handler lost")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.split()) == (0, ["cleaned", "up", "handler", "restored"]), r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_kill_9_of_a_real_sweep_marks_its_run_interrupted_and_the_rerun_resumes(tmp_path):
    from helpers import make_benchmark_dataset, tiny_method_overrides, write_tiny_clip

    root = tmp_path / "data"
    make_benchmark_dataset(root, "DescribableTextures", per_class=10)
    clip = write_tiny_clip(tmp_path / "clip.pt")
    sets = [s for s in tiny_method_overrides() if not s.startswith("optim.epochs")] + ["optim.epochs=400"]
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "mmrl", "reproduce", "fewshot", "--method", "mmrl", "--root", str(root),
            "--output", str(out), "--datasets", "dtd", "--shots", "2", "--seeds", "1", "--backbone", str(clip),
            "--no-report", *[x for s in sets for x in ("--set", s)]]
    run = sweep.build_grid("fewshot", "mmrl", out, datasets=["dtd"], shots=[2], seeds=[1])[0].run_dir
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (run / "checkpoint.safetensors").exists(), 120, "the first checkpoint")
        child = json.loads((run / ".lock").read_text())["pid"]   # the `mmrl train` writing the run
    finally:
        proc.kill()
        proc.wait()
    _wait_for(lambda: not lock.pid_alive(child), 30, "the train child to stop")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and "kept in checkpoint.safetensors" in info["stopped"]
    assert not (run / ".lock").exists()                       # released by the child itself
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "summary: 1 run now" in again.stdout, again.stdout + again.stderr
    assert "resuming from" in (run / "train.log").read_text()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
