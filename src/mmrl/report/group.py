"""Group the runs of one protocol into series and cells, with the cells a sweep expects but lacks.

A *series* is one line of a table: a method, plus whatever sets its runs apart from the
method's other runs (converted official weights; for cross-dataset a source other than
ImageNet; for base-to-novel a second shot count; a second backbone). A *cell* is one
(dataset, shots, seed) of a series; its seeds are aggregated by the protocol modules.

What is *expected* comes from the sweep layout only (ad-hoc runs show just what is there):
for ``<base>/<protocol>/<method>/`` the union of its grid files (what `mmrl reproduce` was
asked for), else the datasets, shot counts and seeds found there, crossed (a sweep whose grid
files are gone still shows its gaps). Never the protocol's default seeds: a run that
`mmrl train` placed in that layout by itself is not part of a grid, and one run of seed 1
reads "1/1", not "1/3". Expected cells without a run folder become "missing" (or "claimed",
when a claim file says a process is on it).

Two runs of one cell (dataset, shots, seed) are copies of one run (the latest finished one is
counted, the others noted) unless their settings differ (config.yaml: ``optim.lr``, ``method.alpha``,
...): then they are two experiments, and the series is split by the differing settings, its parts
labelled with their values.

Ablation runs (`mmrl reproduce --vary`: a run that records the values of the keys it varies) are
another experiment: the protocol tables leave them out (``series_of(..., ablation=False)``) and
:mod:`mmrl.report.ablation` takes them (``ablation=True``: one series per grid point). A sweep
folder of an ablation (``OUTPUT/ablation/<point>/``) is recognised by its grid files or runs, never by
its name; its placeholders carry the point's values.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from mmrl import methods
from mmrl.report.scan import Found, Run, SweepCell, ZEROSHOT, ablation_point, describe_claim, sweep_cell
from mmrl.vocab import ALL_DATASETS, CROSS_SOURCE, DATASETS, sweep_run_dir

def display(method: str) -> str:
    """The method's name in tables ("mmrl" -> "MMRL", the registry's title)."""
    return "CLIP zero-shot" if method == ZEROSHOT else methods.title(method)


def dataset_order(names: Iterable[str]) -> list[str]:
    """The benchmark datasets in the papers' order, then any other dataset (user data) sorted by name."""
    names = set(names)
    known = [d for d in ALL_DATASETS if d in names]
    return known + sorted(names - set(known))


def averaged_datasets(names: Iterable[str]) -> list[str]:
    """The datasets an ablation's or decoupled-inference average covers: the benchmark datasets among
    ``names`` (as the protocol tables), or all of them when none is a benchmark (user data only, e.g.
    the toy world's tasks), so such a study still has an average."""
    names = dataset_order(names)
    bench = [d for d in names if d in DATASETS]
    return bench or names


@dataclass
class Series:
    """The runs of one table line: one run per (dataset, shots, seed) cell."""
    key: str                      # report.json key: the method, plus what sets the series apart
    method: str
    label: str                    # the table label ("MMRL", "MMRL (official weights)")
    protocol: str
    runs: list[Run]
    expected: dict[tuple[str, int], set[int]]  # (dataset, shots) -> seeds expected (grid, or found)
    targets: list[str]            # cross-dataset: targets the grid files ask for
    duplicates: list[tuple[Run, Run]] = field(default_factory=list)  # (not counted, counted)
    ablation: dict | None = None  # an ablation's grid point: {dotted key: value} (None: not an ablation)

    @property
    def datasets(self) -> list[str]:
        return dataset_order(r.name for r in self.runs)

    @property
    def shots(self) -> list[int]:
        return sorted({r.shots for r in self.runs})

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    @property
    def n_finished(self) -> int:
        return sum(r.state == "finished" for r in self.runs)

    def expected_seeds(self, dataset: str, shots: int) -> list[int]:
        return sorted(self.expected.get((dataset, shots), ()))

    def finished(self, dataset: str | None = None, shots: int | None = None) -> list[Run]:
        return [r for r in self.runs if r.state == "finished" and (dataset is None or r.name == dataset)
                and (shots is None or r.shots == shots)]

    def grid(self) -> dict:
        return {"datasets": self.datasets, "shots": self.shots, "seeds": self.seeds, "targets": list(self.targets)}


def _short_backbone(spec: str) -> str:
    return Path(spec).name if "/" in spec else spec


@dataclass
class _Family:
    """One ``<base>/<protocol>/<method>/`` folder of the sweep layout."""
    base: Path
    method: str
    specs: list[dict] = field(default_factory=list)
    cells: list[SweepCell] = field(default_factory=list)


def spec_ablation(spec: dict) -> dict | None:
    """The grid point of an ablation's grid file (``"ablation": {"values": {...}}``), else None."""
    a = spec.get("ablation")
    values = a.get("values") if isinstance(a, dict) else None
    return values if isinstance(values, dict) and values else None


