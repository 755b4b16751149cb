"""Few-shot classification: accuracy on the all-class test set per dataset and shot count over seeds,
and the average over the benchmark datasets per shot count (the mean of the per-dataset means)."""
from __future__ import annotations

import io
import math
from pathlib import Path

from mmrl.report.document import DASH, Block, Figure, Heading, Table, Text, csv_num, csv_writer, mean_std, num
from mmrl.report.group import Series, averaged_datasets, dataset_order
from mmrl.report.plotting import ACC_LABEL, ZEROSHOT, new_figure, ours_color, save_png
from mmrl.report.scan import Run
from mmrl.report.stats import stat_dict
from mmrl.vocab import DATASETS

NAME = "fewshot"
TITLE = "Few-shot classification"
FIGURE = "fewshot.png"
SHOTS_IN_TABLE = True  # one column per shot count
MEAN_OVER_SHOTS = "Mean over shots"  # an ablation's metric: the average accuracy, averaged over the shot counts


def required_evals(series: Series, run: Run) -> list[str]:
    return [f"{run.name}-all"]


def summarise(series: Series) -> dict:
    """Accuracy per dataset and shot count (every pair, "acc": None where nothing finished) and the
    per-shot-count average over the benchmark datasets that have that shot count in the series."""
    table: dict[str, dict[str, dict]] = {}
    for d in series.datasets:
        table[d] = {}
        for k in series.shots:
            vals = {r.seed: r.acc(d, "all") for r in series.finished(d, k) if r.acc(d, "all") is not None}
            table[d][str(k)] = {"seeds": sorted(vals), "expected_seeds": series.expected_seeds(d, k),
                                "acc": stat_dict(vals.values())}
    average = {}
    for k in series.shots:
        bench = [d for d in series.datasets if d in DATASETS and (table[d][str(k)]["expected_seeds"])]
        have = [d for d in bench if table[d][str(k)]["acc"]]
        average[str(k)] = {
            "datasets": have, "expected_datasets": bench,
            "complete": bool(have) and len(have) == len(bench)
            and all(len(table[d][str(k)]["seeds"]) == len(table[d][str(k)]["expected_seeds"]) for d in have),
            "acc": sum(table[d][str(k)]["acc"]["mean"] for d in have) / len(have) if have else None,
        }
    return {"datasets": table, "average": average}


def ablation_row(entry: dict) -> dict:
    """One row of an ablation table: one column per shot count, the average accuracy over the datasets
    (mean of the per-dataset means over seeds, as the main table's average row; the benchmark datasets,
    or every dataset when none is one), and the metric "Mean over shots": the mean of those columns
    over the shot counts that have a value; per dataset likewise (mean over its shot counts)."""
    table = entry["datasets"]
    shots = sorted(int(k) for k in entry["average"])
    columns: dict[str, float | None] = {}
    averaged: set[str] = set()
    for k in shots:
        asked = [d for d in table if table[d][str(k)]["expected_seeds"] or table[d][str(k)]["acc"]]
        have = [d for d in averaged_datasets(asked) if table[d][str(k)]["acc"]]
        averaged |= set(have)
        columns[_shots_label(k)] = sum(table[d][str(k)]["acc"]["mean"] for d in have) / len(have) if have else None
    present = [v for v in columns.values() if v is not None]
    value = sum(present) / len(present) if present else None
    per_dataset = {}
    for d, per in table.items():
        vals = [r["acc"]["mean"] for r in per.values() if r["acc"]]
        if vals:
            per_dataset[d] = sum(vals) / len(vals)
    columns[MEAN_OVER_SHOTS] = value
    return {"columns": columns, "metric": MEAN_OVER_SHOTS, "metric_label": "accuracy, mean over shot counts",
            "value": value, "per_dataset": per_dataset,
            "datasets": dataset_order(averaged),
            "note": "accuracy on the all-class test set; per shot count: mean over seeds, then over the "
                    f"datasets; {MEAN_OVER_SHOTS}: the mean of those over the shot counts present"}


def zeroshot(zs: dict[str, list[float]], methods: dict) -> dict | None:
    """Zero-shot accuracy on the all-class test set of the section's datasets (``zs``: eval key -> values,
    one per zero-shot run; ``methods``: the section's series entries)."""
    datasets = dataset_order({d for e in methods.values() for d in e["datasets"]})
    out = {d: stat_dict(zs[f"{d}-all"]) for d in datasets if zs.get(f"{d}-all")}
    return out or None


# ----------------------------------------------------------------------------------------------
# Document
# ----------------------------------------------------------------------------------------------

def _shots_label(k: int) -> str:
    return f"{k} shot{'s' if k > 1 else ''}"


