"""benchmarks/gpu_check.py, as far as a machine without a GPU can check it: the no-CUDA exit,
argument checks, the budget arithmetic, the result file's schema, and every section but the
speed benchmark run end to end at toy sizes on the CPU (``--smoke``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r.json"
    assert gpu_check.main(["--json", str(out)]) == 0
    assert "no CUDA device here" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["cuda"] is False and result["skipped"] == "no CUDA" and result["sections"] == {}
    assert gpu_check.check_schema(result) == []


def test_cpu_without_smoke_is_refused(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--json", str(tmp_path / "r.json")]) == 2


@pytest.mark.parametrize("argv", [["--budget-s", "0"], ["--steps", "0"], ["--sections", "bogus"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2


def test_plan_gives_the_speed_benchmark_what_the_other_sections_leave():
    per_class = len(gpu_check.METHODS) * 2 * gpu_check.SPEED_CONFIG_S
    fixed = sum(gpu_check.ESTIMATE_S.values())
    for n in range(len(gpu_check.SPEED_CLASSES) + 1):
        budget = fixed + gpu_check.SAFETY_S + n * per_class + 1
        p = gpu_check.plan(budget)
        assert p["fixed_s"] == fixed and p["speed_s"] == n * per_class
        assert p["speed_classes"] == sorted(gpu_check.SPEED_CLASSES[:n])
        assert p["fixed_s"] + p["speed_s"] + gpu_check.SAFETY_S <= budget
        assert ("speed" in p["skipped"]) == (n == 0)
    assert gpu_check.plan(1e6)["speed_classes"] == sorted(gpu_check.SPEED_CLASSES)  # never more than there are
    # without the fixed sections, all the budget goes to speed; --smoke never runs it
    assert gpu_check.plan(gpu_check.SAFETY_S + per_class, ("speed",))["speed_classes"] == [gpu_check.SPEED_CLASSES[0]]
    assert gpu_check.plan(1e6, smoke=True)["speed_classes"] == [] and "speed" in gpu_check.plan(1e6, smoke=True)["skipped"]


def test_schema_check_finds_broken_results():
    good = {"schema": 1, "ok": False, "cuda": True, "machine": {}, "plan": {}, "seconds": 1.0,
            "sections": {"cli": {"status": "failed", "checks": [{"name": "x", "ok": False}]}}}
    assert gpu_check.check_schema(good) == []
    assert gpu_check.check_schema({**good, "ok": True}) == ["ok: disagrees with the sections' statuses"]
    assert any("unknown section" in p for p in gpu_check.check_schema({**good, "sections": {"nope": {}}}))
    assert any(p.startswith("cuda") for p in gpu_check.check_schema({**good, "cuda": "yes"}))
    bad_check = {**good, "sections": {"cli": {"status": "failed", "checks": [{"ok": False}]}}}
    assert any("checks[0]" in p for p in gpu_check.check_schema(bad_check))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_smoke_run_on_the_cpu(tmp_path, capsys):
    """Every section except the speed benchmark, at toy sizes on the CPU: the script's own code
    (training in three precisions, the fast/reference judgement, the CLI, torchrun) works."""
    out = tmp_path / "r.json"
    rc = gpu_check.main(["--smoke", "--device", "cpu", "--steps", "2", "--json", str(out), "--work", str(tmp_path / "w")])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert gpu_check.check_schema(result) == []
    assert rc == 0 and result["ok"], printed[-3000:]
    sections = result["sections"]
    assert [s for s in sections if sections[s]["status"] == "ok"] == ["precision", "fastref", "cli", "ddp"]
    assert sections["speed"]["status"] == "skipped"
    rows = sections["precision"]["results"]["table"]
    assert {(r["method"], r["precision"]) for r in rows} == {(m, p) for m in gpu_check.METHODS
                                                              for p in gpu_check.PRECISIONS}
    assert all(len(r["losses"]) == 2 for r in rows)
    assert sections["ddp"]["results"]["gloo-2"]["world_size"] == 2
    assert "[precision] ok" in printed and "[ddp] ok" in printed  # it prints as it goes
