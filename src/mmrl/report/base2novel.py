"""Base-to-novel: Base, Novel and HM per dataset over seeds, the 11-dataset average as the papers
compute it, and the published numbers beside ours.

HM is given two ways: mean ± std of the per-seed HM 2BN/(B+N), and the HM of the mean Base
and mean Novel (what papers report). The average: Base and Novel averaged over the benchmark
datasets first, HM of those two averages; its ± is the std over seeds of the per-seed dataset
averages. Datasets outside the 11 benchmarks (user data) are listed but not averaged.
"""
from __future__ import annotations

import io
from pathlib import Path

from mmrl.report import published as pub
from mmrl.report.document import DASH, Block, Figure, Heading, Table, Text, csv_num, csv_writer, mean_std, num
from mmrl.report.group import Series, averaged_datasets, dataset_order, display
from mmrl.report.plotting import (ZEROSHOT, ZEROSHOT_PUBLISHED, BarSeries, grouped_bars, new_figure, ours_color,
                                  published_color, save_png)
from mmrl.report.scan import Run
from mmrl.report.stats import stat, stat_dict
from mmrl.vocab import DATASETS, harmonic_mean

NAME = "base2novel"
TITLE = "Base-to-novel generalisation"
FIGURE = "base2novel.png"
SHOTS_IN_TABLE = False  # a second shot count of a method is a series of its own
ZS_TITLE = "CLIP zero-shot (ours)"


def required_evals(series: Series, run: Run) -> list[str]:
    return [f"{run.name}-base", f"{run.name}-new"]


def _table(pairs: dict[str, dict[int, tuple[float, float]]], expected: dict[str, list[int]]) -> dict:
    """Per dataset Base/Novel/HM over seeds and the benchmark average; ``pairs``: dataset -> seed -> (B, N)."""
    datasets: dict[str, dict] = {}
    per_seed: dict[int, dict[str, tuple[float, float]]] = {}
    for d, by_seed in pairs.items():
        b, n = stat(p[0] for p in by_seed.values()), stat(p[1] for p in by_seed.values())
        datasets[d] = {
            "seeds": sorted(by_seed), "expected_seeds": expected[d],
            "base": b.as_dict() if b else None, "novel": n.as_dict() if n else None,
            "hm": stat_dict(harmonic_mean(*p) for p in by_seed.values()),
            "hm_of_means": harmonic_mean(b.mean, n.mean) if b and n else None,
        }
        for s, p in by_seed.items():
            per_seed.setdefault(s, {})[d] = p
    bench = [d for d in datasets if d in DATASETS]
    have = [d for d in bench if datasets[d]["base"]]
    avg: dict = {"datasets": have, "expected_datasets": bench,
                 "complete": bool(have) and len(have) == len(bench)
                 and all(len(datasets[d]["seeds"]) == len(datasets[d]["expected_seeds"]) for d in have)}
    if have:
        ab = sum(datasets[d]["base"]["mean"] for d in have) / len(have)
        an = sum(datasets[d]["novel"]["mean"] for d in have) / len(have)
        # per seed: the average over the datasets (only seeds that every averaged dataset has)
        full = [s for s in sorted(per_seed) if all(d in per_seed[s] for d in have)]
        sb = stat(sum(per_seed[s][d][0] for d in have) / len(have) for s in full)
        sn = stat(sum(per_seed[s][d][1] for d in have) / len(have) for s in full)
        avg.update(base={"mean": ab, "std": sb.std if sb else None, "n": len(full)},
                   novel={"mean": an, "std": sn.std if sn else None, "n": len(full)},
                   hm_of_means=harmonic_mean(ab, an),
                   hm=stat_dict(harmonic_mean(b_, n_) for b_, n_ in zip(sb.values, sn.values)) if sb and sn else None)
    return {"datasets": datasets, "average": avg}


def summarise(series: Series) -> dict:
    """The series' table (report.json's ``methods[<key>]`` minus the common fields)."""
    pairs: dict[str, dict[int, tuple[float, float]]] = {}
    expected: dict[str, list[int]] = {}
    for d in series.datasets:
        pairs[d] = {}
        for r in series.finished(d):
            b, n = r.acc(d, "base"), r.acc(d, "new")
            if b is not None and n is not None:
                pairs[d][r.seed] = (b, n)
        expected[d] = sorted({s for k in series.shots for s in series.expected_seeds(d, k)})
    return _table(pairs, expected)


