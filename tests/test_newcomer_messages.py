"""The newcomer's messages: the resume hint names the real run folder and appears only where resuming
helps; Ctrl-C of a parallel sweep shows its runs as interrupted, not FAILED; `mmrl data verify` of an
absent --root fails."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import make_benchmark_folders
from mmrl.cli import main
from mmrl.config import resolve_config
from mmrl.engine import rundir
from test_sweep_reproduce import FAKE_RUNNER


def _run_without_adapter(path: Path, **info) -> Path:
    rundir.write_config(path, resolve_config("mmrl", "fewshot", "DescribableTextures"))
    if info:
        rundir.write_run_info(path, {"method": "mmrl", "dataset": "DescribableTextures", **info})
    return path


def _no_adapter_error(run: Path) -> str:
    with pytest.raises(FileNotFoundError) as e:
        rundir.load_run(run, device="cpu")
    return str(e.value)


def test_resume_hint_names_the_real_folder(tmp_path):
    run = _run_without_adapter(tmp_path / "my run", status="interrupted")
    msg = _no_adapter_error(run)
    assert "RUN_DIR" not in msg
    assert f"resume it with `mmrl train --resume {shlex.quote(str(run.absolute()))}`" in msg
    assert "has not finished (run status interrupted)" in msg


def test_a_run_that_failed_on_its_data_is_not_simply_resumed(tmp_path):
    error = f"MissingDataError: DescribableTextures: dataset folder {tmp_path}/dtd/ not found"
    run = _run_without_adapter(tmp_path / "run", status="failed", error=error)
    msg = _no_adapter_error(run)
    assert f"its training failed ({error})" in msg
    assert "resuming repeats that until its cause is fixed: fix it first, then run" in msg


def test_eval_of_an_unfinished_run_one_line(tmp_path, capsys):
    run = _run_without_adapter(tmp_path / "run", status="running")
    rc = main(["eval", str(run), "--dataset", "dtd", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("mmrl: error: ")]
    assert len(lines) == 1 and f"`mmrl train --resume {run.absolute()}`" in lines[0], err


# A stand-in `mmrl train` that, like the real one, exits 130 on Ctrl-C (and on SIGTERM).
INTERRUPTIBLE = ("import signal, sys\nsignal.signal(signal.SIGTERM, signal.default_int_handler)\ntry:\n"
                 + textwrap.indent(FAKE_RUNNER, "    ") + "\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")


@pytest.mark.multiprocess
def test_ctrl_c_of_a_parallel_sweep_shows_interrupted_runs(tmp_path):
    script = tmp_path / "fake_mmrl.py"
    script.write_text(INTERRUPTIBLE)
    calls = tmp_path / "calls.jsonl"
    make_benchmark_folders(tmp_path)
    env = dict(os.environ, FAKE_CALLS=str(calls), FAKE_SLEEP="120", MMRL_REPRODUCE_RUNNER=str(script),
               PYTHONUNBUFFERED="1")
    # its own session, so that the SIGINT below reaches the sweep and its children as a terminal's Ctrl-C does
    proc = subprocess.Popen([sys.executable, "-m", "mmrl", "reproduce", "fewshot", "--method", "mmrl", "--root",
                             str(tmp_path), "--output", str(tmp_path / "out"), "--datasets", "dtd", "eurosat",
                             "ucf101", "--shots", "1", "--seeds", "1", "--jobs", "2", "--no-report"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    t0 = time.monotonic()
    while not (calls.exists() and len(calls.read_text().splitlines()) == 2):
        assert time.monotonic() - t0 < 60 and proc.poll() is None, "the two runs did not start"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "FAILED" not in out, out
    # each child got the Ctrl-C itself (exit code 130); under load one may only get the sweep's SIGTERM
    assert out.count(": interrupted: train was interrupted (SIG") == 2, out
    assert "; it resumes when the sweep runs again" in out
    assert "summary (interrupted): 0 run now, 0 already finished, 0 in progress elsewhere, 0 failed, " \
           "2 interrupted, 1 not started" in out, out
    assert "resume when you run the same command again" in out


def test_data_verify_of_an_absent_root_fails(tmp_path, capsys):
    absent = tmp_path / "no-such-folder"
    assert main(["data", "verify", "--root", str(absent)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --root {absent}: no such folder (expected the folder holding the datasets in the "
                   "CoOp layout)"]
    (tmp_path / "a-file").write_text("x")
    assert main(["data", "verify", "--root", str(tmp_path / "a-file"), "--dataset", "dtd"]) == 2
    assert "is not a folder" in capsys.readouterr().err
