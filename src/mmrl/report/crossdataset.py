"""Cross-dataset transfer and domain generalisation: a model trained on the source (ImageNet, all
classes) evaluated as is on the other datasets and on the ImageNet variants.

Per source and target: accuracy over seeds; averages: the mean over the targets of the
per-target means, separately for the 10 other benchmark datasets ("crossdataset") and the
4 ImageNet variants ("dg"). Other evaluated datasets (user data) are listed, not averaged.
"""
from __future__ import annotations

import io
from pathlib import Path

from mmrl.report import published as pub
from mmrl.report.document import DASH, Block, Figure, Heading, Table, Text, csv_num, csv_writer, mean_std, num
from mmrl.report.group import Series, dataset_order, display
from mmrl.report.plotting import (ZEROSHOT, BarSeries, grouped_bars, new_figure, ours_color, published_color,
                                  save_png)
from mmrl.report.scan import Run
from mmrl.report.stats import stat_dict
from mmrl.vocab import CROSS_SOURCE, DATASETS, VARIANTS

NAME = "crossdataset"
TITLE = "Cross-dataset transfer and domain generalisation"
FIGURE = "crossdataset.png"
SHOTS_IN_TABLE = True  # one block per shot count of the source
GROUPS = {"crossdataset": len(DATASETS) - 1, "dg": len(VARIANTS)}  # averaged group -> its full size
ZS_TITLE = "CLIP zero-shot (ours)"


def group_of(target: str, source: str) -> str:
    """"source", "crossdataset" (another benchmark dataset), "dg" (an ImageNet variant) or "other"."""
    if target == source:
        return "source"
    if target in VARIANTS:
        return "dg"
    return "crossdataset" if target in DATASETS else "other"


def required_evals(series: Series, run: Run) -> list[str]:
    return [f"{run.name}-all"] + [f"{t}-all" for t in series.targets if t != run.name]


def _targets_table(source: str, cols: list[str], values: dict[str, dict[int, float]], expected: list[int]) -> dict:
    table = {t: {"seeds": sorted(values.get(t, {})), "expected_seeds": expected,
                 "acc": stat_dict(values.get(t, {}).values())} for t in [source] + cols}
    averages = {}
    for name in GROUPS:
        group = [t for t in cols if group_of(t, source) == name]
        have = [t for t in group if table[t]["acc"]]
        averages[name] = {"targets": have, "expected_targets": group,
                          "complete": bool(have) and len(have) == len(group),
                          "acc": sum(table[t]["acc"]["mean"] for t in have) / len(have) if have else None}
    return {"source": source, "targets": table, "average": averages}


def summarise(series: Series) -> dict:
    """Per shot count of the source: accuracy on the source and on every target over seeds."""
    out = {}
    for source in series.datasets:
        for k in series.shots:
            runs = series.finished(source, k)
            if not runs and not series.expected_seeds(source, k):
                continue
            evaluated = {e.dataset for r in runs for e in r.evals.values() if e.subsample == "all"}
            cols = [t for t in dataset_order(set(series.targets) | evaluated) if t != source]
            values: dict[str, dict[int, float]] = {}
            for r in runs:
                for t in [source] + cols:
                    a = r.acc(t, "all")
                    if a is not None:
                        values.setdefault(t, {})[r.seed] = a
            out[str(k)] = _targets_table(source, cols, values, series.expected_seeds(source, k))
    return {"shots": out}


def ablation_row(entry: dict) -> dict:
    """One row of an ablation table, at the largest shot count of the source: accuracy on the source,
    the cross-dataset average (the metric) and the domain-generalisation average, each the mean over
    targets of the per-target means as the main table; when no target is a benchmark dataset (user
    data only), the cross-dataset average is over the other targets. Per dataset: the accuracy on each
    target of that average (so the average is the mean of the per-dataset numbers, as in the other
    protocols; the source and the ImageNet variants are columns)."""
    if not entry["shots"]:
        return {"columns": {"Source": None, "Cross-dataset": None, "DG": None}, "metric": "Cross-dataset",
                "metric_label": "cross-dataset accuracy", "value": None, "per_dataset": {}, "datasets": [], "note": ""}
    k = max(entry["shots"], key=int)
    t = entry["shots"][k]
    source = t["source"]
    acc = {c: r["acc"]["mean"] for c, r in t["targets"].items() if r["acc"]}
    cols = [c for c in t["targets"] if c != source]
    cross = [c for c in cols if group_of(c, source) == "crossdataset"] or [c for c in cols if group_of(c, source) == "other"]
    cross_have = [c for c in cross if c in acc]
    cross_avg = sum(acc[c] for c in cross_have) / len(cross_have) if cross_have else None
    src_col = f"{source} (source)"
    return {"columns": {src_col: acc.get(source), "Cross-dataset": cross_avg, "DG": t["average"]["dg"]["acc"]},
            "metric": "Cross-dataset", "metric_label": "cross-dataset accuracy", "value": cross_avg,
            "per_dataset": {c: acc[c] for c in cross_have}, "datasets": cross_have,
            "note": f"{k} shots on {source}; accuracy: mean over seeds; Cross-dataset and DG (ImageNet variants): "
                    "mean over the targets of the per-target means"}