def _expected_cells(found: Found, protocol: str, trained: list[Run]) -> tuple[list[tuple[Run, bool]], dict]:
    """Runs at the expected cells of the sweep families (found ones, and placeholders for the rest)
    and the targets each family's grid files ask for: ([(run, is_placeholder)], {run path: targets}).
    A placeholder of an ablation's family carries the point's values (its grid files', else its runs')."""
    families: dict[tuple[Path, str], _Family] = {}
    for (base, p, m), specs in found.grids.items():
        if p == protocol:
            families.setdefault((base, m), _Family(base, m)).specs += specs
    for r in trained:
        if r.cell is not None and r.cell.protocol == protocol:
            families.setdefault((r.cell.base, r.cell.method), _Family(r.cell.base, r.cell.method)).cells.append(r.cell)
    for path in found.claims:
        c = sweep_cell(path, found.root)
        if c is not None and c.protocol == protocol:
            families.setdefault((c.base, c.method), _Family(c.base, c.method)).cells.append(c)
    by_path = {r.path: r for r in trained}
    out: list[tuple[Run, bool]] = []
    targets: dict[Path, list[str]] = {}
    for fam in families.values():
        if fam.specs:
            datasets = {d for s in fam.specs for d in s.get("datasets", [])}
            shots = {int(k) for s in fam.specs for k in s.get("shots", [])}
            seeds = {int(k) for s in fam.specs for k in s.get("seeds", [])}
            fam_targets = dataset_order({t for s in fam.specs for t in s.get("targets", [])})
        else:  # no grid file: what is there (runs, claims), crossed -- never the protocol's default seeds
            datasets = {c.dataset for c in fam.cells}
            shots = {c.shots for c in fam.cells}
            seeds = {c.seed for c in fam.cells}
            fam_targets = []
        mine = [r for r in trained if r.cell is not None
                and (r.cell.base, r.cell.protocol, r.cell.method) == (fam.base, protocol, fam.method)]
        names = {r.cell.dataset: r.name for r in mine}             # folder name -> table name
        backbones = {r.backbone for r in mine if r.backbone}
        point = next((a for a in map(spec_ablation, fam.specs) if a), None) \
            or next((r.ablation for r in mine if r.ablation), None)
        for d, k, s in sorted((d, k, s) for d in datasets for k in shots for s in seeds):
            path = sweep_run_dir(fam.base, protocol, fam.method, d, k, s)
            targets[path] = fam_targets
            if path in by_path:
                out.append((by_path[path], False))
                continue
            claim = found.claims.get(path)
            out.append((Run(path=path, method=fam.method, protocol=protocol, dataset=d, name=names.get(d, d),
                            shots=k, seed=s, backbone=next(iter(backbones)) if len(backbones) == 1 else None,
                            state="missing" if claim is None else "claimed", evals={},
                            detail=describe_claim(claim), ablation=dict(point) if point else None,
                            cell=SweepCell(fam.base, protocol, fam.method, d, k, s)), True))
    return out, targets


def series_of(found: Found, protocol: str, shots_in_table: bool, *, ablation: bool = False) -> list[Series]:
    """The series of ``protocol``: every trained or converted run whose run.json (or config, or
    path) names the protocol, plus the sweep's expected cells. ``shots_in_table``: the protocol's
    table has a column per shot count (few-shot) or a block per shot count (cross-dataset);
    otherwise a second shot count makes a series of its own.

    ``ablation``: False -- the runs that are not part of an ablation (the protocol tables); True --
    only ablation runs, one series per grid point (:attr:`Series.ablation`; several series then
    share a key: the key says what the series would be without the ablation)."""
    trained = [r for r in found.runs if r.protocol == protocol and r.method != ZEROSHOT
               and r.name is not None and r.shots is not None and r.seed is not None]
    expected_runs, targets_at = _expected_cells(found, protocol, trained)
    expected_runs = [(r, new) for r, new in expected_runs if bool(r.ablation) == ablation]
    trained = [r for r in trained if bool(r.ablation) == ablation]
    placeholders = [r for r, is_new in expected_runs if is_new]
    everything = trained + placeholders
    shot_counts: dict[str, set[int]] = {}
    backbones: dict[str, set[str]] = {}
    for r in everything:
        shot_counts.setdefault(r.method, set()).add(r.shots)
        if r.backbone:
            backbones.setdefault(r.method, set()).add(r.backbone)

    def key_of(r: Run) -> tuple[str, str]:
        quals = []
        if r.official:
            quals.append("official weights")
        if protocol == "crossdataset" and r.name != CROSS_SOURCE:
            quals.append(f"trained on {r.name}")
        if not shots_in_table and len(shot_counts[r.method]) > 1:
            quals.append(f"{r.shots} shots")
        if len(backbones.get(r.method, ())) > 1 and r.backbone:
            quals.append(_short_backbone(r.backbone))
        q = f" ({', '.join(quals)})" if quals else ""
        return r.method + q, display(r.method) + q

    groups: dict[tuple, Series] = {}
    expected_cells = {r.path for r, _ in expected_runs}
    for r in everything:
        key, label = key_of(r)
        group = (key, ablation_point(r.ablation)) if ablation else (key, ())
        s = groups.setdefault(group, Series(key, r.method, label, protocol, [], {}, [],
                                            ablation=dict(r.ablation) if ablation else None))
        s.runs.append(r)
        s.expected.setdefault((r.name, r.shots), set()).add(r.seed)
        if r.path in expected_cells:
            s.targets = dataset_order(set(s.targets) | set(targets_at.get(r.path, [])))
    parts = [part for s in groups.values() for part in _apart_by_settings(s)]
    for s in parts:
        s.runs, s.duplicates = _one_per_cell(s.runs)
    order = methods.names()
    return sorted(parts, key=lambda s: (order.index(s.method) if s.method in order else len(order),
                                                  s.method, s.key, ablation_point(s.ablation or {})))


