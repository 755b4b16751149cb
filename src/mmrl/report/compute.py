"""The report's "Compute" section and compute.csv: what the runs cost, from run.json's ``cost``
block (:mod:`mmrl.engine.cost`).

* one row per (protocol, method, dataset) of the runs outside ablations: mean training time per
  run, device-hours of all its runs, peak memory (the largest over its runs: CUDA
  ``max_memory_reserved`` when the run was on a GPU, else the process's RSS high-water mark),
  training images/s (mean), trainable parameters and GFLOPs per training step;
* for each ablation study, accuracy against training cost, one point per value: HM (base-to-novel)
  or accuracy, mean over its datasets and seeds, against the mean device-hours of a run;
* compute.csv: one row per finished run that has a cost block.

Runs written before the cost block existed have none: they are counted under "without a cost block".
"""
from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from mmrl.report.document import DASH, Block, Figure, Heading, Table, Text, csv_num, csv_writer
from mmrl.report.scan import Found, Run
from mmrl.vocab import harmonic_mean

CSV_FILE = "compute.csv"
FIGURE_PREFIX = "compute-"  # every compute figure's name starts so (old ones are deleted by it)


def _number(d: Any, *path: str) -> float | None:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) else None


def peak_memory_mb(cost: dict) -> tuple[float | None, str]:
    """The run's peak memory and what it is: the largest CUDA reservation over its devices, else RSS."""
    cuda = cost.get("cuda_memory_mb") if isinstance(cost.get("cuda_memory_mb"), dict) else {}
    reserved = [_number(v, "max_reserved") for v in cuda.values()]
    reserved = [v for v in reserved if v is not None]
    if reserved:
        return max(reserved), "cuda"
    return _number(cost, "peak_rss_mb"), "rss"


def run_metric(r: Run) -> float | None:
    """HM of a base-to-novel run, else its accuracy on its own dataset (all classes)."""
    if r.protocol == "base2novel":
        base, new = r.acc(r.name, "base"), r.acc(r.name, "new")
        return harmonic_mean(base, new) if base is not None and new is not None else None
    return r.acc(r.name, "all")


def run_row(r: Run, root: Path) -> dict[str, Any]:
    c = r.cost or {}
    memory, kind = peak_memory_mb(c)
    flops = _number(c, "flops", "train_step")
    per_image = _number(c, "flops", "per_eval_image")
    device = c.get("device") if isinstance(c.get("device"), dict) else {}
    return {"protocol": r.protocol, "method": r.method, "dataset": r.name, "shots": r.shots, "seed": r.seed,
            "ablation": r.ablation, "train_s": _number(c, "wall_s", "train"), "total_s": _number(c, "wall_s", "total"),
            "device_hours": _number(c, "device_hours"), "peak_memory_mb": memory, "memory_kind": kind,
            "images_per_s": _number(c, "images_per_s"), "median_step_s": _number(c, "median_step_s"),
            "steps": _number(c, "steps"), "trainable_parameters": _number(c, "parameters", "trainable"),
            "gflops_step": None if flops is None else flops / 1e9,
            "gflops_eval_image": None if per_image is None else per_image / 1e9,
            "device": str(device.get("name") or (", ".join(device.get("names", [])) if device.get("names") else "")),
            "world_size": _number(c, "world_size"), "precision": str(c.get("precision") or ""),
            "metric": run_metric(r), "run_dir": str(r.path.relative_to(root) if r.path.is_relative_to(root) else r.path)}


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _sum(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) if xs else None