def zeroshot(zs: dict[str, list[float]], methods: dict) -> dict | None:
    """Zero-shot accuracy on ImageNet and the section's targets (``zs``: eval key -> values, one per
    zero-shot run; ``methods``: the section's series entries)."""
    datasets = {t for e in methods.values() for tab in e["shots"].values() for t in tab["targets"]}
    cols = [t for t in dataset_order(datasets) if t != CROSS_SOURCE and zs.get(f"{t}-all")]
    if not cols:
        return None
    values = {t: {i + 1: v for i, v in enumerate(zs[f"{t}-all"])} for t in [CROSS_SOURCE] + cols
              if zs.get(f"{t}-all")}
    n = max(len(v) for v in values.values())
    return _targets_table(CROSS_SOURCE, cols, values, list(range(1, n + 1)))


# ----------------------------------------------------------------------------------------------
# Document
# ----------------------------------------------------------------------------------------------

def _rows_by_shots(sec: dict) -> dict[str, list[tuple[str, str, dict]]]:
    """shots -> [(label, method display name, table)] of our series (the zero-shot row is added per block)."""
    out: dict[str, list[tuple[str, str, dict]]] = {}
    for m, e in sec["methods"].items():
        for k, t in e["shots"].items():
            out.setdefault(k, []).append((e["label"], display(e.get("method", m)), t))
    return out


def document(sec: dict, published: dict, figure: str | None) -> list[Block]:
    out: list[Block] = [
        Heading(2, TITLE),
        Text("Trained on ImageNet (all classes), evaluated as is on the other datasets (cross-dataset) and on "
             "the ImageNet variants (domain generalisation). Accuracy (%), mean ± std over seeds (population "
             "std); '(n/m)': only n of m seeds. Averages: mean over targets of the per-target means; "
             "'(n/m targets)' where fewer targets than the papers' average. Published: MMRL (ViT-B/16, 16 shots); "
             f"{DASH} where none is published."),
    ]
    zs = sec.get("zeroshot")
    others = set()
    for k, entries in _rows_by_shots(sec).items():
        sources = {t["source"] for _, _, t in entries}
        present = set().union(*(t["targets"] for _, _, t in entries))
        cross = [t for t in dataset_order(present) if group_of(t, CROSS_SOURCE) in ("crossdataset", "other")
                 and t not in sources]
        dg = [t for t in VARIANTS if t in present]
        others |= {t for t in cross if t not in DATASETS}
        methods = []
        for _, mth, _ in entries:
            if mth not in methods:
                methods.append(mth)
        for title, cols, avg_key in (("Cross-dataset", cross, "crossdataset"), ("Domain generalisation", dg, "dg")):
            if not cols:
                continue
            rows = []
            for name, _, t in entries + ([(ZS_TITLE, "", zs)] if zs else []):
                cell = lambda c: mean_std(t["targets"][c]["acc"], len(t["targets"][c]["expected_seeds"]), True) \
                    if c in t["targets"] else DASH  # noqa: E731
                a = t["average"][avg_key]
                full = GROUPS[avg_key]
                avg = DASH if a["acc"] is None else num(a["acc"]) + (
                    f" ({len(a['targets'])}/{full} targets)" if len(a["targets"]) < full else "")
                rows.append([name, cell(t["source"]), *[cell(c) for c in cols],
                             f"**{avg}**" if avg != DASH else avg])
            for mth in methods:
                if pub.cross_source(published, mth) is None:
                    continue
                vals = [num(pub.cross_target(published, mth, c)) for c in cols]
                p_avg = pub.cross_average(published, mth, avg_key)
                rows.append([f"{mth} (published)", num(pub.cross_target(published, mth, CROSS_SOURCE)), *vals,
                             num(p_avg) + (f" ({full} targets)" if p_avg is not None else "")])
            src_head = f"{CROSS_SOURCE} (source)" if sources == {CROSS_SOURCE} else "Source"
            out += [Heading(3, f"{title} ({k} shots on {' / '.join(sorted(sources))})"),
                    Table(["Method", src_head, *cols, "Average"], rows)]
    if others:
        out.append(Text(f"{', '.join(f'`{d}`' for d in sorted(others))}: not one of the benchmark targets, so not "
                        "in the averages."))
    if figure:
        out.append(Figure(figure, "cross-dataset accuracy per target"))
    srcs = {pub.source_of(published, pub.cross_source(published, m)) for m in ("MMRL", "MMRL++")
            if pub.cross_source(published, m)}
    out.append(Text("Published source — " + "; ".join(sorted(srcs)) + ". No cross-dataset numbers are recorded "
                    "for MMRL++." if srcs else "No published cross-dataset numbers."))
    return out


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------

