"""The learning-quality test: the built-in demo (synthetic world, packaged tiny CLIP) must show
what MMRL is about, with fixed seeds. Thresholds and the measured values are in docs/toyworld.md.

This is the slowest test of the suite (the whole demo: 5 tasks x (zero-shot, MMRL, MMRL++) in two
worker processes, then one task again in this process; under a minute on 2 quiet CPU cores, see
docs/performance.md); it runs in CI on purpose. Nothing here compares with the digits printed in
README.md or docs/toyworld.md: those can differ in the last digit on another CPU.
"""
from __future__ import annotations

import json

import pytest
import torch

from mmrl.cli import main
from mmrl.toyworld.demo import DemoConfig, format_table, run_demo

pytestmark = pytest.mark.slow  # the whole demo: the suite's longest test


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as `mmrl demo` runs it, in two worker processes (whatever this machine's core count)."""
    out = tmp_path_factory.mktemp("demo")
    return run_demo(DemoConfig(out=out, seed=1, jobs=2), progress=False)


def _avg(demo, method):
    return demo["average"][method]


def test_zero_shot_novel_at_least_twice_chance(demo):
    rows = [r for r in demo["rows"] if r["method"] == "CLIP"]
    chance = sum(r["chance_novel"] for r in rows) / len(rows)
    assert _avg(demo, "CLIP")["novel"] >= 2 * chance, format_table(demo)


@pytest.mark.parametrize("method", ["MMRL", "MMRL++"])
def test_adaptation_lifts_base_accuracy_by_10_points(demo, method):
    assert _avg(demo, method)["base"] >= _avg(demo, "CLIP")["base"] + 10, format_table(demo)


@pytest.mark.parametrize("method", ["MMRL", "MMRL++"])
def test_adaptation_improves_harmonic_mean(demo, method):
    assert _avg(demo, method)["hm"] > _avg(demo, "CLIP")["hm"], format_table(demo)


def test_decoupled_inference_class_logits_win_on_novel(demo):
    """Class-only logits on novel classes beat the fused ones, averaged over both methods."""
    novel = [_avg(demo, m)["novel"] for m in ("MMRL", "MMRL++")]
    fused = [_avg(demo, m)["novel_fused"] for m in ("MMRL", "MMRL++")]
    assert sum(novel) > sum(fused), format_table(demo)


def test_worker_processes_compute_what_one_process_computes(demo, tmp_path):
    """One task's rows from a fresh folder, everything in this process (jobs=1), equal the rows the
    worker processes computed, bit for bit: a run depends on its config alone, not on which
    process runs it or what ran there before. The process-wide thread count is given back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3 if threads != 3 else 2)  # a caller's own setting, not the demo's
    mine = torch.get_num_threads()
    try:
        alone = run_demo(DemoConfig(out=tmp_path, seed=1, tasks=("toy_striped",), jobs=1), progress=False)
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(threads)
    assert alone["rows"] == [r for r in demo["rows"] if r["dataset"] == "toy_striped"]


def test_demo_cli_json_reuses_finished_runs(demo, capsys, caplog):
    """`mmrl demo --json` on the same folder prints the same table (finished runs are not retrained)
    and says that it reuses them."""
    import logging

    with caplog.at_level(logging.INFO, logger="mmrl"):
        assert main(["demo", "--out", demo["out"], "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert "10 of 10 training runs are already finished" in caplog.text and "reused" in caplog.text
    key = lambda d: [(r["dataset"], r["method"]) for r in d["rows"]]
    vals = lambda d: [r[k] for r in d["rows"] for k in ("base", "novel", "hm")]
    assert key(again) == key(demo)
    assert vals(again) == pytest.approx(vals(demo), abs=1e-9)


@pytest.mark.parametrize("flag", ["--threads", "--jobs"])
def test_demo_cli_refuses_a_count_below_one(flag, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), flag, "0"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 0" in err and ">= 1" in err and "Traceback" not in err
    assert not (tmp_path / "tasks").exists()  # refused before any work


def test_ctrl_c_stops_the_workers_and_says_how_to_continue(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the demo and its worker processes
    stop at once, no traceback, exit 130, one line with the command that continues."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "mmrl", "demo", "--out", str(tmp_path), "--tasks", "toy_striped", "--methods",
           "mmrl", "--jobs", "2", "--set", "optim.epochs=40"]  # long enough to be caught training
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = tmp_path / "runs" / "mmrl" / "toy_striped" / "seed_1" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.stat().st_size > 0):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--tasks toy_striped" in err and "Traceback" not in err
    for _ in range(100):  # every worker ends with the demo
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("worker processes outlived the interrupted demo")
