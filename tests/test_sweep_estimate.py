"""The cost model of `mmrl reproduce --dry-run` and of the sweep log's time left
(mmrl.sweep.estimate), on grid cells with fake finished runs; the calibration on the toy world."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_benchmark_dataset, write_tiny_clip
from mmrl.sweep import runner
from mmrl.sweep.estimate import Estimator, plan_cost_text, run_flops
from mmrl.sweep.grid import Cell


def _cell(base: Path, dataset: str, seed: int, point=()) -> Cell:
    where = base / "_".join(f"{k}={v}" for k, v in point) if point else base
    return Cell("base2novel", "mmrl", dataset, 16, seed, where / dataset / f"seed_{seed}", point=point)


def _finish(cell: Cell, process_s: float, *, steps=10, step_flops=1e9, images=100, image_flops=1e7) -> None:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    cost = {"wall_s": {"total": process_s - 3, "process": process_s}, "steps": steps, "images_evaluated": images,
            "flops": {"train_step": step_flops, "per_eval_image": image_flops}}
    (cell.run_dir / "run.json").write_text(json.dumps({"status": "finished", "cost": cost}))


def test_finished_runs_of_the_same_configuration_estimate_the_others(tmp_path):
    grid = [_cell(tmp_path, d, s) for d in ("EuroSAT", "DTD") for s in (1, 2, 3)]
    _finish(grid[0], 20.0)
    _finish(grid[1], 30.0)  # EuroSAT seeds 1, 2 finished: seed 3 = their mean
    _finish(grid[3], 100.0, steps=50)  # DTD seed 1
    est = Estimator(grid)
    e = est.cell(grid[2])
    assert (e.seconds, e.flops, e.how) == (25.0, 10 * 1e9 + 100 * 1e7, "finished runs")
    assert est.cell(grid[4]).seconds == 100.0 and est.cell(grid[4]).flops == 50 * 1e9 + 100 * 1e7
    secs, flops, how = est.left(grid, workers=2)  # three cells left: 25 + 100 + 100 over 2 workers
    assert secs == pytest.approx(112.5) and flops == pytest.approx(1.1e10 + 2 * 5.1e10) and how == ["finished runs"]


def test_another_configuration_falls_back_to_the_mean_run(tmp_path):
    grid = [_cell(tmp_path, "EuroSAT", 1, (("method.n_rep_tokens", 1),)),
            _cell(tmp_path, "EuroSAT", 1, (("method.n_rep_tokens", 4),))]
    _finish(grid[0], 40.0)
    e = Estimator(grid).cell(grid[1])  # another point: not the same configuration
    assert (e.seconds, e.flops, e.how) == (40.0, None, "mean run")
    assert Estimator([grid[1]]).cell(grid[1]).seconds is None  # nothing finished: unknown


def test_run_flops_without_an_evaluation_count():
    assert run_flops({"steps": 3, "flops": {"train_step": 5.0, "per_eval_image": 2.0}}) == 15.0
    assert run_flops({"flops": {}}) is None


def test_the_log_time_left_uses_the_model(tmp_path):
    grid = [_cell(tmp_path, "EuroSAT", s) for s in (1, 2, 3)]
    _finish(grid[0], 60.0)
    # 1 run took 500 s of sweep time, but the finished run of the configuration says 60 s per run
    assert runner._eta(500.0, 1, 2, grid, grid[1:], workers=1) == "; 2 left, about 2 min"
    assert runner._eta(500.0, 1, 2, grid, grid[1:], workers=2) == "; 2 left, about 60 s"
    assert runner._eta(500.0, 1, 2) == "; 2 left, about 17 min"  # no cells: time per run so far


def test_dry_run_calibration_on_the_toy_world(tmp_path):
    clip = write_tiny_clip(tmp_path / "clip.pt")
    make_benchmark_dataset(tmp_path / "data", "DescribableTextures")
    sets = ("method.first_rep_block=2", "method.n_rep_tokens=2", "method.rep_dim=16", "optim.epochs=2",
            "optim.batch_size=4", "data.num_workers=0")
    cells = [Cell("base2novel", "mmrl", "DescribableTextures", 2, s, tmp_path / f"seed_{s}", root=tmp_path / "data",
                  backbone=str(clip), sets=sets) for s in (1, 2)]
    est = Estimator(cells, calibrate=True)
    e = est.cell(cells[0])
    assert e.how == "calibration" and e.seconds > 0 and e.flops > 0
    assert est.cell(cells[1]) is e  # one calibration per configuration
    text = plan_cost_text(cells, cells, workers=1)
    assert text.startswith("  cost of the 2 runs left: ") and "FLOP" in text and "calibration" in text


def test_a_calibration_without_data_says_why(tmp_path):
    cells = [Cell("fewshot", "mmrl", "DescribableTextures", 2, 1, tmp_path / "run", root=tmp_path / "nodata",
                  backbone="toy-clip")]
    text = plan_cost_text(cells, cells, workers=1)
    assert "time unknown" in text and "DescribableTextures" in text and "not found" in text