def to_csv(sec: dict, published: dict) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(["method", "shots", "target", "group", "seeds_done", "seeds_expected", "acc_mean", "acc_std",
                "published"])
    blocks = [(m, display(e.get("method", m)), k, t) for m, e in sec["methods"].items() for k, t in e["shots"].items()]
    if sec.get("zeroshot"):
        blocks.append(("zeroshot", display("zeroshot"), "0", sec["zeroshot"]))
    for m, mth, k, t in blocks:
        for c, r in t["targets"].items():
            a = r["acc"] or {}
            w.writerow([m, k, c, group_of(c, t["source"]), len(r["seeds"]), len(r["expected_seeds"]),
                        csv_num(a.get("mean")), csv_num(a.get("std")), csv_num(pub.cross_target(published, mth, c))])
        for g, a in t["average"].items():
            w.writerow([m, k, "Average", g, "", "", csv_num(a["acc"]), "", csv_num(pub.cross_average(published, mth, g))])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------

def plot(sec: dict, published: dict, path: Path, colors: dict[str, str]) -> bool:
    """Bars per target (source first, then the other datasets, the ImageNet variants and the two
    averages): our series, our zero-shot and the published numbers of the same methods."""
    series_tabs: list[tuple[str, str, dict, str]] = []   # (label, method display name, table, colour)
    i = 0
    for m, e in sec["methods"].items():
        for k, t in e["shots"].items():
            label = e["label"] if len(e["shots"]) == 1 else f"{e['label']} {k}-shot"
            color = colors.get(e["label"], ours_color(i)) if len(e["shots"]) == 1 else ours_color(i)
            series_tabs.append((label, display(e.get("method", m)), t, color))
            i += 1
    if not series_tabs:
        return False
    present = set().union(*(t["targets"] for _, _, t, _ in series_tabs))
    sources = [t["source"] for _, _, t, _ in series_tabs]
    cols = dataset_order(present - set(sources))
    cols = [c for c in cols if c not in VARIANTS] + [c for c in cols if c in VARIANTS]
    avg_cols = [g for g in GROUPS if any(len(t["average"][g]["targets"]) >= 2 for _, _, t, _ in series_tabs)]
    avg_names = {"crossdataset": "Avg cross-dataset", "dg": "Avg DG"}
    cats = ["Source"] + cols + [avg_names[g] for g in avg_cols]
    if set(sources) == {CROSS_SOURCE}:
        cats[0] = f"{CROSS_SOURCE} (source)"

    def values(t: dict) -> tuple[list, list]:
        vs, es = [], []
        for c in [t["source"]] + cols:
            a = t["targets"].get(c, {}).get("acc")
            vs.append(a["mean"] if a else None), es.append(a["std"] if a else None)
        for g in avg_cols:
            vs.append(t["average"][g]["acc"]), es.append(None)
        return vs, es

    bars = []
    for label, _, t, color in series_tabs:
        vs, es = values(t)
        bars.append(BarSeries(label, vs, color, es))
    if sec.get("zeroshot"):
        vs, es = values(sec["zeroshot"])
        bars.append(BarSeries(ZS_TITLE, vs, ZEROSHOT, es))
    j = 0
    for mth in dict.fromkeys(m for _, m, _, _ in series_tabs):
        if pub.cross_source(published, mth) is None:
            continue
        vs = ([pub.cross_target(published, mth, CROSS_SOURCE)] + [pub.cross_target(published, mth, c) for c in cols]
              + [pub.cross_average(published, mth, g) for g in avg_cols])
        bars.append(BarSeries(f"{mth} (published)", vs, published_color(j), None, "//"))
        j += 1
    n_bars = sum(b.any for b in bars)
    fig = new_figure(max(7.0, len(cats) * (0.22 * n_bars + 0.35) + 3.0), 4.2)
    ax = fig.subplots()
    grouped_bars(ax, cats, bars, ylabel="accuracy (%)")
    ax.set_xlabel("target dataset (model trained on the source only)", fontsize=8)
    fig.suptitle("Cross-dataset / domain generalisation: accuracy per target\n"
                 "(mean over seeds, whiskers: ± std; averages: of the per-target means)", fontsize=10)
    save_png(fig, path)
    return True
