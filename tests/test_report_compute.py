"""The report's Compute section, compute.csv and the accuracy-against-cost figure of an ablation
(mmrl.report.compute), on fake run folders with cost blocks."""
from __future__ import annotations

import csv
import json

import pytest

from fake_runs import write_run
from mmrl.report import write_report
from mmrl.report.compute import CSV_FILE, FIGURE_PREFIX
from mmrl.vocab import harmonic_mean


def cost(train_s, device_hours, rss, *, flops=2e9, ips=10.0, trainable=6432, cuda=None):
    c = {"device": {"type": "cpu", "name": "Test CPU", "threads": 2}, "precision": "fp32", "world_size": 1,
         "wall_s": {"train": train_s, "total": train_s + 5, "process": train_s + 8, "eval": {}},
         "steps": 40, "images_seen": 160, "images_evaluated": 80, "images_per_s": ips, "median_step_s": 0.1,
         "peak_rss_mb": rss, "cuda_memory_mb": cuda or {}, "parameters": {"trainable": trainable, "frozen": 100},
         "flops": {"train_step": flops, "per_eval_image": 1e8, "per_eval_batch": 0, "how": "x"},
         "device_hours": device_hours}
    return c


@pytest.fixture
def sweep(tmp_path):
    out = tmp_path / "sweep"
    base = out / "base2novel" / "mmrl" / "EuroSAT" / "shots_16"
    write_run(base / "seed_1", "base2novel", "mmrl", "EuroSAT", 16, 1, {("EuroSAT", "base"): 90.0, ("EuroSAT", "new"): 70.0},
              cost=cost(100.0, 0.03, 900.0))
    write_run(base / "seed_2", "base2novel", "mmrl", "EuroSAT", 16, 2, {("EuroSAT", "base"): 92.0, ("EuroSAT", "new"): 72.0},
              cost=cost(140.0, 0.05, 1100.0, ips=14.0,
                        cuda={"cuda:0": {"max_allocated": 3000.0, "max_reserved": 4096.0}}))
    write_run(base / "seed_3", "base2novel", "mmrl", "EuroSAT", 16, 3, {("EuroSAT", "base"): 91.0, ("EuroSAT", "new"): 71.0})
    for n, (b, nv, hours, flops) in {1: (80.0, 60.0, 0.01, 1e9), 4: (90.0, 70.0, 0.02, 3e9)}.items():
        write_run(out / "ablation" / f"method.n_rep_tokens={n}" / "base2novel" / "mmrl" / "EuroSAT" / "shots_16" / "seed_1",
                  "base2novel", "mmrl", "EuroSAT", 16, 1, {("EuroSAT", "base"): b, ("EuroSAT", "new"): nv},
                  ablation={"method.n_rep_tokens": n}, cost=cost(10.0 * n, hours, 500.0, flops=flops))
    return out


def _section(md: str) -> str:
    start = md.index("## Compute")
    end = md.find("\n## ", start + 5)
    return md[start:end if end > 0 else None]


def test_compute_section_per_protocol_method_dataset(sweep):
    report = write_report(sweep)
    md = (report / "report.md").read_text()
    sec = _section(md)
    table = [[c.strip() for c in line.strip("|").split("|")] for line in sec.splitlines() if line.startswith("|")]
    assert table[0][:4] == ["Protocol", "Method", "Dataset", "Runs"]
    cells = next(r for r in table if r[2] == "EuroSAT")
    # 2 runs with a cost block (the third has none): mean train time, summed device-hours, the largest
    # memory (a CUDA reservation beats an RSS), mean images/s, parameters, GFLOPs per step
    assert cells[2:] == ["EuroSAT", "2", "120.0 s", "0.0800", "4,096 (cuda)", "12.0", "6,432", "2.00"]
    assert "1 finished run(s) without a cost block" in sec
    data = json.loads((report / "report.json").read_text())["compute"]
    assert data["without_cost"] == 1 and len(data["runs"]) == 4


def test_ablation_points_hm_against_cost_and_the_figure(sweep):
    report = write_report(sweep)
    data = json.loads((report / "report.json").read_text())["compute"]
    (study,) = data["ablations"]
    assert study["keys"] == ["method.n_rep_tokens"] and study["metric_label"] == "HM (%)"
    got = [(p["values"]["method.n_rep_tokens"], p["metric"], p["device_hours"], p["gflops_step"]) for p in study["points"]]
    assert got == [(1, pytest.approx(harmonic_mean(80.0, 60.0)), 0.01, 1.0),
                   (4, pytest.approx(harmonic_mean(90.0, 70.0)), 0.02, 3.0)]
    figure = report / study["figure"]
    assert figure.name.startswith(FIGURE_PREFIX) and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sec = _section((report / "report.md").read_text())
    assert f"]({study['figure']})" in sec and "n_rep_tokens=4" in sec
    # a later report without the ablation removes its figure
    import shutil
    shutil.rmtree(sweep / "ablation")
    write_report(sweep)
    assert not figure.exists()


def test_compute_csv_one_row_per_run_with_a_cost_block(sweep):
    report = write_report(sweep)
    with open(report / CSV_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    plain = sorted((r for r in rows if not r["ablation"]), key=lambda r: r["seed"])
    assert [float(r["train_s"]) for r in plain] == [100.0, 140.0]
    assert [float(r["peak_memory_mb"]) for r in plain] == [900.0, 4096.0]
    assert [r["memory_kind"] for r in plain] == ["rss", "cuda"]
    assert float(plain[0]["metric"]) == pytest.approx(harmonic_mean(90.0, 70.0))
    assert float(plain[0]["gflops_step"]) == 2.0 and float(plain[0]["gflops_eval_image"]) == 0.1
    abl = [r for r in rows if r["ablation"]]
    assert sorted(json.loads(r["ablation"])["method.n_rep_tokens"] for r in abl) == [1, 4]


def test_no_cost_blocks_no_section_no_csv(tmp_path):
    out = tmp_path / "old"
    write_run(out / "a", "fewshot", "mmrl", "EuroSAT", 16, 1, {("EuroSAT", "all"): 80.0})
    report = write_report(out)
    assert "## Compute" not in (report / "report.md").read_text()
    assert not (report / CSV_FILE).exists()