def _max(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def collect(found: Found, protocols: Sequence[str] | None = None) -> dict[str, Any]:
    """report.json's ``compute``: ``{"runs": [one row per run], "series": [...], "ablations": [...],
    "without_cost": n}``."""
    finished = [r for r in found.runs if r.state == "finished" and r.protocol and r.name
                and (not protocols or r.protocol in protocols)]
    with_cost = [r for r in finished if isinstance(r.cost, dict)]
    rows = [run_row(r, found.root) for r in sorted(with_cost, key=lambda r: str(r.path))]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not row["ablation"]:
            groups.setdefault((row["protocol"], row["method"], row["dataset"]), []).append(row)
    series = []
    for (protocol, method, dataset), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        kinds = {r["memory_kind"] for r in rs if r["peak_memory_mb"] is not None}
        series.append({"protocol": protocol, "method": method, "dataset": dataset, "runs": len(rs),
                       "train_s": _mean([r["train_s"] for r in rs]),
                       "device_hours": _sum([r["device_hours"] for r in rs]),
                       "peak_memory_mb": _max([r["peak_memory_mb"] for r in rs]),
                       "memory_kind": "cuda" if "cuda" in kinds else "rss",
                       "images_per_s": _mean([r["images_per_s"] for r in rs]),
                       "trainable_parameters": _max([r["trainable_parameters"] for r in rs]),
                       "gflops_step": _mean([r["gflops_step"] for r in rs])})
    return {"runs": rows, "series": series, "ablations": _ablations(rows), "without_cost": len(finished) - len(with_cost)}


def _ablations(rows: list[dict]) -> list[dict]:
    """One study per (protocol, method, varied keys); one point per value: mean metric, mean cost."""
    studies: dict[tuple, dict[str, list[dict]]] = {}
    for row in rows:
        if row["ablation"]:
            key = (row["protocol"], row["method"], tuple(sorted(row["ablation"])))
            point = json.dumps(row["ablation"], sort_keys=True)
            studies.setdefault(key, {}).setdefault(point, []).append(row)
    out = []
    for (protocol, method, keys), points in sorted(studies.items(), key=lambda kv: tuple(map(str, kv[0]))):
        pts = []
        for point, rs in points.items():
            values = json.loads(point)
            pts.append({"values": values, "label": ", ".join(f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in keys),
                        "runs": len(rs), "metric": _mean([r["metric"] for r in rs]),
                        "device_hours": _mean([r["device_hours"] for r in rs]),
                        "train_s": _mean([r["train_s"] for r in rs]),
                        "gflops_step": _mean([r["gflops_step"] for r in rs])})
        pts.sort(key=lambda p: (p["device_hours"] is None, p["device_hours"] or 0.0))
        out.append({"protocol": protocol, "method": method, "keys": list(keys),
                    "metric_label": "HM (%)" if protocol == "base2novel" else "accuracy (%)", "points": pts,
                    "figure": _figure_name(protocol, method, keys)})
    return out


def _figure_name(protocol: str, method: str, keys: Sequence[str]) -> str:
    from mmrl.report.ablation import slug

    return f"{FIGURE_PREFIX}{slug(protocol)}-{slug(method)}-{'-'.join(slug(k) for k in keys)}.png"


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

def _fmt(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _seconds(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:.1f} s" if x < 600 else f"{x / 60:.1f} min" if x < 36000 else f"{x / 3600:.1f} h"


def _hours(x: float | None) -> str:
    return DASH if x is None else f"{x:.4f}" if x < 0.1 else f"{x:.2f}"


def _int(x: float | None) -> str:
    return DASH if x is None else f"{int(x):,}"


def document(compute: dict, titles: dict[str, str], figures: set[str]) -> list[Block]:
    """The "Compute" section (nothing when no run has a cost block)."""
    if not compute or (not compute["series"] and not compute["ablations"]):
        return []
    out: list[Block] = [Heading(2, "Compute"), Text(
        "What the runs cost, from each run.json's `cost` block: training time per run (mean), device-hours of "
        "all the runs (devices × wall time, set-up and evaluation included), peak memory (largest over the runs: "
        "CUDA `max_memory_reserved` on a GPU, else the process's RSS high-water mark), training images/s (mean), "
        "trainable parameters and GFLOPs per training step (counted by `FlopCounterMode` over one real step). "
        f"Every run is listed in `{CSV_FILE}`.")]
    if compute["series"]:
        rows = [[titles.get(s["protocol"], s["protocol"]), s["method"], s["dataset"], str(s["runs"]),
                 _seconds(s["train_s"]), _hours(s["device_hours"]),
                 DASH if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:,.0f} ({s['memory_kind']})",
                 _fmt(s["images_per_s"], 1), _int(s["trainable_parameters"]), _fmt(s["gflops_step"], 2)]
                for s in compute["series"]]
        out.append(Table(["Protocol", "Method", "Dataset", "Runs", "Train time / run", "Device-hours",
                          "Peak memory MB", "Images/s", "Trainable params", "GFLOPs / step"], rows))
    for st in compute["ablations"]:
        out.append(Text(f"**{titles.get(st['protocol'], st['protocol'])}, {st['method']}**, ablation of "
                        f"{', '.join('`' + k + '`' for k in st['keys'])}: {st['metric_label']} against the training "
                        "cost, one point per value (mean over its datasets and seeds)."))
        if st["figure"] in figures:
            out.append(Figure(st["figure"], f"{st['metric_label']} against device-seconds per run"))
        out.append(Table(["Value", "Runs", st["metric_label"], "Device-hours / run", "Train time / run",
                          "GFLOPs / step"],
                         [[p["label"], str(p["runs"]), _fmt(p["metric"]), _hours(p["device_hours"]),
                           _seconds(p["train_s"]), _fmt(p["gflops_step"])] for p in st["points"]]))
    if compute.get("without_cost"):
        out.append(Text(f"{compute['without_cost']} finished run(s) without a cost block (written by an earlier "
                        "mmrl) are not in this section."))
    return out


CSV_COLUMNS = ["protocol", "method", "dataset", "shots", "seed", "ablation", "train_s", "total_s", "device_hours",
               "peak_memory_mb", "memory_kind", "images_per_s", "median_step_s", "steps", "trainable_parameters",
               "gflops_step", "gflops_eval_image", "device", "world_size", "precision", "metric", "run_dir"]
_NUMERIC = {"train_s", "total_s", "device_hours", "peak_memory_mb", "images_per_s", "median_step_s", "steps",
            "trainable_parameters", "gflops_step", "gflops_eval_image", "world_size", "metric"}


def to_csv(compute: dict) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(CSV_COLUMNS)
    for row in compute["runs"]:
        w.writerow([csv_num(row[c]) if c in _NUMERIC else
                    (json.dumps(row[c], sort_keys=True) if row[c] else "") if c == "ablation" else
                    "" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def plot(compute: dict, out: Path, titles: dict[str, str]) -> set[str]:
    """One scatter per ablation study: the metric against device-hours per run, a labelled point per
    value. Returns the figure files written."""
    from mmrl.report.plotting import new_figure, save_png

    written = set()
    for st in compute.get("ablations", []):
        pts = [p for p in st["points"] if p["metric"] is not None and p["device_hours"] is not None]
        if not pts:
            continue
        fig = new_figure(6.0, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        xs = [p["device_hours"] * 3600 for p in pts]  # device-seconds: readable for short runs
        ys = [p["metric"] for p in pts]
        ax.plot(xs, ys, color="#bbbbbb", linewidth=0.8, zorder=1)
        ax.scatter(xs, ys, color="#1f77b4", zorder=2)
        for x, y, p in zip(xs, ys, pts):
            ax.annotate(p["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("training cost: device-seconds per run (set-up, training, evaluation)")
        ax.set_ylabel(st["metric_label"])
        ax.grid(alpha=0.3)
        ax.set_title(f"{titles.get(st['protocol'], st['protocol'])}, {st['method']}: "
                     f"{', '.join(st['keys'])}", fontsize=10)
        ax.margins(x=0.15, y=0.15)
        save_png(fig, out / st["figure"])
        written.add(st["figure"])
    return written