SETTING_TEXT_MAX = 40  # characters of a setting's value in a series label


def _value_text(v: object) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= SETTING_TEXT_MAX else text[:SETTING_TEXT_MAX - 3] + "..."


def _apart_by_settings(series: Series) -> list[Series]:
    """The series, or its parts when runs of one cell (dataset, shots, seed) differ in their settings
    (:attr:`Run.settings`): two experiments, not two copies of one run, so neither is dropped as a
    duplicate. Each part holds one combination of the differing settings; its key and label say which
    ("MMRL (optim.lr 0.002)"). Runs without settings (placeholders, zero-shot) join the part of their
    sweep folder, else the first part."""
    by_cell: dict[tuple, list[Run]] = {}
    for r in series.runs:
        if r.settings is not None:
            by_cell.setdefault((r.name, r.shots, r.seed), []).append(r)
    # keys every run of a cell has (a config of an older version may lack a newer key: not a difference)
    differ = sorted({k for runs in by_cell.values() if len(runs) > 1
                     for k in set.intersection(*(set(r.settings) for r in runs))
                     if len({json.dumps(r.settings[k], sort_keys=True, default=str) for r in runs}) > 1})
    if not differ:
        return [series]
    parts: dict[tuple, Series] = {}
    home: dict[tuple, tuple] = {}  # sweep folder -> the part its runs are in
    for r in sorted((r for r in series.runs if r.settings is not None), key=lambda r: str(r.path)):
        values = tuple(r.settings.get(k) for k in differ)
        point = tuple(json.dumps(v, sort_keys=True, default=str) for v in values)
        if point not in parts:
            q = ", ".join(f"{k} {_value_text(v)}" for k, v in zip(differ, values))
            parts[point] = dataclasses.replace(series, key=f"{series.key} ({q})", label=f"{series.label} ({q})",
                                               runs=[], expected={}, duplicates=[])
        parts[point].runs.append(r)
        if r.cell is not None:
            home.setdefault((r.cell.base, r.cell.method), point)
    first = next(iter(parts))
    for r in series.runs:
        if r.settings is None:
            parts[home.get((r.cell.base, r.cell.method), first) if r.cell else first].runs.append(r)
    for part in parts.values():
        for r in part.runs:
            part.expected.setdefault((r.name, r.shots), set()).add(r.seed)
    return list(parts.values())


def _one_per_cell(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """One run per (dataset, shots, seed): a finished one before others, the latest finished first;
    the others are returned as duplicates (not counted)."""
    cells: dict[tuple[str, int, int], list[Run]] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        cells.setdefault((r.name, r.shots, r.seed), []).append(r)
    kept, dups = [], []
    for group in cells.values():
        best = max(group, key=lambda r: (r.state == "finished", r.finished_at))
        kept.append(best)
        dups += [(r, best) for r in group if r is not best]
    return kept, dups


def missing_entries(series: Series, root: Path, required: Callable[[Series, Run], list[str]]) -> list[dict]:
    """What is not there yet: runs not finished (with their state, claim and log) and finished runs
    lacking evaluations the protocol needs (``required(series, run)`` -> eval keys)."""
    out = []
    order = {d: i for i, d in enumerate(series.datasets)}
    for r in sorted(series.runs, key=lambda r: (order[r.name], r.shots, r.seed, str(r.path))):
        rel = str(r.path.relative_to(root)) if r.path.is_relative_to(root) else str(r.path)
        if r.state != "finished":
            e = {"run": rel, "state": r.state, "detail": r.detail}
            if r.log is not None:
                e["log"] = str(r.log)
            out.append(e)
            continue
        lacking = [k for k in required(series, r) if k not in r.evals]
        if lacking:
            out.append({"run": rel, "state": "missing evals",
                        "detail": ", ".join(k.removesuffix("-all") for k in lacking)})
    return out
