"""What a sweep will cost before it runs: FLOPs and wall time per cell, for `mmrl reproduce --dry-run`
and for the time left in the sweep's log (one model for both).

A cell's estimate comes, in this order of preference, from

1. **finished runs of the same configuration** in the output (the same grid cell but for the seed):
   the mean of their process wall time (run.json ``cost.wall_s.process``: start-up, backbone load,
   set-up, training, evaluation) and of their FLOPs (steps x FLOPs per step + images evaluated x
   FLOPs per image);
2. **a short calibration on this device** (``--dry-run`` only, in a subprocess, so that planning
   itself never imports torch): the configuration's model is built on its backbone and data,
   training steps are made on random images of the run's batch size (the first counted by
   FlopCounterMode, up to five more timed: their median), and the run is estimated as that fresh
   process's start-up +
   the backbone's load time + steps x the step time + the test images x the time per image of a timed
   evaluation batch +
   what a process spends outside its own clock (its spawn and exit, measured on the calibration one);
3. otherwise (the sweep's log, no run of the configuration finished yet): the mean wall time of
   the finished runs of the sweep, whatever their configuration.

The sweep's time is the sum over the cells left, divided by the number of workers.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from mmrl.sweep.grid import Cell
from mmrl.vocab import RUN_FILE


@dataclass
class CellEstimate:
    seconds: float | None
    flops: float | None
    how: str            # "finished runs", "calibration", "mean run"


def config_key(cell: Cell) -> tuple:
    """What makes two cells the same configuration: everything but the seed."""
    return (cell.protocol, cell.method, cell.dataset, cell.shots, cell.point, cell.sets, cell.backbone,
            str(cell.root))


def _finished_cost(cell: Cell) -> dict | None:
    try:
        with open(cell.run_dir / RUN_FILE, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    cost = info.get("cost") if isinstance(info, dict) and info.get("status") == "finished" else None
    return cost if isinstance(cost, dict) else None


def run_seconds(cost: dict) -> float | None:
    wall = cost.get("wall_s") or {}
    s = wall.get("process") if isinstance(wall.get("process"), (int, float)) else wall.get("total")
    return float(s) if isinstance(s, (int, float)) else None


def run_flops(cost: dict) -> float | None:
    """Training and evaluation FLOPs of a finished run."""
    flops = cost.get("flops") or {}
    step, image = flops.get("train_step"), flops.get("per_eval_image")
    if not isinstance(step, (int, float)) or not isinstance(cost.get("steps"), (int, float)):
        return None
    total = float(step) * cost["steps"]
    if isinstance(image, (int, float)) and isinstance(cost.get("images_evaluated"), (int, float)):
        total += float(image) * cost["images_evaluated"]
    return total


def is_finished(cell: Cell) -> bool:
    return _finished_cost(cell) is not None


class Estimator:
    """Estimates for the cells of one grid (see the module docstring)."""

    def __init__(self, grid: Sequence[Cell], calibrate: bool = False):
        self.calibrate = calibrate
        self.done: dict[tuple, list[dict]] = {}
        for c in grid:
            cost = _finished_cost(c)
            if cost is not None:
                self.done.setdefault(config_key(c), []).append(cost)
        everything = [run_seconds(c) for cs in self.done.values() for c in cs]
        everything = [s for s in everything if s is not None]
        self.mean_run = statistics.fmean(everything) if everything else None
        self._calibrated: dict[tuple, CellEstimate] = {}
        self.calibration_error: str | None = None

    def cell(self, cell: Cell) -> CellEstimate:
        twins = self.done.get(config_key(cell))
        if twins:
            secs = [s for s in map(run_seconds, twins) if s is not None]
            flops = [f for f in map(run_flops, twins) if f is not None]
            return CellEstimate(statistics.fmean(secs) if secs else None,
                                statistics.fmean(flops) if flops else None, "finished runs")
        if self.calibrate:
            key = config_key(cell)
            if key not in self._calibrated:
                self.calibrate_cells([cell])
            return self._calibrated[key]
        return CellEstimate(self.mean_run, None, "mean run")

    def calibrate_cells(self, cells: Sequence[Cell]) -> None:
        """Calibrate every configuration of ``cells`` without a finished run, in one subprocess."""
        todo = {config_key(c): c for c in cells if config_key(c) not in self.done and config_key(c) not in self._calibrated}
        if not todo:
            return
        spec = [_cell_spec(c) for c in todo.values()]
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mmrl.sweep.estimate"], input=json.dumps(spec),
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        try:
            reply = json.loads(proc.stdout.strip().splitlines()[-1])
            answers = reply["cells"]
            # what a run's process does not see of itself: its start by the parent and its exit
            # (the subprocess's wall time here minus its own age when it answered)
            outside = max(0.0, wall - reply["process_s"]) if reply.get("process_s") is not None else 0.0
        except (ValueError, IndexError, KeyError, TypeError):
            lines = proc.stderr.strip().splitlines()
            answers = [{"error": lines[-1] if lines else f"exit status {proc.returncode}"}] * len(todo)
            outside = 0.0
        for key, a in zip(todo, answers):
            if "error" in a:
                self.calibration_error = self.calibration_error or a["error"]
                self._calibrated[key] = CellEstimate(None, None, "calibration")
            else:
                self._calibrated[key] = CellEstimate(a["seconds"] + outside, a["flops"], "calibration")

    def left(self, cells: Sequence[Cell], workers: int = 1) -> tuple[float | None, float | None, list[str]]:
        """(seconds, FLOPs, how) of the cells not finished, the seconds spread over ``workers``;
        None when some cell cannot be estimated."""
        ests = [self.cell(c) for c in cells if not is_finished(c)]
        secs = None if any(e.seconds is None for e in ests) else sum(e.seconds for e in ests) / max(1, workers)
        flops = None if any(e.flops is None for e in ests) else sum(e.flops for e in ests)
        return secs, flops, sorted({e.how for e in ests})


def _cell_spec(c: Cell) -> dict:
    d = asdict(c)
    d["run_dir"], d["root"] = str(c.run_dir), None if c.root is None else str(c.root)
    return d


# ---------------------------------------------------------------------- calibration (the subprocess)
class _Calibration:
    """One calibration process: the backbones it loaded, its own start-up time."""

    def __init__(self):
        from mmrl.engine.cost import process_seconds

        self.startup = process_seconds() or 0.0  # a fresh interpreter with torch and mmrl: as a run's
        self._loaded: dict[str, tuple[object, float]] = {}

    def cell(self, cell: Cell) -> CellEstimate:
        import torch

        from mmrl import data
        from mmrl.config import resolve_config
        from mmrl.engine.cost import count_flops
        from mmrl.engine.runtime import autocast, load_backbone_checked, resolve_device, resolve_precision
        from mmrl.models import build_method
        from mmrl.sweep.ablation import point_overrides

        flags = {"backbone": cell.backbone, "data.shots": cell.shots, "seed": cell.seed,
                 "data.root": None if cell.root is None else str(cell.root)}
        cfg = resolve_config(cell.method, cell.protocol, cell.dataset,
                             overrides=[*cell.sets, *(point_overrides(cell.point) if cell.point else [])], flags=flags)
        device = resolve_device(cfg.device)
        precision = resolve_precision(cfg.precision, device)
        splits = data.prepare_splits(cfg.data.dataset, cfg.data.root, shots=cfg.data.shots, seed=cfg.data_seed,
                                     subsample=cfg.data.subsample, split_file=cfg.data.split_file,
                                     cache_dir=cfg.data.cache_dir, template=cfg.data.template)
        if cfg.backbone not in self._loaded:
            t = time.perf_counter()
            self._loaded[cfg.backbone] = (load_backbone_checked(cfg.backbone, device=device), time.perf_counter() - t)
        backbone, load_s = self._loaded[cfg.backbone]
        torch.manual_seed(0)
        model = build_method(backbone, cfg.method)
        model.set_classes(splits.classnames, splits.template)
        model.train()
        model.clip.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6)
        n_train = len(splits.train)
        bs = min(cfg.optim.batch_size, n_train)
        size = backbone.image_size
        images = torch.randn(bs, 3, size, size, device=device)
        labels = torch.arange(bs, device=device) % len(splits.classnames)

        def step():
            with autocast(device, precision):
                out = model.loss(images, labels)
            opt.zero_grad(set_to_none=True)
            out.total.float().backward()
            opt.step()
            return float(out.total.detach().cpu())

        _, step_flops = count_flops(step)
        # the median of a few timed steps (at most ~10 s of them): one step alone, just after the
        # counted one, is often slow (cold caches, a busy core)
        times: list[float] = []
        while len(times) < 5 and sum(times) < 10.0:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
        steps = cfg.optim.epochs * math.ceil(n_train / cfg.optim.batch_size)
        model.eval()
        # base-to-novel evaluates the base and the novel test images: about twice the base half
        n_eval = len(splits.test) * (2 if cfg.protocol == "base2novel" else 1)
        batch = torch.randn(max(1, min(cfg.eval.batch_size, n_eval, 64)), 3, size, size, device=device)
        from mmrl.engine.precision import eval_precision, tower_width

        eval_prec = eval_precision(cfg.eval.precision, device, tower_width(backbone))[0]  # `auto` resolved
        with torch.no_grad(), autocast(device, eval_prec):
            text = model.encode_text()
            one = count_flops(lambda: model.logits(images[:1], text))[1]
            two = count_flops(lambda: model.logits(images[:1].expand(2, -1, -1, -1), text))[1]
            model.logits(batch, text)  # warm-up
            t = time.perf_counter()
            model.logits(batch, text)
            per_image_s = (time.perf_counter() - t) / batch.shape[0]  # batched, forward only: its own rate
        eval_flops = n_eval * (two - one)
        eval_s = n_eval * per_image_s
        seconds = self.startup + load_s + steps * step_s + eval_s
        if os.environ.get("MMRL_ESTIMATE_DEBUG"):  # the parts, for docs/performance.md's error analysis
            print(json.dumps({"startup": self.startup, "load": load_s, "steps": steps, "step_s": step_s,
                              "eval_s": eval_s}), file=sys.stderr)
        return CellEstimate(seconds, steps * step_flops + eval_flops, "calibration")


def duration_text(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def flops_text(f: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.1f} {unit}"
    return f"{f:.3g} FLOP"


def plan_cost_text(grid: Sequence[Cell], cells: Sequence[Cell], workers: int) -> str:
    """The dry run's cost line: the FLOPs of the runs left and their estimated wall time."""
    est = Estimator(grid, calibrate=True)
    left = [c for c in cells if not is_finished(c)]
    if not left:
        return "  cost: nothing left to run"
    est.calibrate_cells(left)
    secs, flops, how = est.left(cells, workers)
    left = len(left)
    parts = [f"  cost of the {left} run{'s' * (left != 1)} left: " + (flops_text(flops) if flops is not None else "FLOPs unknown")]
    exact = f" ({secs:.0f} s)" if secs is not None and secs >= 90 else ""
    parts.append(f"about {duration_text(secs)}{exact} with {workers} worker{'s' * (workers != 1)}" if secs is not None
                 else "time unknown")
    why = f": {est.calibration_error}" if est.calibration_error else ""
    return ", ".join(parts) + f" (from {' and '.join(how)}{why}; docs/performance.md)"


