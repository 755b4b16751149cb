"""Ablation studies (`mmrl reproduce --vary KEY=V1,V2 ...`): the papers' ablation tables and figures.

*Study*: the ablation runs of one protocol and one series (method, plus what would set its runs
apart anyway: a second backbone, official weights, ...) that vary the same set of keys. *Point*:
one combination of values (one run folder per dataset, shot count and seed; its own grid file and
expected cells, so missing runs show). Identity always comes from run.json / config.yaml / grid
files (:mod:`mmrl.report.scan`), never from folder names.

Per varied key, one row per value with the OTHER keys at their default: for each dataset the point
whose other values equal that dataset's defaults (the grid files' ``ablation.defaults``: the value a
key has without ``--vary``, which may differ per dataset); where no default is known or it is not in
the grid, the other key's first value (the caption says so). A row's numbers are the protocol's own
(:meth:`~mmrl.report.protocols.ProtocolModule.summarise` of the runs the row takes, condensed by
``ablation_row``): averaged over seeds and datasets exactly as the protocol tables. For each pair of
varied keys a heat map of the metric, the remaining keys at their default in the same way.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

from mmrl.report.document import (Block, Bullets, Figure, Heading, Table, Text, csv_num, csv_writer, esc,
                                  missing_blocks, num)
from mmrl.report.group import Series, dataset_order, missing_entries, series_of
from mmrl.report.protocols import PROTOCOLS, ProtocolModule
from mmrl.report.scan import Found, Run, ablation_point

TITLE = "Ablations"
CSV_FILE = "ablation.csv"
FIGURE_PREFIX = "ablation-"  # every ablation figure's file name starts so (old ones are deleted by it)
# The papers' symbols of the method's keys, for labels ("K (method.n_rep_tokens)")
SYMBOLS = {"method.n_rep_tokens": "K", "method.first_rep_block": "J", "method.rep_dim": "d_r",
           "method.alpha": "α", "method.reg_weight": "λ", "method.beta": "β"}
_UNKNOWN = object()  # no default known
# The y axis of a figure over a key spans at least this many accuracy points: a difference of 0.3
# points between values must not fill the height of the figure as if it were large.
MIN_Y_SPAN = 2.0


def key_label(key: str) -> str:
    """'K (method.n_rep_tokens)' for a key with a symbol in the papers, else the key."""
    return f"{SYMBOLS[key]} ({key})" if key in SYMBOLS else key


def key_short(key: str) -> str:
    """'K' for a key with a symbol in the papers, else the key."""
    return SYMBOLS.get(key, key)


def value_text(v: Any) -> str:
    """A value as written in tables and on axes: strings as they are, anything else as JSON (0.7, 4, [1, 2])."""
    return v if isinstance(v, str) else json.dumps(v)


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def sort_values(values: Sequence[Any]) -> list[Any]:
    """Distinct values in order: numbers by value first, then the rest by their JSON text."""
    distinct = {_canon(v): v for v in values}
    return sorted(distinct.values(), key=lambda v: (0, float(v), "") if isinstance(v, (int, float))
                  and not isinstance(v, bool) else (1, 0.0, _canon(v)))


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, '.', '+', '-'; the rest becomes '_')."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


@dataclass
class Study:
    """One ablation study: the points (grid point -> its series) of one protocol, series and key set."""
    protocol: str
    key: str                       # the series key (method + qualifiers), as in the protocol tables
    label: str
    method: str
    keys: list[str]                # the varied keys, sorted
    points: dict[tuple, Series] = field(default_factory=dict)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # dataset -> key -> default value
    notes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.protocol}/{self.key}/{'+'.join(self.keys)}"

    @property
    def values(self) -> dict[str, list[Any]]:
        return {k: sort_values([s.ablation[k] for s in self.points.values()]) for k in self.keys}

    @property
    def datasets(self) -> list[str]:
        return dataset_order({d for s in self.points.values() for d in s.datasets})

    @property
    def runs(self) -> list[Run]:
        return [r for s in self.points.values() for r in s.runs]


def _read_defaults(found: Found, study: Study) -> None:
    """The study's per-dataset defaults from the grid files of its sweep folders (keyed by the dataset as
    run.json names it, shown by its table name); a key whose grid files disagree is left unknown."""
    names = {r.dataset: r.name for r in study.runs if r.dataset and r.name}
    bases = sorted({(r.cell.base, r.cell.method) for r in study.runs if r.cell is not None})
    seen: dict[tuple[str, str], str] = {}
    conflicts: set[tuple[str, str]] = set()
    for base, method in bases:
        for spec in found.grids.get((base, study.protocol, method), []):
            a = spec.get("ablation")
            per = a.get("defaults") if isinstance(a, dict) else None
            for ds, kv in (per or {}).items() if isinstance(per, dict) else ():
                if not isinstance(kv, dict):
                    continue
                name = names.get(ds, ds)
                for k, v in kv.items():
                    if k not in study.keys:
                        continue
                    if (name, k) in seen and seen[(name, k)] != _canon(v):
                        conflicts.add((name, k))
                    seen[(name, k)] = _canon(v)
                    study.defaults.setdefault(name, {})[k] = v
    for name, k in sorted(conflicts):
        del study.defaults[name][k]
        study.notes.append(f"the grid files disagree on the default of {esc(k)} for {esc(name)}: taken as unknown")


def studies_of(found: Found, protocol: str, proto: ProtocolModule) -> list[Study]:
    """The ablation studies of ``protocol`` under the scanned folder."""
    out: dict[tuple, Study] = {}
    for s in series_of(found, protocol, proto.SHOTS_IN_TABLE, ablation=True):
        keys = sorted(s.ablation)
        st = out.setdefault((s.key, tuple(keys)), Study(protocol, s.key, s.label, s.method, keys))
        st.points[ablation_point(s.ablation)] = s
    for st in out.values():
        _read_defaults(found, st)
    return list(out.values())


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------

def _others(st: Study, dataset: str, fixed: Sequence[str], values: dict[str, list]) -> dict[str, tuple[Any, str]]:
    """For the keys not in ``fixed``: (value, why it is not the default -- '' when it is)."""
    out = {}
    for o in st.keys:
        if o in fixed:
            continue
        d = st.defaults.get(dataset, {}).get(o, _UNKNOWN)
        if d is _UNKNOWN:
            out[o] = (values[o][0], "no default known")
        elif _canon(d) not in {_canon(v) for v in values[o]}:
            out[o] = (values[o][0], f"its default {value_text(d)} is not in the grid")
        else:
            out[o] = (d, "")
    return out


def _done(proto: ProtocolModule, series: Series, run: Run) -> bool:
    """Finished, with every evaluation the protocol's table needs."""
    return run.state == "finished" and all(k in run.evals for k in proto.required_evals(series, run))


