"""Robustness figures: accuracy against label noise or class imbalance (docs/robustness.md).

Drawn from the ablation studies (:mod:`mmrl.report.ablation`) that vary a robustness axis:
``data.noise.shots`` (x: the noise rate, wrong shots / shots in %, when the study has one shot
count; else the wrong shots) or ``data.imbalance.ratio`` (x: rho = n_min / n_max, log scale).
One line per method; a remedy (``optim.loss=gce``, ``optim.balance=logit_adjust``: any value of
the remedy key but the plain one) dashed, in its method's colour; the seed range shaded; CLIP
zero-shot on the same datasets as a flat grey reference. Every other varied key (e.g.
``data.noise.type``) gives a panel of its own. Each point is an ablation *point* (all varied keys
fixed), averaged over seeds and datasets as the protocol does; torch-free.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mmrl.report.ablation import key_short, slug, value_text
from mmrl.report.document import Block, Figure, Heading, Table, Text, csv_num, csv_writer, num
from mmrl.vocab import harmonic_mean

TITLE = "Robustness"
CSV_FILE = "robustness.csv"
FIGURE_PREFIX = "robustness-"  # every robustness figure's file name starts so (old ones are deleted by it)
AXES = {"data.noise.shots": "noise", "data.imbalance.ratio": "imbalance"}
REMEDIES = {"optim.loss": "ce", "optim.balance": "none"}  # key -> its plain value (no remedy)


def _zeroshot(protocol: str, datasets: list[str], zs: dict[str, dict]) -> float | None:
    """Zero-shot CLIP's value of the protocol's metric, averaged over ``datasets`` (None unless every
    dataset has it): accuracy on all classes (few-shot) or the HM of base and novel (base-to-novel)."""
    vals = []
    for d in datasets:
        if protocol == "base2novel":
            b, n = zs.get(f"{d}-base"), zs.get(f"{d}-new")
            vals.append(harmonic_mean(b["mean"], n["mean"]) if b and n else None)
        elif protocol == "fewshot":
            a = zs.get(f"{d}-all")
            vals.append(a["mean"] if a else None)
        else:
            vals.append(None)
    return sum(vals) / len(vals) if vals and None not in vals else None


def _x(axis: str, value: Any, shots: list[int]) -> float:
    if AXES[axis] == "noise" and len(shots) == 1 and shots[0]:
        return 100.0 * float(value) / shots[0]
    return float(value)


def x_label(axis: str, shots: list[int]) -> str:
    if AXES[axis] == "imbalance":
        return "imbalance ratio ρ = n_min / n_max (log scale)"
    if len(shots) == 1:
        return f"label noise: wrong shots of {shots[0]} (%)"
    return "label noise: wrong shots per class"


def collect(studies: list[dict], zeroshot: dict[str, dict]) -> list[dict]:
    """report.json's ``robustness``: one entry per (protocol, axis, varied key set), its panels, lines
    and points (``studies``: report.json's ``ablations``; ``zeroshot``: its ``zeroshot``)."""
    groups: dict[tuple, list[dict]] = {}
    for st in studies:
        for axis in AXES:
            if axis in st["keys"]:
                groups.setdefault((st["protocol"], axis, tuple(st["keys"])), []).append(st)
    out = []
    for (protocol, axis, keys), members in groups.items():
        remedy = next((k for k in keys if k in REMEDIES), None)
        panel_keys = [k for k in keys if k not in (axis, remedy)]
        shots = sorted({s for st in members for s in st["shots"]})
        # the datasets with a number (a run still training may name its dataset otherwise)
        datasets = sorted({d for st in members for p in st["points"] for d in p["per_dataset"]})
        panels: dict[tuple, dict[tuple, dict]] = {}
        for st in members:
            for p in st["points"]:
                v = p["values"]
                panel = tuple(value_text(v[k]) for k in panel_keys)
                rem = value_text(v[remedy]) if remedy else None
                line = panels.setdefault(panel, {}).setdefault((st["label"], rem), {
                    "method": st["label"], "remedy": rem,
                    "dashed": remedy is not None and rem != REMEDIES[remedy],
                    "label": st["label"] + (f", {key_short(remedy)} {rem}" if remedy else ""), "points": []})
                seeds = list(p.get("seed_values", {}).values())
                line["points"].append({"value_of_key": v[axis], "x": _x(axis, v[axis], shots), "value": p["value"],
                                       "low": min(seeds) if len(seeds) > 1 else None,
                                       "high": max(seeds) if len(seeds) > 1 else None,
                                       "runs_done": p["runs_done"], "runs_expected": p["runs_expected"]})
        entry_panels = []
        for panel, lines in panels.items():
            for ln in lines.values():
                ln["points"].sort(key=lambda q: q["x"])
            label = ", ".join(f"{key_short(k)} {v}" for k, v in zip(panel_keys, panel))
            # per method: the plain line first, then its remedies
            ordered = sorted(lines.values(), key=lambda ln: (ln["method"], ln["dashed"], ln["remedy"] or ""))
            entry_panels.append({"label": label, "lines": ordered})
        name = f"{protocol}-{AXES[axis]}" + (f"-{slug('-'.join(keys))}" if len(groups) > 1 else "")
        out.append({"id": f"{protocol}/{'+'.join(keys)}", "protocol": protocol, "axis": axis, "kind": AXES[axis],
                    "keys": list(keys), "remedy_key": remedy, "panel_keys": panel_keys, "shots": shots,
                    "datasets": datasets, "metric": members[0]["metric"],
                    "metric_label": members[0]["metric_label"].replace(", mean over shot counts", "")
                    if len(shots) == 1 else members[0]["metric_label"],
                    "x_label": x_label(axis, shots), "zeroshot": _zeroshot(protocol, datasets, zeroshot),
                    "panels": entry_panels, "figure": f"{FIGURE_PREFIX}{name}.png"})
    return out


def _x_text(fig: dict, x: float) -> str:
    return f"{x:g}%" if fig["kind"] == "noise" and len(fig["shots"]) == 1 else f"{x:g}"


def document(figures: list[dict], written: set[str], protocol_titles: dict[str, str]) -> list[Block]:
    """The "Robustness" section: per figure a table (x down, one column per line) and the figure."""
    if not figures:
        return []
    out: list[Block] = [Heading(2, TITLE), Text(
        "Accuracy against label noise (`data.noise.*`, JoAPR's protocol) or class imbalance "
        "(`data.imbalance.*`, the long-tailed profile), from the ablation runs above; a remedy "
        "(`optim.loss=gce`, `optim.balance=logit_adjust`) is dashed in the figures; zero-shot CLIP is the "
        "flat reference; each value the mean over seeds, then over the datasets (docs/robustness.md).")]
    for fig in figures:
        title = protocol_titles.get(fig["protocol"], fig["protocol"])
        zs = fig["zeroshot"]
        out.append(Heading(3, f"{title}: {fig['metric_label']} vs {key_short(fig['axis'])}"))
        out.append(Text(f"Datasets: {', '.join(fig['datasets'])}; {', '.join(map(str, fig['shots']))} shots; x: "
                        f"{fig['x_label']}. Zero-shot CLIP: " + (f"{num(zs)}." if zs is not None else
                                                                  "not found (run `mmrl zeroshot` on these datasets).")))
        for panel in fig["panels"]:
            xs = sorted({p["x"] for ln in panel["lines"] for p in ln["points"]}, reverse=fig["kind"] == "imbalance")
            rows = []
            for x in xs:
                cells = []
                for ln in panel["lines"]:
                    p = next((q for q in ln["points"] if q["x"] == x), None)
                    cells.append("—" if p is None or p["value"] is None else num(p["value"]) + (
                        f" ({p['runs_done']}/{p['runs_expected']})" if p["runs_done"] < p["runs_expected"] else ""))
                rows.append([_x_text(fig, x), *cells])
            if panel["label"]:
                out.append(Text(f"**{panel['label']}**"))
            out.append(Table([key_short(fig["axis"]), *[ln["label"] for ln in panel["lines"]]], rows))
        if fig["figure"] in written:
            out.append(Figure(fig["figure"], f"{fig['metric_label']} vs {fig['axis']}"))
    return out


def to_csv(figures: list[dict]) -> str:
    """robustness.csv: one row per point of every line."""
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(["figure", "protocol", "axis", "panel", "method", "remedy", "value_of_key", "x", "metric",
                "value", "seed_low", "seed_high", "runs_done", "runs_expected", "zeroshot"])
    for fig in figures:
        for panel in fig["panels"]:
            for ln in panel["lines"]:
                for p in ln["points"]:
                    w.writerow([fig["id"], fig["protocol"], fig["axis"], panel["label"], ln["method"], ln["remedy"] or "",
                                value_text(p["value_of_key"]), csv_num(p["x"]), fig["metric"], csv_num(p["value"]),
                                csv_num(p["low"]), csv_num(p["high"]), p["runs_done"], p["runs_expected"],
                                csv_num(fig["zeroshot"])])
    return buf.getvalue()


def plot(figures: list[dict], out: Path, protocol_titles: dict[str, str]) -> set[str]:
    """Draw each robustness figure (one panel per value of the other varied keys); the names written."""
    from mmrl.report.plotting import ZEROSHOT, new_figure, ours_color, save_png

    written: set[str] = set()
    for fig in figures:
        if all(p["value"] is None for pan in fig["panels"] for ln in pan["lines"] for p in ln["points"]):
            continue
        n = len(fig["panels"])
        canvas = new_figure(4.6 * n + 2.2, 4.2)
        axes = canvas.subplots(1, n, sharey=True, squeeze=False)[0]
        methods = list(dict.fromkeys(ln["method"] for pan in fig["panels"] for ln in pan["lines"]))
        for ax, panel in zip(axes, fig["panels"]):
            for ln in panel["lines"]:
                color = ours_color(methods.index(ln["method"]))
                pts = [p for p in ln["points"] if p["value"] is not None]
                xs, ys = [p["x"] for p in pts], [p["value"] for p in pts]
                ax.plot(xs, ys, marker="s" if ln["dashed"] else "o", ms=5, lw=1.8, color=color,
                        ls=(0, (4, 2)) if ln["dashed"] else "-", mfc="white" if ln["dashed"] else color,
                        label=ln["label"])
                band = [p for p in pts if p["low"] is not None]
                if band:
                    ax.fill_between([p["x"] for p in band], [p["low"] for p in band], [p["high"] for p in band],
                                    color=color, alpha=0.12 if ln["dashed"] else 0.2, lw=0)
            if fig["zeroshot"] is not None:
                ax.axhline(fig["zeroshot"], color=ZEROSHOT, ls=":", lw=2.0, label="zero-shot CLIP")
            if fig["kind"] == "imbalance":
                ax.set_xscale("log")
                ax.invert_xaxis()  # balanced on the left, the longest tail on the right
            ticks = sorted({p["x"] for ln in panel["lines"] for p in ln["points"]})
            ax.set_xticks(ticks, [_x_text(fig, t) for t in ticks])
            ax.margins(x=0.06)
            ax.set_title(panel["label"] or key_short(fig["axis"]), fontsize=10)
            ax.set_xlabel(fig["x_label"], fontsize=9)
            ax.grid(alpha=0.3)
            ax.set_axisbelow(True)
        axes[0].set_ylabel(f"{fig['metric_label']} (%)")
        axes[-1].legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        title = protocol_titles.get(fig["protocol"], fig["protocol"])
        canvas.suptitle(f"{title}: {fig['metric_label']} vs {key_short(fig['axis'])} on "
                        f"{', '.join(fig['datasets'])}\n(dashed: with the remedy; bands: range over seeds; "
                        "mean over seeds and datasets)", fontsize=10)
        save_png(canvas, out / fig["figure"])
        written.add(fig["figure"])
    return written