def _calibrate_main() -> int:
    """``python -m mmrl.sweep.estimate``: cells (JSON list on stdin) -> one JSON line on stdout:
    ``{"cells": [{"seconds", "flops"} or {"error"} per cell], "process_s": this process's age}``."""
    import logging

    from mmrl.errors import error_line

    logging.getLogger("mmrl").setLevel(logging.ERROR)
    cal = _Calibration()
    out = []
    for d in json.loads(sys.stdin.read()):
        d["run_dir"] = Path(d["run_dir"])
        d["root"] = None if d["root"] is None else Path(d["root"])
        for k in ("targets", "logits"):
            d[k] = tuple(d[k])
        d["sets"] = tuple(tuple(x) if isinstance(x, list) else x for x in d["sets"])
        d["point"] = tuple(tuple(x) for x in d["point"])
        try:
            e = cal.cell(Cell(**d))
            out.append({"seconds": e.seconds, "flops": e.flops})
        except Exception as e:  # a cell that cannot be calibrated (no data, ...): its line says why
            line = error_line(e)
            out.append({"error": line if d["dataset"] in line else f"{d['dataset']}: {line}"})
    from mmrl.engine.cost import process_seconds

    print(json.dumps({"cells": out, "process_s": process_seconds()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_calibrate_main())