def row_of(proto: ProtocolModule, series: Series) -> dict:
    """``ablation_row`` of the series' protocol summary, with how many of its runs are done and the
    metric of each seed alone (``seed_values``: seed -> value, the same arithmetic on that seed's runs:
    the spread the figures draw, so that a difference smaller than the seeds' is seen as such)."""
    row = proto.ablation_row(proto.summarise(series))
    row["runs_done"] = sum(_done(proto, series, r) for r in series.runs)
    row["runs_expected"] = len(series.runs)
    row["seed_values"] = {}
    for seed in sorted({r.seed for r in series.runs if r.state == "finished"}):
        alone = dataclasses.replace(series, runs=[r for r in series.runs if r.seed == seed],
                                    expected={c: seeds & {seed} for c, seeds in series.expected.items()})
        value = proto.ablation_row(proto.summarise(alone))["value"]
        if value is not None:
            row["seed_values"][str(seed)] = value
    return row


def _cell(st: Study, proto: ProtocolModule, fixed: dict[str, Any], values: dict[str, list]) -> dict:
    """The row of the runs with ``fixed`` values and the other keys at each dataset's default: one
    series made of, per dataset, that dataset's runs of its point; summarised as the protocol does."""
    runs: list[Run] = []
    expected: dict[tuple[str, int], set[int]] = {}
    targets: set[str] = set()
    absent, fallback, others_used = [], {}, {}
    for d in st.datasets:
        others = _others(st, d, list(fixed), values)
        for o, (v, why) in others.items():
            if why:
                fallback.setdefault(f"{key_short(o)} = {value_text(v)} ({why})", []).append(d)
        point = {**{o: v for o, (v, _) in others.items()}, **fixed}
        others_used[d] = {o: v for o, (v, _) in others.items()}
        s = st.points.get(ablation_point(point))
        mine = [r for r in s.runs if r.name == d] if s is not None else []
        if not mine:
            absent.append(d)  # this point was not run on d (not in any grid)
            continue
        runs += mine
        expected.update({(dd, k): set(v) for (dd, k), v in s.expected.items() if dd == d})
        targets |= set(s.targets)
    view = Series(st.key, st.method, st.label, st.protocol, runs, expected, dataset_order(targets))
    row = row_of(proto, view)
    row.update(values=fixed, others=others_used, absent=absent, fallback=fallback)
    return row