def ablation_row(entry: dict) -> dict:
    """One row of an ablation table: Base, Novel and HM as the average row of the main table (Base
    and Novel averaged over the datasets first -- the benchmark datasets, or every dataset when none is
    one -- then the HM of the two averages); the metric is that HM; per dataset the HM of the mean
    Base and mean Novel over seeds."""
    rows = entry["datasets"]
    have = [d for d in averaged_datasets(rows) if rows[d]["base"] and rows[d]["novel"]]
    base = novel = hm = None
    if have:  # the same arithmetic as _table's average
        base = sum(rows[d]["base"]["mean"] for d in have) / len(have)
        novel = sum(rows[d]["novel"]["mean"] for d in have) / len(have)
        hm = harmonic_mean(base, novel)
    return {"columns": {"Base": base, "Novel": novel, "HM": hm}, "metric": "HM", "metric_label": "HM", "value": hm,
            "per_dataset": {d: r["hm_of_means"] for d, r in rows.items() if r["hm_of_means"] is not None},
            "datasets": have,
            "note": "Base and Novel: mean over seeds, then over the datasets; HM: of those two averages "
                    "(as the papers' average row); per dataset: HM of the mean Base and mean Novel"}


def zeroshot(zs: dict[str, list[float]], methods: dict) -> dict | None:
    """Zero-shot Base/Novel/HM on the section's datasets evaluated on both halves (``zs``: eval key ->
    values, one per zero-shot run; ``methods``: the section's series entries)."""
    names = dataset_order({d for e in methods.values() for d in e["datasets"]})
    pairs = {}
    for d in names:
        base, new = zs.get(f"{d}-base"), zs.get(f"{d}-new")
        if base and new:
            pairs[d] = {i + 1: (b, n) for i, (b, n) in enumerate(zip(base, new))}
    if not pairs:
        return None
    return _table(pairs, {d: sorted(p) for d, p in pairs.items()})


# ----------------------------------------------------------------------------------------------
# Document
# ----------------------------------------------------------------------------------------------

def _blocks(sec: dict) -> list[tuple[str, dict, str]]:
    """(key, entry, title) of our series, then the zero-shot one."""
    out = [(m, e, e["label"]) for m, e in sec["methods"].items()]
    if sec.get("zeroshot"):
        out.append(("zeroshot", sec["zeroshot"], ZS_TITLE))
    return out


def _method_of(key: str, entry: dict) -> str:
    return display(entry.get("method", key))


def _avg_label(avg: dict) -> str:
    """'Average (11 datasets)', or how many of the 11 it covers and whether the requested grid is incomplete."""
    have, expected = len(avg["datasets"]), len(avg["expected_datasets"])
    label = f"{have} datasets" if have == len(DATASETS) else f"{have}/{len(DATASETS)} datasets"
    if have < expected:
        label += ", incomplete"
    return f"**Average ({label})**"


def _avg_note(avg: dict) -> str:
    """Qualifier of an average compared with the papers' 11-dataset average ('' when comparable)."""
    have = len(avg.get("datasets", []))
    if have < len(DATASETS):
        return f" ({have}/{len(DATASETS)} datasets)"
    return "" if avg.get("complete") else " (some datasets with fewer seeds)"


def _bnh(row: dict | None) -> str:
    return "/".join(num(row.get(k)) for k in ("base", "novel", "hm")) if row else DASH