def document(sec: dict, published: dict, figure: str | None) -> list[Block]:
    out: list[Block] = [
        Heading(2, TITLE),
        Text("Accuracy (%) on the all-class test set, mean ± std over seeds (population std); "
             f"'(n/m)': only n of m seeds finished; {DASH}: not run. Average: mean over the benchmark datasets of "
             "the per-dataset means. Published few-shot numbers per shot count: "
             f"{DASH} (none recorded in published.yaml)."),
    ]
    zs = sec.get("zeroshot") or {}
    user_data = set()
    for m, e in sec["methods"].items():
        shots = e["grid"]["shots"]
        out.append(Heading(3, e["label"]))
        header = ["Dataset"] + [_shots_label(k) for k in shots] + (["CLIP zero-shot"] if zs else [])
        rows = []
        for d, per in e["datasets"].items():
            if d not in DATASETS:
                user_data.add(d)
            cells = []
            for k in shots:
                r = per[str(k)]
                cells.append(mean_std(r["acc"], len(r["expected_seeds"]), True,
                                      empty="missing" if r["expected_seeds"] else DASH))
            rows.append([d] + cells + ([num(zs[d]["mean"]) if zs.get(d) else DASH] if zs else []))
        if any(len(e["average"][str(k)]["expected_datasets"]) >= 2 for k in shots):  # else: that one dataset
            avg_row = ["**Average**"]
            for k in shots:
                a = e["average"][str(k)]
                if a["acc"] is None:
                    avg_row.append("missing" if a["expected_datasets"] else DASH)
                else:
                    avg_row.append(f"**{num(a['acc'])}**" + ("" if a["complete"] else
                                   f" ({len(a['datasets'])}/{len(a['expected_datasets'])} datasets, partial)"))
            if zs:
                vals = [zs[d]["mean"] for d in e["datasets"] if d in DATASETS and zs.get(d)]
                avg_row.append(num(sum(vals) / len(vals)) if vals else DASH)
            rows.append(avg_row)
        out.append(Table(header, rows))
    if user_data:
        out.append(Text(f"{', '.join(f'`{d}`' for d in sorted(user_data))}: not one of the 11 benchmark datasets, "
                        "so not in the average."))
    if figure:
        out.append(Figure(figure, "accuracy vs shots per class"))
    return out


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------

def to_csv(sec: dict, published: dict) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(["method", "dataset", "shots", "seeds_done", "seeds_expected", "acc_mean", "acc_std"])
    for m, e in sec["methods"].items():
        for d, per in e["datasets"].items():
            for k, r in per.items():
                a = r["acc"] or {}
                w.writerow([m, d, k, len(r["seeds"]), len(r["expected_seeds"]), csv_num(a.get("mean")), csv_num(a.get("std"))])
        for k, a in e["average"].items():
            w.writerow([m, "Average", k, "", "", csv_num(a["acc"]), ""])
    for d, s in (sec.get("zeroshot") or {}).items():
        w.writerow(["zeroshot", d, 0, s["n"] if s else 0, "", csv_num((s or {}).get("mean")), csv_num((s or {}).get("std"))])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------

def plot(sec: dict, published: dict, path: Path, colors: dict[str, str]) -> bool:
    """Accuracy vs shots per class: one panel per dataset (and the average when it covers two or more
    datasets), one line per series, CLIP zero-shot as a dashed grey line, values at the points."""
    methods = sec["methods"]
    datasets = dataset_order({d for e in methods.values() for d, per in e["datasets"].items()
                              if any(r["acc"] for r in per.values())})
    if not datasets:
        return False
    show_avg = any(len(a["datasets"]) >= 2 for e in methods.values() for a in e["average"].values())
    panels = datasets + (["Average"] if show_avg else [])
    zs = sec.get("zeroshot") or {}
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = new_figure(3.4 * ncol + 1.8, 2.9 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    all_shots = sorted({k for e in methods.values() for k in e["grid"]["shots"]})
    handles: dict[str, object] = {}
    for ax, d in zip(axes.flat, panels):
        for i, (m, e) in enumerate(methods.items()):
            xs, ys, es = [], [], []
            for k in e["grid"]["shots"]:
                if d == "Average":
                    v, s = e["average"][str(k)]["acc"], None
                    if v is not None and len(e["average"][str(k)]["datasets"]) < 2:
                        v = None
                else:
                    a = e["datasets"].get(d, {}).get(str(k), {}).get("acc")
                    v, s = (a["mean"], a["std"]) if a else (None, None)
                if v is not None:
                    xs.append(k), ys.append(v), es.append(s or 0.0)
            if xs:
                color = colors.get(e["label"], ours_color(i))
                line = ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="o", ms=4, capsize=2,
                                   color=color, label=e["label"], lw=1.6)
                handles.setdefault(e["label"], line)
                for x, y in zip(xs, ys):
                    ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center",
                                fontsize=7, color=color)
        zv = ([zs[x]["mean"] for x in datasets if x in DATASETS and zs.get(x)] if d == "Average"
              else ([zs[d]["mean"]] if zs.get(d) else []))
        if zv:
            z = sum(zv) / len(zv)
            line = ax.axhline(z, color=ZEROSHOT, ls="--", lw=1.2, label="CLIP zero-shot (ours)")
            handles.setdefault("CLIP zero-shot (ours)", line)
            ax.annotate(f"{z:.1f}", (1.0, z), xycoords=("axes fraction", "data"), textcoords="offset points",
                        xytext=(-2, 3), ha="right", fontsize=7, color=ZEROSHOT)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_shots, [str(k) for k in all_shots])
        ax.minorticks_off()
        ax.set_xlim(min(all_shots) / 1.5, max(all_shots) * 1.5)
        ax.set_ylim(0, 105)
        ax.set_title(d if d != "Average" else "Average (benchmark datasets)", fontsize=9)
        ax.set_xlabel("shots per class", fontsize=8)
        ax.set_ylabel(ACC_LABEL, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    order = [e["label"] for e in methods.values()] + ["CLIP zero-shot (ours)"]
    handles = {k: handles[k] for k in order if k in handles}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(4, len(handles)),
                   fontsize=8, frameon=False)
    fig.suptitle("Few-shot: accuracy vs shots per class\n(mean over seeds, whiskers: ± std)", fontsize=10)
    save_png(fig, path)
    return True