def _default_of(st: Study, key: str, values: list) -> dict:
    """The default of ``key``: {"value": v or None (none, or it differs per dataset), "text": caption}."""
    per = {d: st.defaults.get(d, {}).get(key, _UNKNOWN) for d in st.datasets}
    known = {d: v for d, v in per.items() if v is not _UNKNOWN}
    distinct = {_canon(v): v for v in known.values()}
    unknown = [d for d, v in per.items() if v is _UNKNOWN]
    if not distinct:
        return {"value": None, "in_grid": False, "varies": False,
                "text": "No default known (no grid file of `mmrl reproduce --vary` records it)."}
    if len(distinct) > 1:
        parts = ", ".join(f"{esc(d)} {esc(value_text(v))}" for d, v in known.items())
        return {"value": None, "in_grid": False, "varies": True, "per_dataset": known,
                "text": f"The default of {esc(key_short(key))} differs per dataset ({parts}): no row is marked."}
    v = next(iter(distinct.values()))
    in_grid = _canon(v) in {_canon(x) for x in values}
    text = (f"**Bold**: the default, {esc(key_short(key))} = {esc(value_text(v))}." if in_grid
            else f"The default, {esc(key_short(key))} = {esc(value_text(v))}, is not in the grid.")
    if unknown:
        text += f" (No default recorded for {', '.join(map(esc, unknown))}.)"
    return {"value": v, "in_grid": in_grid, "varies": False, "text": text}


def _study_data(st: Study, proto: ProtocolModule, root: Path) -> dict:
    values = st.values
    order = {k: [_canon(v) for v in values[k]] for k in st.keys}
    points = []
    for s in sorted(st.points.values(), key=lambda s: [order[k].index(_canon(s.ablation[k])) for k in st.keys]):
        row = row_of(proto, s)
        row["values"] = dict(s.ablation)
        points.append(row)
    tables = []
    for key in st.keys:
        default = _default_of(st, key, values[key])
        rows = []
        for v in values[key]:
            row = _cell(st, proto, {key: v}, values)
            row["value_of_key"] = v
            row["is_default"] = default["value"] is not None and default["in_grid"] and _canon(v) == _canon(
                default["value"])
            rows.append(row)
        tables.append({"key": key, "default": default, "rows": rows})
    heatmaps = []
    for a, b in combinations(st.keys, 2):
        cells = [[_cell(st, proto, {a: va, b: vb}, values) for vb in values[b]] for va in values[a]]
        heatmaps.append({"keys": [a, b], "rows": values[a], "cols": values[b], "cells": cells})
    # the columns of every row, in first-seen order (a row without runs may lack some)
    all_rows = points + [r for t in tables for r in t["rows"]]
    columns = list(dict.fromkeys(c for r in all_rows for c in r["columns"]))
    metric = next((r["metric"] for r in all_rows), "")
    metric_label = next((r["metric_label"] for r in all_rows), metric)
    note = next((r["note"] for r in all_rows if r.get("note")), "")
    missing = []
    for s in st.points.values():
        missing += missing_entries(s, root, proto.required_evals)
    return {"id": st.id, "protocol": st.protocol, "series": st.key, "label": st.label, "method": st.method,
            "keys": st.keys, "values": values, "datasets": st.datasets,
            "defaults": {d: st.defaults[d] for d in dataset_order(st.defaults)},
            "columns": columns, "metric": metric, "metric_label": metric_label, "note": note,
            "n_finished": sum(r.state == "finished" for r in st.runs), "n_expected": len(st.runs),
            "seeds": sorted({r.seed for r in st.runs}), "shots": sorted({r.shots for r in st.runs}),
            "points": points, "tables": tables, "heatmaps": heatmaps, "missing": missing, "notes": list(st.notes)}