def document(sec: dict, published: dict, figure: str | None) -> list[Block]:
    out: list[Block] = [
        Heading(2, TITLE),
        Text("Accuracy (%), mean ± std over seeds (population std). **HM (per seed)** = mean ± std of "
             "2BN/(B+N) computed per seed; **HM of means** = HM of the mean Base and mean Novel (what papers "
             "report). Average row as the papers: Base and Novel averaged over the benchmark datasets first, HM "
             "of those averages (its ± is the std over seeds of the per-seed dataset averages). "
             f"Published numbers (ViT-B/16): MMRL per dataset and the 11-dataset averages; {DASH} where none "
             "is published (sources at the end of this section)."),
    ]
    user_data = set()
    for key, e, title in _blocks(sec):
        shots = e.get("grid", {}).get("shots", [])
        shots_note = f" — {', '.join(map(str, shots))} shots" if key != "zeroshot" and shots else ""
        out.append(Heading(3, title + shots_note))
        method = _method_of(key, e) if key != "zeroshot" else display("zeroshot")
        rows = []
        for d, r in e["datasets"].items():
            if d not in DATASETS:
                user_data.add(d)
            seeds = f"{len(r['seeds'])}/{len(r['expected_seeds'])}" if key != "zeroshot" else DASH
            rows.append([d, seeds, mean_std(r["base"]), mean_std(r["novel"]), mean_std(r["hm"]),
                         "missing" if r["hm_of_means"] is None else num(r["hm_of_means"]),
                         _bnh(pub.b2n_dataset(published, method, d))])
        a = e["average"]
        p_avg = pub.b2n_average(published, method)
        if a.get("base"):
            rows.append([_avg_label(a), "complete" if a["complete"] else "partial", mean_std(a["base"]),
                         mean_std(a["novel"]), mean_std(a.get("hm")), f"**{num(a['hm_of_means'])}**", _bnh(p_avg)])
        elif a["expected_datasets"]:
            rows.append(["**Average**", "none", "missing", "missing", "missing", "missing", _bnh(p_avg)])
        out.append(Table(["Dataset", "Seeds", "Base", "Novel", "HM (per seed)", "HM of means", "Published B/N/HM"],
                         rows))
    if user_data:
        out.append(Text(f"{', '.join(f'`{d}`' for d in sorted(user_data))}: not one of the 11 benchmark datasets, "
                        "so not in the average and without published numbers."))
    if figure:
        out.append(Figure(figure, "base-to-novel accuracy per dataset"))
    # the averages beside every published method; not when no series ran a benchmark dataset (user data
    # only): ours would be all dashes, and the published averages are of datasets not run here
    if any(e["average"]["expected_datasets"] for _, e, _ in _blocks(sec)):
        out += [Heading(3, "11-dataset average vs published"),
                Text(f"Ours: Base and Novel averaged over the datasets, HM of the averages. {DASH}: not run here / "
                     "not published.")]
        rows, shown = [], set()
        for key, e, title in _blocks(sec):
            a = e["average"]
            if not a["expected_datasets"]:
                continue
            method = _method_of(key, e) if key != "zeroshot" else display("zeroshot")
            p = pub.b2n_average(published, method)
            shown.add(method)
            ours = [num(a["base"]["mean"] if a.get("base") else None),
                    num(a["novel"]["mean"] if a.get("novel") else None), num(a.get("hm_of_means"))]
            delta = num(a["hm_of_means"] - p["hm"]) if p and a.get("hm_of_means") is not None else DASH
            theirs = [num(p[k]) for k in ("base", "novel", "hm")] if p else [DASH] * 3
            rows.append([title + _avg_note(a), *ours, *theirs, delta])
        for p in pub.b2n_average_rows(published):
            if p["method"] not in shown:
                rows.append([p["method"], DASH, DASH, DASH, num(p["base"]), num(p["novel"]), num(p["hm"]), DASH])
        out.append(Table(["Method", "Base", "Novel", "HM", "Published Base", "Published Novel", "Published HM",
                          "Δ HM"], rows))
    srcs = {pub.source_of(published, r.get("source")) for r in pub.b2n_average_rows(published) if r.get("source")}
    per_ds = pub.b2n_dataset_source(published, "MMRL")
    notes = [f"averages: {'; '.join(sorted(srcs))}"] if srcs else []
    if per_ds:
        notes.append(f"MMRL per dataset: {pub.source_of(published, per_ds)}")
    out.append(Text("Published sources — " + "; ".join(notes) + ". No per-dataset numbers are published here for "
                    "MMRL++ or the other methods." if notes else "No published numbers."))
    return out


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------

def _g(s: dict | None, key: str) -> float | None:
    return None if not s else s.get(key)


