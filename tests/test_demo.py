"""The learning-quality test: the built-in demo (synthetic world, packaged tiny CLIP) must show
what MMRL is about, with fixed seeds. Thresholds and the measured values are in docs/toyworld.md.

This is the slowest test of the suite (the whole demo: 4 tasks x (zero-shot, MMRL, MMRL++),
about 2-4 minutes on 2 CPU cores); it runs in CI on purpose.
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
    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    result = run_demo(DemoConfig(out=out, seed=1, threads=2), progress=False)
    assert torch.get_num_threads() == threads  # the process-wide setting is given back
    return result


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


def test_demo_cli_json_reuses_finished_runs(demo, capsys):
    """`mmrl demo --json` on the same folder prints the same table (finished runs are not retrained)."""
    assert main(["demo", "--out", demo["out"], "--json", "--threads", "2"]) == 0
    again = json.loads(capsys.readouterr().out)
    key = lambda d: [(r["dataset"], r["method"]) for r in d["rows"]]
    vals = lambda d: [r[k] for r in d["rows"] for k in ("base", "novel", "hm")]
    assert key(again) == key(demo)
    assert vals(again) == pytest.approx(vals(demo), abs=1e-9)