def _assign_files(studies: list[dict]) -> None:
    """Safe, distinct figure file names: ``ablation-<protocol>-<series>[-<n>]-<key>.png`` per key and
    ``...-<key>-x-<key>.png`` per pair (keys and series slugged; a study number when two studies of the
    same protocol and series vary different keys)."""
    by_series: dict[tuple[str, str], int] = {}
    for st in studies:
        by_series[(st["protocol"], st["series"])] = by_series.get((st["protocol"], st["series"]), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    for st in studies:
        base = f"{FIGURE_PREFIX}{slug(st['protocol'])}-{slug(st['series'])}"
        if by_series[(st["protocol"], st["series"])] > 1:
            n = seen[(st["protocol"], st["series"])] = seen.get((st["protocol"], st["series"]), 0) + 1
            base += f"-{n}"
        st["slug"] = base
        for t in st["tables"]:
            t["figure"] = f"{base}-{slug(t['key'])}.png"
        for h in st["heatmaps"]:
            h["figure"] = f"{base}-{slug(h['keys'][0])}-x-{slug(h['keys'][1])}.png"


def _records(st: Study) -> list[dict]:
    """runs.csv's records of the study's runs."""
    return [{"series": st.id, "method": r.method, "dataset": r.name, "shots": r.shots, "seed": r.seed,
             "state": r.state, "run_dir": str(r.path), "acc": {k: e.accuracy for k, e in r.evals.items()},
             "acc_logits": {kind: {f"{d}-{sub}": e.accuracy for (d, sub, k), e in r.logit_evals.items() if k == kind}
                            for kind in sorted({k for _, _, k in r.logit_evals})},
             "ablation": r.ablation} for r in sorted(st.runs, key=lambda r: str(r.path))]


def collect(found: Found, protocols: Sequence[str] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(report.json's ``ablations``: one entry per study, every number; the studies' run records for
    runs.csv; notes on duplicate runs)."""
    studies, records, notes = [], [], []
    for name, proto in PROTOCOLS.items():
        if protocols and name not in protocols:
            continue
        for st in studies_of(found, name, proto):
            studies.append(_study_data(st, proto, found.root))
            records += [{"protocol": name, **r} for r in _records(st)]
            for s in st.points.values():
                notes += [f"`{esc(_rel(dup.path, found.root))}` is another run of `{esc(_rel(kept.path, found.root))}` "
                          f"(ablation {esc(st.id)}, {esc(kept.name)}, {kept.shots} shots, seed {kept.seed}): "
                          "not counted"
                          for dup, kept in s.duplicates]
    _assign_files(studies)
    return studies, records, notes


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# ----------------------------------------------------------------------------------------------
# Document
# ----------------------------------------------------------------------------------------------

def cell_text(row: dict, column: str, bold: bool = False) -> str:
    """A table cell: the column's value (2 decimals; bold for the metric), '(n/m)' when only n of the
    m runs the row takes are done, 'missing' when there is no value."""
    v = row["columns"].get(column)
    if v is None:
        return "missing"
    txt = f"**{num(v)}**" if bold else num(v)
    if row["runs_done"] < row["runs_expected"]:
        txt += f" ({row['runs_done']}/{row['runs_expected']})"
    return txt


def _value_cell(row: dict, value: Any) -> str:
    text = value_text(value)
    return f"**{text} (default)**" if row.get("is_default") else text


def _runs_cell(row: dict) -> str:
    txt = f"{row['runs_done']}/{row['runs_expected']}"
    if row.get("absent"):
        txt += f"; not run on {', '.join(row['absent'])}"
    return txt


def _fallback_text(rows: list[dict]) -> str:
    merged: dict[str, list[str]] = {}
    for r in rows:
        for what, ds in r["fallback"].items():
            merged.setdefault(what, [])
            merged[what] += [d for d in ds if d not in merged[what]]
    if not merged:
        return ""
    parts = [f"{what} for {', '.join(ds)}" for what, ds in merged.items()]
    return " Where a default is unknown or not in the grid, the other key takes its first value: " + "; ".join(
        parts) + "."


def _others_text(st: dict, rows: list[dict]) -> str:
    """What the other keys are set to where they are at their default (the same for every row of a
    table: it depends on the dataset only): 'J = 6 (its default).' or 'J at each dataset's default:
    3 on DescribableTextures, 6 on EuroSAT.'"""
    if not rows:
        return ""
    others = rows[0]["others"]
    parts = []
    for o in st["keys"]:
        by_value: dict[str, list[str]] = {}
        for d, vals in others.items():
            if o not in vals:
                break
            default = st["defaults"].get(d, {}).get(o, _UNKNOWN)
            if default is not _UNKNOWN and _canon(default) == _canon(vals[o]):
                by_value.setdefault(value_text(vals[o]), []).append(d)
        if not by_value:
            continue
        if len(by_value) == 1 and len(next(iter(by_value.values()))) == len(others):
            parts.append(f"{key_short(o)} = {next(iter(by_value))} (its default)")
        else:
            parts.append(f"{key_short(o)} at each dataset's default: "
                         + ", ".join(f"{v} on {', '.join(ds)}" for v, ds in by_value.items()))
    return (" " + "; ".join(parts) + ".") if parts else ""


def _grid_text(st: dict) -> str:
    vals = "; ".join(f"{key_label(k)} ∈ {{{', '.join(value_text(v) for v in st['values'][k])}}}" for k in st["keys"])
    return (f"Grid: {vals} ({len(st['points'])} points) on {len(st['datasets'])} dataset(s) "
            f"({', '.join(st['datasets'])}), {', '.join(map(str, st['shots']))} shots, seeds "
            f"{', '.join(map(str, st['seeds']))}. **Runs: {st['n_finished']}/{st['n_expected']} finished.**")


def document(studies: list[dict], figures: set[str], protocol_titles: dict[str, str],
             after_tables: bool = True) -> list[Block]:
    """The "Ablations" section (``figures``: the figure files written beside the report; ``after_tables``:
    protocol tables come before it)."""
    if not studies:
        return []
    where = ("not in the protocol tables above" if after_tables
             else "kept out of the protocol tables; this report has none")
    out: list[Block] = [
        Heading(2, TITLE),
        Text("Runs of `mmrl reproduce --vary` (one run folder per grid point, dataset, shot count and seed; "
             f"{where}). Per varied key one row per value, the other keys at their default "
             "(the value each would have without `--vary`, per dataset); the numbers as the protocol table "
             "computes its average (mean over seeds, then over the datasets: the benchmark datasets, or every "
             "dataset when none is one). Accuracy in %; '(n/m)': only n of the m runs the row takes are "
             "finished and evaluated; 'missing': none is."),
    ]
    for st in studies:
        title = protocol_titles.get(st["protocol"], st["protocol"])
        out.append(Heading(3, f"{st['label']}, {title}: {' × '.join(key_label(k) for k in st['keys'])}"))
        out.append(Text(_grid_text(st) + (f" {st['note']}." if st["note"] else "")))
        for t in st["tables"]:
            others = [k for k in st["keys"] if k != t["key"]]
            head = key_label(t["key"]) + (f", {', '.join(key_short(k) for k in others)} at the default"
                                          if others else "")
            caption = f"{t['default']['text']}{_others_text(st, t['rows'])}{_fallback_text(t['rows'])}"
            # bold: the default's row (its value and its metric), as the caption says
            rows = [[_value_cell(r, r["value_of_key"]),
                     *[cell_text(r, c, c == st["metric"] and r["is_default"]) for c in st["columns"]], _runs_cell(r)]
                    for r in t["rows"]]
            out += [Heading(4, head), Text(caption.strip()),
                    Table([key_short(t["key"]), *st["columns"], "Runs"], rows)]
            if t.get("figure") in figures:
                out.append(Figure(t["figure"], f"{st['metric']} vs {t['key']}"))
        for h in st["heatmaps"]:
            a, b = h["keys"]
            rest = [k for k in st["keys"] if k not in h["keys"]]
            da, db = (_default_of_table(st, a), _default_of_table(st, b))
            head = f"{st['metric']} over {key_short(a)} × {key_short(b)}" + (
                f", {', '.join(key_short(k) for k in rest)} at the default" if rest else "")
            rows = []
            for i, va in enumerate(h["rows"]):
                mark = " (default)" if da is not None and _canon(va) == _canon(da) else ""
                rows.append([value_text(va) + mark] + [cell_text(c, st["metric"]) for c in h["cells"][i]])
            cols = [value_text(vb) + (" (default)" if db is not None and _canon(vb) == _canon(db) else "")
                    for vb in h["cols"]]
            out += [Heading(4, head),
                    Text(f"Rows: {key_label(a)}; columns: {key_label(b)}; cells: {st['metric']} (%)."
                         + _others_text(st, [c for row in h["cells"] for c in row])
                         + _fallback_text([c for row in h["cells"] for c in row])),
                    Table([f"{key_short(a)} {esc(chr(92))} {key_short(b)}", *cols], rows)]
            if h.get("figure") in figures:
                out.append(Figure(h["figure"], f"{st['metric']} over {a} and {b}"))
        out += missing_blocks(st["missing"])
        if st["notes"]:
            out.append(Bullets(st["notes"]))
    return out


def _default_of_table(st: dict, key: str) -> Any:
    """The default value of ``key`` when one value holds for every dataset and it is in the grid, else None."""
    t = next(t for t in st["tables"] if t["key"] == key)
    return t["default"]["value"] if t["default"]["in_grid"] else None


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------

def wide_csv(lead: list[str], records: list[tuple[list, dict]]) -> str:
    """CSV of rows that each start with the ``lead`` fields and end with an ``ablation_row``: the union
    of the rows' columns, metric and metric_value, then the metric per dataset (``per_dataset:<name>``)."""
    columns = list(dict.fromkeys(c for _, r in records for c in r["columns"]))
    datasets = dataset_order({d for _, r in records for d in r["per_dataset"]})
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow([*lead, "runs_done", "runs_expected", *columns, "metric", "metric_value",
                *[f"per_dataset:{d}" for d in datasets]])
    for first, r in records:
        w.writerow([*first, r["runs_done"], r["runs_expected"], *[csv_num(r["columns"].get(c)) for c in columns],
                    r["metric"], csv_num(r["value"]), *[csv_num(r["per_dataset"].get(d)) for d in datasets]])
    return buf.getvalue()


def to_csv(studies: list[dict]) -> str:
    """ablation.csv: one row per (study, varied key, value), as the per-key tables."""
    records = [([st["id"], st["protocol"], t["key"], value_text(r["value_of_key"]), str(r["is_default"]).lower()], r)
               for st in studies for t in st["tables"] for r in t["rows"]]
    return wide_csv(["study", "protocol", "key", "value", "is_default"], records)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def plot(studies: list[dict], out: Path, protocol_titles: dict[str, str]) -> set[str]:
    """Draw every study's figures into ``out``; returns the file names written (a figure with no value
    at all is not drawn)."""
    from mmrl.report.plotting import Line, annotated_heatmap, category_lines, dataset_colors, new_figure, save_png

    written: set[str] = set()
    for st in studies:
        title = protocol_titles.get(st["protocol"], st["protocol"])
        ylabel = f"{st['metric_label']} (%)"
        for t in st["tables"]:
            rows = t["rows"]
            if all(r["value"] is None for r in rows):
                continue
            names = dataset_order({d for r in rows for d in r["per_dataset"]})
            colors = dataset_colors(names)
            lines = [Line(d, [r["per_dataset"].get(d) for r in rows], colors[d]) for d in names]
            partial = [r["runs_done"] < r["runs_expected"] for r in rows]
            spread = [(min(r["seed_values"].values()), max(r["seed_values"].values()))
                      if len(r.get("seed_values", {})) > 1 else None for r in rows]
            lines.append(Line("average", [r["value"] for r in rows], "#000000", width=3.0, annotate=True,
                              partial=partial, spread=spread))
            mark = next((i for i, r in enumerate(rows) if r["is_default"]), None)
            cats = [value_text(r["value_of_key"]) for r in rows]
            fig = new_figure(max(6.0, 1.1 * len(cats) + 3.5), 4.2)
            ax = fig.subplots()
            category_lines(ax, cats, lines, xlabel=key_label(t["key"]), ylabel=ylabel, mark=mark,
                           min_span=MIN_Y_SPAN)
            others = [key_short(k) for k in st["keys"] if k != t["key"]]
            sub = f"{', '.join(others)} at the default; " if others else ""
            star = "; *: some runs missing" if any(p for p, r in zip(partial, rows) if r["value"] is not None) else ""
            band = ", grey: its range over seeds" if any(spread) else ""
            fig.suptitle(f"{st['label']}, {title}: {st['metric_label']} vs {key_short(t['key'])}\n"
                         f"({sub}thin lines: datasets, black: average{band}{star})", fontsize=10)
            save_png(fig, out / t["figure"])
            written.add(t["figure"])
        for h in st["heatmaps"]:
            matrix = [[c["value"] for c in row] for row in h["cells"]]
            if all(v is None for row in matrix for v in row):
                continue
            a, b = h["keys"]
            da, db = _default_of_table(st, a), _default_of_table(st, b)
            mark = None
            if da is not None and db is not None:
                mark = ([_canon(v) for v in h["rows"]].index(_canon(da)), [_canon(v) for v in h["cols"]].index(_canon(db)))
            partial = [[c["value"] is not None and c["runs_done"] < c["runs_expected"] for c in row]
                       for row in h["cells"]]
            fig = new_figure(max(5.0, 1.0 * len(h["cols"]) + 3.0), max(3.6, 0.6 * len(h["rows"]) + 2.0))
            ax = fig.subplots()
            annotated_heatmap(fig, ax, matrix, [value_text(v) for v in h["rows"]], [value_text(v) for v in h["cols"]],
                              ylabel=key_label(a), xlabel=key_label(b), cbar_label=ylabel, mark=mark, partial=partial)
            rest = [key_short(k) for k in st["keys"] if k not in h["keys"]]
            sub = (f"{', '.join(rest)} at the default; " if rest else "") + (
                "red box: the default; " if mark else "") + ("*: some runs missing; " if any(map(any, partial)) else "")
            fig.suptitle(f"{st['label']}, {title}: {st['metric_label']} over {key_short(a)} × {key_short(b)}\n"
                         f"({sub}average over the datasets)", fontsize=10)
            save_png(fig, out / h["figure"])
            written.add(h["figure"])
    return written