def to_csv(sec: dict, published: dict) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(["method", "dataset", "seeds_done", "seeds_expected", "base_mean", "base_std", "novel_mean",
                "novel_std", "hm_per_seed_mean", "hm_per_seed_std", "hm_of_means", "published_base",
                "published_novel", "published_hm"])
    for key, e, _ in _blocks(sec):
        method = _method_of(key, e) if key != "zeroshot" else display("zeroshot")
        for d, r in e["datasets"].items():
            p = pub.b2n_dataset(published, method, d) or {}
            w.writerow([key, d, len(r["seeds"]), len(r["expected_seeds"]), csv_num(_g(r["base"], "mean")),
                        csv_num(_g(r["base"], "std")), csv_num(_g(r["novel"], "mean")), csv_num(_g(r["novel"], "std")),
                        csv_num(_g(r["hm"], "mean")), csv_num(_g(r["hm"], "std")), csv_num(r["hm_of_means"]),
                        csv_num(p.get("base")), csv_num(p.get("novel")), csv_num(p.get("hm"))])
        a = e["average"]
        if not a["expected_datasets"]:
            continue
        p = pub.b2n_average(published, method) or {}
        w.writerow([key, "Average", a["base"]["n"] if a.get("base") else 0, "", csv_num(_g(a.get("base"), "mean")),
                    csv_num(_g(a.get("base"), "std")), csv_num(_g(a.get("novel"), "mean")), csv_num(_g(a.get("novel"), "std")),
                    csv_num(_g(a.get("hm"), "mean")), csv_num(_g(a.get("hm"), "std")), csv_num(a.get("hm_of_means")),
                    csv_num(p.get("base")), csv_num(p.get("novel")), csv_num(p.get("hm"))])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------

def plot(sec: dict, published: dict, path: Path, colors: dict[str, str]) -> bool:
    """Three panels (Base, Novel, HM) of bars per dataset and the average: our series, our zero-shot,
    and the published numbers of the same methods. False (nothing written) when there is nothing to draw."""
    blocks = _blocks(sec)
    names = dataset_order({d for _, e, _ in blocks for d in e["datasets"]})
    # an average of one dataset is that dataset: the average is drawn when it covers two or more
    n_avg = max(len(e["average"]["datasets"]) for _, e, _ in blocks)
    has_avg = n_avg >= 2
    avg_cat = "Average" if n_avg == len(DATASETS) else f"Average ({n_avg}/{len(DATASETS)})"
    cats = names + ([avg_cat] if has_avg else [])
    panels: dict[str, list[BarSeries]] = {"Base": [], "Novel": [], "HM": []}

    def add(label: str, color: str, rows: dict, avg: dict | None, hatch: str | None = None, *, ours: bool) -> None:
        for metric, field in (("Base", "base"), ("Novel", "novel"), ("HM", "hm")):
            vals, errs = [], []
            for c in cats:
                r = avg if c == avg_cat else rows.get(c)
                if not r:
                    vals.append(None), errs.append(None)
                elif ours and field == "hm":  # the papers' HM: of the mean Base and mean Novel
                    vals.append(r.get("hm_of_means")), errs.append(None)
                elif ours:
                    s = r.get(field)
                    vals.append(s["mean"] if s else None), errs.append(s.get("std") if s else None)
                else:
                    vals.append(r.get(field)), errs.append(None)
            panels[metric].append(BarSeries(label, vals, color, errs, hatch))

    methods = []
    for i, (key, e, title) in enumerate(blocks):
        avg = e["average"] if len(e["average"]["datasets"]) >= 2 else None
        if key == "zeroshot":
            add(title, ZEROSHOT, e["datasets"], avg, ours=True)
        else:
            add(title, colors.get(title, ours_color(i)), e["datasets"], avg, ours=True)
            if _method_of(key, e) not in methods:
                methods.append(_method_of(key, e))
    if sec.get("zeroshot"):
        methods.append(display("zeroshot"))
    j = 0
    for m in methods:
        rows = {d: pub.b2n_dataset(published, m, d) for d in names}
        rows = {d: r for d, r in rows.items() if r}
        avg = pub.b2n_average(published, m) if has_avg else None
        if rows or avg:
            color = ZEROSHOT_PUBLISHED if m == display("zeroshot") else published_color(j)
            j += m != display("zeroshot")
            add(f"{m} (published)", color, rows, avg, "//", ours=False)
    if not any(s.any for s in panels["Base"][:len(blocks)]):
        return False
    per_cat = 0.22 * max(1, sum(s.any for s in panels["Base"])) + 0.35
    fig = new_figure(max(7.0, len(cats) * per_cat + 3.0), 8.4)
    axes = fig.subplots(3, 1, sharex=True)
    for ax, (metric, series) in zip(axes, panels.items()):
        grouped_bars(ax, cats, series, title=f"{metric} accuracy", legend=ax is axes[0],
                     ylabel=f"{metric} accuracy (%)")
    fig.suptitle("Base-to-novel: accuracy per dataset\n(bars: mean over seeds, whiskers: ± std; "
                 "HM: of the mean Base and mean Novel)", fontsize=10)
    save_png(fig, path)
    return True
