"""`mmrl report`: tables (Markdown, CSV, JSON) and plots from the run folders of a (partial) sweep.

Reads `OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>/` (run.json and
eval/<dataset>-<subsample>.json), the grid files `grid-*.json` that `mmrl
reproduce` leaves (what is expected; without them the protocol's default grid),
and zero-shot results under `OUTPUT/zeroshot/<dataset>/**/eval/*.json` (shown
as a "CLIP zero-shot" row). Writes into OUT (default OUTPUT/report/):
report.md, report.json, <protocol>.csv, runs.csv and PNG plots.

Statistics: mean over seeds and the population standard deviation (numpy's
default, as CoOp's parse_test_res.py). Base-to-novel HM is given two ways:
mean ± std of the per-seed HM 2BN/(B+N), and the HM of the mean Base and mean
Novel (what papers report). 11-dataset averages as the papers: Base and Novel
averaged over datasets first, HM of those averages.
"""
from __future__ import annotations

import csv
import io
import math
import os
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from mmrl.engine import sweep
from mmrl.engine.lock import read_holder, run_lock_path
from mmrl.engine.sweep import ALL_DATASETS, CROSS_SOURCE, CROSS_TARGETS, DATASETS, VARIANTS

DISPLAY = {"mmrl": "MMRL", "mmrl++": "MMRL++", "zeroshot": "CLIP zero-shot"}
ZS = "zeroshot"  # pseudo-method of the zero-shot results
DASH = "—"


def display(method: str) -> str:
    return DISPLAY.get(method, method)


def load_published() -> dict:
    """The published numbers (mmrl/presets/published.yaml)."""
    text = resources.files("mmrl").joinpath("presets/published.yaml").read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"mmrl/presets/published.yaml: expected a mapping at the top, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Mean and population std of `values` (one per seed)."""
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / len(self.values))

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def stat(values: Iterable[float]) -> Stat | None:
    v = [float(x) for x in values]
    return Stat(v) if v else None


def hm(b: float, n: float) -> float:
    """Harmonic mean 2BN/(B+N) (0 when both are 0)."""
    return 2 * b * n / (b + n) if b + n > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Scanning the run folders
# ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One expected (or found) run and its state.

    state: "finished", "running" (run.json not finished, a claim exists),
    "unfinished" (run.json not finished, no claim), "failed", "claimed" (no
    run.json yet, a claim exists) or "missing" (nothing).
    acc: "<Dataset>-<subsample>" -> accuracy, only for finished runs.
    """
    protocol: str
    method: str
    dataset: str
    shots: int
    seed: int
    run_dir: Path
    state: str
    acc: dict[str, float] = field(default_factory=dict)
    detail: str = ""


@dataclass
class Grid:
    """What a protocol/method folder is expected to hold (grid files union what is on disk)."""
    datasets: list[str]
    shots: list[int]
    seeds: list[int]
    targets: list[str]


def _read_evals(run_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    ev = run_dir / "eval"
    if not ev.is_dir():
        return out
    for p in sorted(ev.glob("*.json")):
        data = sweep.read_json(p)
        if data is None or not isinstance(data.get("accuracy"), (int, float)):
            continue
        out[p.stem] = float(data["accuracy"])
    return out


def _int_suffix(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    try:
        return int(name[len(prefix):])
    except ValueError:
        return None


def _grid(protocol: str, mdir: Path) -> Grid:
    datasets: set[str] = set()
    shots: set[int] = set()
    seeds: set[int] = set()
    targets: set[str] = set()
    specs = [sweep.read_json(p) for p in sorted(mdir.glob("grid-*.json"))]
    specs = [s for s in specs if s]
    for s in specs:
        datasets.update(s.get("datasets", []))
        shots.update(int(k) for k in s.get("shots", []))
        seeds.update(int(k) for k in s.get("seeds", []))
        targets.update(s.get("targets", []))
    if not specs:  # no grid file: the protocol's default grid is what is expected
        datasets.update([CROSS_SOURCE] if protocol == "crossdataset" else DATASETS)
        shots.update(sweep.DEFAULT_SHOTS[protocol])
        seeds.update(sweep.DEFAULT_SEEDS)
        if protocol == "crossdataset":
            targets.update(CROSS_TARGETS)
    for ddir in (d for d in mdir.iterdir() if d.is_dir()) if mdir.is_dir() else ():
        if ddir.name not in ALL_DATASETS:
            continue
        for kdir in ddir.iterdir():
            k = _int_suffix(kdir.name, "shots_")
            if k is None or not kdir.is_dir():
                continue
            for sdir in kdir.iterdir():
                s = _int_suffix(sdir.name, "seed_")
                if s is not None and sdir.is_dir() and (sdir / "run.json").exists():
                    datasets.add(ddir.name)
                    shots.add(k)
                    seeds.add(s)
    order = {d: i for i, d in enumerate(ALL_DATASETS)}
    return Grid(sorted(datasets, key=lambda d: order.get(d, 99)), sorted(shots), sorted(seeds),
                sorted(targets, key=lambda d: order.get(d, 99)))


def _run(protocol: str, method: str, dataset: str, shots: int, seed: int, output: Path) -> Run:
    rd = sweep.run_dir_for(output, protocol, method, dataset, shots, seed)
    run = sweep.read_json(rd / "run.json")
    # a sweep's claim beside the folder, else the writer lock of a process training it by hand
    holder = sweep.read_claim_holder(rd) or read_holder(run_lock_path(rd))
    claim = f"claimed by {holder.get('host', '?')} pid {holder.get('pid', '?')} since {holder.get('time_iso', '?')}" \
        if holder else ""
    if run is None:
        return Run(protocol, method, dataset, shots, seed, rd, "claimed" if holder else "missing", detail=claim)
    status = run.get("status")
    if status == "finished":
        return Run(protocol, method, dataset, shots, seed, rd, "finished", _read_evals(rd))
    if status == "failed":
        return Run(protocol, method, dataset, shots, seed, rd, "failed", detail=claim)
    if holder:
        return Run(protocol, method, dataset, shots, seed, rd, "running", detail=claim)
    return Run(protocol, method, dataset, shots, seed, rd, "unfinished",
               detail=f"status {status!r} and no claim (interrupted? re-run to resume)")


def scan_method(output: Path, protocol: str, method: str) -> tuple[Grid, list[Run]]:
    grid = _grid(protocol, output / protocol / method)
    runs = [_run(protocol, method, d, k, s, output) for d in grid.datasets for k in grid.shots for s in grid.seeds]
    if protocol == "crossdataset":  # targets evaluated but not in the grid files are shown too
        extra = {key.rsplit("-", 1)[0] for r in runs for key in r.acc if key.endswith("-all")}
        grid.targets = sorted(set(grid.targets) | (extra & set(CROSS_TARGETS)), key=ALL_DATASETS.index)
    return grid, runs


def scan_zeroshot(output: Path) -> dict[str, list[float]]:
    """Zero-shot accuracies: "<Dataset>-<subsample>" -> values (several when several files, e.g. seeds)."""
    out: dict[str, list[float]] = {}
    zdir = output / "zeroshot"
    if not zdir.is_dir():
        return out
    for p in sorted(zdir.glob("**/eval/*.json")):
        data = sweep.read_json(p)
        if data is None or not isinstance(data.get("accuracy"), (int, float)):
            continue
        out.setdefault(p.stem, []).append(float(data["accuracy"]))
    return out


def _methods(output: Path, protocol: str) -> list[str]:
    pdir = output / protocol
    if not pdir.is_dir():
        return []
    found = [d.name for d in pdir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    known = [m for m in sweep.METHODS if m in found]
    return known + sorted(set(found) - set(known))


# ----------------------------------------------------------------------------------------------
# Tables as data
# ----------------------------------------------------------------------------------------------

def _missing_entries(runs: Sequence[Run], output: Path, targets: Sequence[str] = ()) -> list[dict]:
    out = []
    for r in runs:
        rel = str(r.run_dir.relative_to(output))
        if r.state != "finished":
            e = {"run": rel, "state": r.state, "detail": r.detail}
            if (r.run_dir / "stdout.log").exists():
                e["log"] = str(r.run_dir / "stdout.log")
            out.append(e)
        elif targets:
            lacking = [t for t in targets if f"{t}-all" not in r.acc]
            if lacking:
                out.append({"run": rel, "state": "missing evals", "detail": ", ".join(lacking)})
    return out


def _sd(s: Stat | None) -> dict | None:
    return s.as_dict() if s else None


def base2novel_method(runs: Sequence[Run], grid: Grid) -> dict:
    """Per dataset Base/Novel/HM over seeds, and the 11-dataset average as the papers compute it."""
    datasets: dict[str, dict] = {}
    per_seed: dict[int, dict[str, tuple[float, float]]] = {}
    for d in grid.datasets:
        pairs = {}
        for r in runs:
            if r.dataset == d and r.state == "finished" and f"{d}-base" in r.acc and f"{d}-new" in r.acc:
                pairs[r.seed] = (r.acc[f"{d}-base"], r.acc[f"{d}-new"])
                per_seed.setdefault(r.seed, {})[d] = pairs[r.seed]
        b, n = stat(p[0] for p in pairs.values()), stat(p[1] for p in pairs.values())
        datasets[d] = {
            "seeds": sorted(pairs), "expected_seeds": list(grid.seeds),
            "base": _sd(b), "novel": _sd(n), "hm": _sd(stat(hm(*p) for p in pairs.values())),
            "hm_of_means": hm(b.mean, n.mean) if b and n else None,
        }
    have = [d for d in grid.datasets if datasets[d]["base"]]
    avg: dict = {"datasets": have, "expected_datasets": list(grid.datasets),
                 "complete": bool(have) and len(have) == len(grid.datasets)
                 and all(len(datasets[d]["seeds"]) == len(grid.seeds) for d in have)}
    if have:
        ab = sum(datasets[d]["base"]["mean"] for d in have) / len(have)
        an = sum(datasets[d]["novel"]["mean"] for d in have) / len(have)
        # per seed: average over the datasets (only seeds that every averaged dataset has)
        full = [s for s in sorted(per_seed) if all(d in per_seed[s] for d in have)]
        sb = stat(sum(per_seed[s][d][0] for d in have) / len(have) for s in full)
        sn = stat(sum(per_seed[s][d][1] for d in have) / len(have) for s in full)
        avg.update(base={"mean": ab, "std": sb.std if sb else None, "n": len(full)},
                   novel={"mean": an, "std": sn.std if sn else None, "n": len(full)},
                   hm_of_means=hm(ab, an),
                   hm=_sd(stat(hm(b_, n_) for b_, n_ in zip(sb.values, sn.values))) if sb and sn else None)
    return {"datasets": datasets, "average": avg}


def fewshot_method(runs: Sequence[Run], grid: Grid) -> dict:
    """Accuracy per dataset and shot count over seeds; average over datasets per shot count."""
    table: dict[str, dict[str, dict]] = {}
    for d in grid.datasets:
        table[d] = {}
        for k in grid.shots:
            vals = {r.seed: r.acc[f"{d}-all"] for r in runs
                    if r.dataset == d and r.shots == k and r.state == "finished" and f"{d}-all" in r.acc}
            table[d][str(k)] = {"seeds": sorted(vals), "expected_seeds": list(grid.seeds),
                                "acc": _sd(stat(vals.values()))}
    average = {}
    for k in grid.shots:
        have = [d for d in grid.datasets if table[d][str(k)]["acc"]]
        average[str(k)] = {
            "datasets": have, "expected_datasets": list(grid.datasets),
            "complete": bool(have) and len(have) == len(grid.datasets)
            and all(len(table[d][str(k)]["seeds"]) == len(grid.seeds) for d in have),
            "acc": sum(table[d][str(k)]["acc"]["mean"] for d in have) / len(have) if have else None,
        }
    return {"datasets": table, "average": average}


def crossdataset_method(runs: Sequence[Run], grid: Grid, shots: int) -> dict:
    """Accuracy on the source and every target over seeds; cross-dataset and DG averages of the means."""
    cols = [CROSS_SOURCE] + [t for t in grid.targets]
    table = {}
    for t in cols:
        vals = {r.seed: r.acc[f"{t}-all"] for r in runs
                if r.shots == shots and r.state == "finished" and f"{t}-all" in r.acc}
        table[t] = {"seeds": sorted(vals), "expected_seeds": list(grid.seeds), "acc": _sd(stat(vals.values()))}
    averages = {}
    for name, group in (("crossdataset", [t for t in grid.targets if t in DATASETS]),
                        ("dg", [t for t in grid.targets if t in VARIANTS])):
        have = [t for t in group if table[t]["acc"]]
        averages[name] = {"targets": have, "expected_targets": group,
                          "complete": bool(have) and len(have) == len(group),
                          "acc": sum(table[t]["acc"]["mean"] for t in have) / len(have) if have else None}
    return {"targets": table, "average": averages}


def _zs_runs(zs: dict[str, list[float]], protocol: str, output: Path) -> tuple[Grid, list[Run]]:
    """The zero-shot results as pseudo-runs (one per value, seeds numbered 1..n) for the table code."""
    datasets = sorted({k.rsplit("-", 1)[0] for k in zs} & set(ALL_DATASETS), key=ALL_DATASETS.index)
    runs = []
    n = max((len(v) for v in zs.values()), default=0)
    for d in datasets:
        for i in range(n):
            acc = {k: v[i] for k, v in zs.items() if k.rsplit("-", 1)[0] == d and i < len(v)}
            runs.append(Run(protocol, ZS, d, 0, i + 1, output / "zeroshot" / d, "finished", acc))
    seeds = list(range(1, n + 1))
    if protocol == "crossdataset":
        targets = [t for t in CROSS_TARGETS if f"{t}-all" in zs]
        runs = [Run(protocol, ZS, CROSS_SOURCE, 0, i + 1, output / "zeroshot", "finished",
                    {k: v[i] for k, v in zs.items() if i < len(v)}) for i in range(n)]
        return Grid([CROSS_SOURCE], [0], seeds, targets), runs
    if protocol == "base2novel":
        present = [d for d in datasets if d in DATASETS and f"{d}-base" in zs and f"{d}-new" in zs]
    else:
        present = [d for d in datasets if d in DATASETS and f"{d}-all" in zs]
    # all 11 rows (missing ones marked) so an average over fewer datasets is labelled as such
    return Grid(list(DATASETS) if present else [], [0], seeds, []), runs


def collect(output: Path | str, protocols: Sequence[str] | None = None) -> dict:
    """Everything the report shows, as JSON-ready data (this is report.json)."""
    output = Path(output)
    published = load_published()
    zs = scan_zeroshot(output)
    result: dict = {"version": 1, "output": str(output), "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "std": "population standard deviation over seeds (numpy default, as CoOp's parse_test_res.py)",
                    "protocols": {}}
    for protocol in protocols or sweep.PROTOCOLS:
        methods = _methods(output, protocol)
        if not methods:
            continue
        section: dict = {"methods": {}, "missing": [], "runs": []}
        for m in methods:
            grid, runs = scan_method(output, protocol, m)
            entry: dict = {"grid": grid.__dict__, "n_finished": sum(r.state == "finished" for r in runs),
                           "n_expected": len(runs)}
            if protocol == "base2novel":
                entry.update(base2novel_method(runs, grid))
            elif protocol == "fewshot":
                entry.update(fewshot_method(runs, grid))
            else:
                entry["shots"] = {str(k): crossdataset_method(runs, grid, k) for k in grid.shots}
            section["methods"][m] = entry
            section["missing"] += _missing_entries(runs, output, grid.targets if protocol == "crossdataset" else ())
            section["runs"] += [{"method": r.method, "dataset": r.dataset, "shots": r.shots, "seed": r.seed,
                                 "state": r.state, "run_dir": str(r.run_dir), "acc": r.acc} for r in runs]
        zgrid, zruns = _zs_runs(zs, protocol, output)
        if zgrid.datasets and zruns:
            if protocol == "base2novel":
                section["zeroshot"] = base2novel_method(zruns, zgrid)
            elif protocol == "fewshot":
                section["zeroshot"] = {d: _sd(stat(zs[f"{d}-all"])) for d in zgrid.datasets if f"{d}-all" in zs}
            elif zgrid.targets:
                section["zeroshot"] = crossdataset_method(zruns, zgrid, 0)
        section["published"] = published.get(protocol) or {}
        result["protocols"][protocol] = section
    return result


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------

def _f(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _ms(s: dict | None, expected: int | None = None, show_n: bool = False) -> str:
    """'mean ± std', with '(n/expected)' when fewer seeds than expected; 'missing' when none."""
    if not s:
        return "missing"
    txt = f"{s['mean']:.2f}" if s.get("std") is None or s.get("n", 0) < 2 else f"{s['mean']:.2f} ± {s['std']:.2f}"
    if show_n and expected is not None and s.get("n", 0) < expected:
        txt += f" ({s['n']}/{expected})"
    return txt


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _published_avg(published: dict, method_display: str) -> dict | None:
    for row in (published.get("average") or []):
        if row.get("method") == method_display:
            return row
    return None


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


def _md_base2novel(sec: dict) -> list[str]:
    pub = sec.get("published") or {}
    out = ["## Base-to-novel generalisation", "",
           "Accuracy (%), mean ± std over seeds (population std). **HM (per seed)** = mean ± std of "
           "2BN/(B+N) computed per seed; **HM of means** = HM of the mean Base and mean Novel (what papers "
           "report). Average row as the papers: Base and Novel averaged over the datasets first, HM of those "
           "averages (its ± is the std over seeds of the per-seed dataset averages). "
           f"Published numbers (ViT-B/16) as quoted in protocols.md; {DASH} where none.", ""]
    blocks = [(m, e, display(m)) for m, e in sec["methods"].items()]
    if sec.get("zeroshot"):
        blocks.append((ZS, sec["zeroshot"], "CLIP zero-shot (ours)"))
    for m, e, title in blocks:
        shots = e.get("grid", {}).get("shots", [16])
        out += [f"### {title}" + (f" — {', '.join(map(str, shots))} shots" if m != ZS else ""), ""]
        rows = []
        p_avg = _published_avg(pub, display(m))
        for d, r in e["datasets"].items():
            n_exp = len(r["expected_seeds"])
            seeds = f"{len(r['seeds'])}/{n_exp}" if m != ZS else "—"
            pd = ((pub.get("datasets") or {}).get(display(m)) or {}).get(d)
            rows.append([d, seeds, _ms(r["base"]), _ms(r["novel"]), _ms(r["hm"]),
                         "missing" if r["hm_of_means"] is None else _f(r["hm_of_means"]),
                         "/".join(_f(pd.get(k)) for k in ("base", "novel", "hm")) if pd else DASH])
        a = e["average"]
        if a.get("base"):
            rows.append([_avg_label(a), "complete" if a["complete"] else "partial",
                         _ms(a["base"]), _ms(a["novel"]), _ms(a.get("hm")), f"**{_f(a['hm_of_means'])}**",
                         "/".join(_f(p_avg[k]) for k in ("base", "novel", "hm")) if p_avg else DASH])
        else:
            rows.append(["**Average**", "none", "missing", "missing", "missing", "missing",
                         "/".join(_f(p_avg[k]) for k in ("base", "novel", "hm")) if p_avg else DASH])
        out += [_md_table(["Dataset", "Seeds", "Base", "Novel", "HM (per seed)", "HM of means",
                           "Published B/N/HM"], rows), ""]
        if m != ZS:
            out += [f"![{title} base-to-novel](base2novel_{m}.png)", ""]
    # comparison of the averages with every published method
    out += ["### 11-dataset average vs published", "",
            "Ours: Base and Novel averaged over the datasets, HM of the averages. "
            f"{DASH}: not run here / not published.", ""]
    rows, shown = [], set()
    for m, e, title in blocks:
        a = e["average"]
        p = _published_avg(pub, display(m))
        shown.add(display(m))
        ours = [_f(a.get("base", {}).get("mean") if a.get("base") else None),
                _f(a.get("novel", {}).get("mean") if a.get("novel") else None), _f(a.get("hm_of_means"))]
        note = _avg_note(a)
        pv = [_f(p[k]) if p else DASH for k in ("base", "novel", "hm")]
        delta = _f(a["hm_of_means"] - p["hm"]) if p and a.get("hm_of_means") is not None else DASH
        rows.append([title + note, *ours, *pv, delta])
    for p in pub.get("average") or []:
        if p["method"] not in shown:
            rows.append([p["method"], DASH, DASH, DASH, _f(p["base"]), _f(p["novel"]), _f(p["hm"]), DASH])
    out += [_md_table(["Method", "Base", "Novel", "HM", "Published Base", "Published Novel", "Published HM",
                       "Δ HM"], rows), ""]
    return out


def _md_fewshot(sec: dict) -> list[str]:
    out = ["## Few-shot classification", "",
           "Accuracy (%) on the all-class test set, mean ± std over seeds (population std); "
           "'(n/m)': only n of m seeds finished. Average: mean over the datasets of the per-dataset means. "
           f"Published few-shot numbers: {DASH} (none in protocols.md).", ""]
    zs = sec.get("zeroshot") or {}
    for m, e in sec["methods"].items():
        shots = e["grid"]["shots"]
        out += [f"### {display(m)}", ""]
        header = ["Dataset"] + [f"{k} shot{'s' if k > 1 else ''}" for k in shots] + (["CLIP zero-shot"] if zs else [])
        rows = []
        for d, per in e["datasets"].items():
            n_exp = len(e["grid"]["seeds"])
            rows.append([d] + [_ms(per[str(k)]["acc"], n_exp, True) for k in shots] +
                        ([_f(zs[d]["mean"]) if zs.get(d) else DASH] if zs else []))
        avg_row = ["**Average**"]
        for k in shots:
            a = e["average"][str(k)]
            if a["acc"] is None:
                avg_row.append("missing")
            else:
                avg_row.append(f"**{_f(a['acc'])}**" + ("" if a["complete"] else
                               f" ({len(a['datasets'])}/{len(a['expected_datasets'])} datasets, partial)"))
        if zs:
            vals = [zs[d]["mean"] for d in e["datasets"] if zs.get(d)]
            avg_row.append(_f(sum(vals) / len(vals)) if vals else DASH)
        rows.append(avg_row)
        out += [_md_table(header, rows), ""]
    out += ["![accuracy vs shots](fewshot.png)", ""]
    return out


def _md_crossdataset(sec: dict) -> list[str]:
    out = ["## Cross-dataset transfer and domain generalisation", "",
           "Trained on ImageNet (all classes), evaluated as is on the other datasets (cross-dataset) and on "
           "the ImageNet variants (domain generalisation). Accuracy (%), mean ± std over seeds (population "
           "std); '(n/m)': only n of m seeds. Averages: mean over targets of the per-target means. "
           f"Published cross-dataset numbers: {DASH} (none in protocols.md).", ""]
    rows_by_shots: dict[str, list[tuple[str, dict, int]]] = {}
    for m, e in sec["methods"].items():
        for k, t in e["shots"].items():
            rows_by_shots.setdefault(k, []).append((display(m), t, len(e["grid"]["seeds"])))
    zs = sec.get("zeroshot")
    for k, entries in rows_by_shots.items():
        if zs:
            entries = entries + [("CLIP zero-shot (ours)", zs, 1)]
        cross = [t for t in CROSS_TARGETS if t in DATASETS and any(t in e[1]["targets"] for e in entries)]
        dg = [t for t in VARIANTS if any(t in e[1]["targets"] for e in entries)]
        for title, cols, avg_key in (("Cross-dataset", cross, "crossdataset"), ("Domain generalisation", dg, "dg")):
            if not cols:
                continue
            rows = []
            for name, t, n_exp in entries:
                cell = lambda c: _ms(t["targets"][c]["acc"], n_exp, True) if c in t["targets"] else DASH  # noqa: E731
                a = t["average"][avg_key]
                full = len(DATASETS) - 1 if avg_key == "crossdataset" else len(VARIANTS)
                avg = DASH if a["acc"] is None else _f(a["acc"]) + (
                    f" ({len(a['targets'])}/{full} targets)" if len(a["targets"]) < full else "")
                rows.append([name, cell(CROSS_SOURCE), *[cell(c) for c in cols], f"**{avg}**" if avg != DASH else avg])
            out += [f"### {title} ({k} shots on ImageNet)", "",
                    _md_table(["Method", "ImageNet (source)", *cols, "Average"], rows), ""]
    out += ["![cross-dataset](crossdataset.png)", ""]
    return out


def to_markdown(data: dict) -> str:
    out = [f"# MMRL reproduction report", "", f"Output: `{data['output']}` — generated {data['generated']}.", ""]
    if not data["protocols"]:
        out += ["No runs found.", ""]
    for protocol, sec in data["protocols"].items():
        out += {"base2novel": _md_base2novel, "fewshot": _md_fewshot,
                "crossdataset": _md_crossdataset}[protocol](sec)
        n_fin = sum(e["n_finished"] for e in sec["methods"].values())
        n_exp = sum(e["n_expected"] for e in sec["methods"].values())
        out += [f"**Runs: {n_fin}/{n_exp} finished.**", ""]
        if sec["missing"]:
            out += [f"Missing or unfinished ({len(sec['missing'])}):", ""]
            for e in sec["missing"]:
                extra = f" — {e['detail']}" if e.get("detail") else ""
                log = f" (log: `{e['log']}`)" if e.get("log") else ""
                out.append(f"- `{e['run']}`: {e['state']}{extra}{log}")
            out.append("")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------

def _num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _g(s: dict | None, key: str) -> float | None:
    return None if not s else s.get(key)


def to_csv(protocol: str, sec: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if protocol == "base2novel":
        w.writerow(["method", "dataset", "seeds_done", "seeds_expected", "base_mean", "base_std", "novel_mean",
                    "novel_std", "hm_per_seed_mean", "hm_per_seed_std", "hm_of_means", "published_base",
                    "published_novel", "published_hm"])
        blocks = list(sec["methods"].items()) + ([(ZS, sec["zeroshot"])] if sec.get("zeroshot") else [])
        for m, e in blocks:
            for d, r in e["datasets"].items():
                w.writerow([m, d, len(r["seeds"]), len(r["expected_seeds"]), _num(_g(r["base"], "mean")),
                            _num(_g(r["base"], "std")), _num(_g(r["novel"], "mean")), _num(_g(r["novel"], "std")),
                            _num(_g(r["hm"], "mean")), _num(_g(r["hm"], "std")), _num(r["hm_of_means"]), "", "", ""])
            a = e["average"]
            p = _published_avg(sec.get("published") or {}, display(m)) or {}
            w.writerow([m, "Average", a["base"]["n"] if a.get("base") else 0, "", _num(_g(a.get("base"), "mean")),
                        _num(_g(a.get("base"), "std")), _num(_g(a.get("novel"), "mean")),
                        _num(_g(a.get("novel"), "std")), _num(_g(a.get("hm"), "mean")), _num(_g(a.get("hm"), "std")),
                        _num(a.get("hm_of_means")), _num(p.get("base")), _num(p.get("novel")), _num(p.get("hm"))])
    elif protocol == "fewshot":
        w.writerow(["method", "dataset", "shots", "seeds_done", "seeds_expected", "acc_mean", "acc_std"])
        for m, e in sec["methods"].items():
            for d, per in e["datasets"].items():
                for k, r in per.items():
                    w.writerow([m, d, k, len(r["seeds"]), len(r["expected_seeds"]), _num(_g(r["acc"], "mean")),
                                _num(_g(r["acc"], "std"))])
            for k, a in e["average"].items():
                w.writerow([m, "Average", k, "", "", _num(a["acc"]), ""])
        for d, s in (sec.get("zeroshot") or {}).items():
            w.writerow([ZS, d, 0, s["n"] if s else 0, "", _num(_g(s, "mean")), _num(_g(s, "std"))])
    else:
        w.writerow(["method", "shots", "target", "group", "seeds_done", "seeds_expected", "acc_mean", "acc_std"])
        blocks = [(m, k, t) for m, e in sec["methods"].items() for k, t in e["shots"].items()]
        if sec.get("zeroshot"):
            blocks.append((ZS, "0", sec["zeroshot"]))
        for m, k, t in blocks:
            for c, r in t["targets"].items():
                group = "source" if c == CROSS_SOURCE else ("dg" if c in VARIANTS else "crossdataset")
                w.writerow([m, k, c, group, len(r["seeds"]), len(r["expected_seeds"]), _num(_g(r["acc"], "mean")),
                            _num(_g(r["acc"], "std"))])
            for g, a in t["average"].items():
                w.writerow([m, k, "Average", g, "", "", _num(a["acc"]), ""])
    return buf.getvalue()


def runs_csv(data: dict) -> str:
    """One row per (run, eval file): every number the tables are built from."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol", "method", "dataset", "shots", "seed", "state", "eval", "accuracy", "run_dir"])
    for protocol, sec in data["protocols"].items():
        for r in sec["runs"]:
            if not r["acc"]:
                w.writerow([protocol, r["method"], r["dataset"], r["shots"], r["seed"], r["state"], "", "", r["run_dir"]])
            for key, acc in sorted(r["acc"].items()):
                w.writerow([protocol, r["method"], r["dataset"], r["shots"], r["seed"], r["state"], key, repr(acc),
                            r["run_dir"]])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------

_PLOT_LOCK = threading.Lock()  # pyplot's state is global


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    os.replace(tmp, path)


def plot_base2novel(entry: dict, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = [], []
    for d, r in entry["datasets"].items():
        names.append(d)
        rows.append((r["base"], r["novel"], r["hm_of_means"]))
    a = entry["average"]
    if a.get("base"):
        names.append("Average")
        rows.append((a["base"], a["novel"], a["hm_of_means"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    width = 0.27
    for j, (label, color) in enumerate((("Base", "#4C72B0"), ("Novel", "#DD8452"), ("HM of means", "#55A868"))):
        xs, ys, es = [], [], []
        for i, row in enumerate(rows):
            v = row[j]
            if v is None:
                continue
            xs.append(i + (j - 1) * width)
            ys.append(v if j == 2 else v["mean"])
            es.append(0.0 if j == 2 or v.get("std") is None else v["std"])
        ax.bar(xs, ys, width, yerr=es, label=label, color=color, capsize=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: base-to-novel")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_fewshot(sec: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in DATASETS if any(d in e["datasets"] for e in sec["methods"].values())]
    panels = datasets + ["Average"]
    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    zs = sec.get("zeroshot") or {}
    for ax, d in zip(axes.flat, panels):
        for m, e in sec["methods"].items():
            xs, ys, es = [], [], []
            for k in e["grid"]["shots"]:
                if d == "Average":
                    v = e["average"][str(k)]["acc"]
                    s = None
                else:
                    a = e["datasets"].get(d, {}).get(str(k), {}).get("acc")
                    v, s = (a["mean"], a["std"]) if a else (None, None)
                if v is not None:
                    xs.append(k), ys.append(v), es.append(s or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=display(m))
        zv = [zs[x]["mean"] for x in datasets if zs.get(x)] if d == "Average" else \
            ([zs[d]["mean"]] if zs.get(d) else [])
        if zv and (d != "Average" or len(zv) == len(datasets)):
            ax.axhline(sum(zv) / len(zv), color="gray", ls="--", lw=1, label="CLIP zero-shot")
        ax.set_xscale("log", base=2)
        shots = sorted({k for e in sec["methods"].values() for k in e["grid"]["shots"]})
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set_title(d, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower right", fontsize=8)
    fig.supxlabel("shots per class")
    fig.supylabel("accuracy (%)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_crossdataset(sec: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for m, e in sec["methods"].items():
        for k, t in e["shots"].items():
            series.append((display(m) if len(e["shots"]) == 1 else f"{display(m)} {k}-shot", t))
    if sec.get("zeroshot"):
        series.append(("CLIP zero-shot", sec["zeroshot"]))
    cols = [CROSS_SOURCE] + [t for t in CROSS_TARGETS if any(t in s[1]["targets"] for s in series)]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(cols) + 2), 4))
    width = 0.8 / max(1, len(series))
    for j, (label, t) in enumerate(series):
        xs, ys, es = [], [], []
        for i, c in enumerate(cols):
            a = t["targets"].get(c, {}).get("acc")
            if a:
                xs.append(i - 0.4 + (j + 0.5) * width), ys.append(a["mean"]), es.append(a["std"])
        ax.bar(xs, ys, width, yerr=es, label=label, capsize=2)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=35, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("cross-dataset / domain generalisation (source: ImageNet)")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def write_report(output: Path | str, protocols: Sequence[str] | None = None, out: Path | str | None = None,
                 plots: bool = True) -> Path:
    """Write report.md, report.json, <protocol>.csv, runs.csv and the PNGs into `out` (default OUTPUT/report)."""
    output = Path(output)
    out = Path(out) if out is not None else output / "report"
    out.mkdir(parents=True, exist_ok=True)
    data = collect(output, protocols)
    sweep.write_json_atomic(out / "report.json", data)
    sweep.write_text_atomic(out / "report.md", to_markdown(data))
    sweep.write_text_atomic(out / "runs.csv", runs_csv(data))
    for protocol, sec in data["protocols"].items():
        sweep.write_text_atomic(out / f"{protocol}.csv", to_csv(protocol, sec))
    if plots:
        with _PLOT_LOCK:
            for protocol, sec in data["protocols"].items():
                if protocol == "base2novel":
                    for m, e in sec["methods"].items():
                        plot_base2novel(e, display(m), out / f"base2novel_{m}.png")
                elif protocol == "fewshot":
                    plot_fewshot(sec, out / "fewshot.png")
                else:
                    plot_crossdataset(sec, out / "crossdataset.png")
    return out
