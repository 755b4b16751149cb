"""The reproduction grid: cells, shards and the grid's record.

A *cell* is one training run of a protocol's grid (one method, dataset, shot count and
seed; for cross-dataset also the evaluations of its targets; for an ablation one grid point of
the varied keys, :mod:`mmrl.sweep.ablation`). `mmrl reproduce` builds the grid
(:func:`build_grid`), optionally keeps a shard of it (:func:`take_shard`) and hands it to
:func:`mmrl.sweep.runner.run_cells`. Run folder layout:
`OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>/` (:func:`mmrl.vocab.sweep_run_dir`),
under `OUTPUT/ablation/<point>/` for an ablation's grid point.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mmrl import methods
from mmrl.errors import shown
from mmrl.sweep.ablation import Point, point_dir
from mmrl.vocab import (ABLATION_DIR, ALL_DATASETS, BASE2NOVEL_SUBSAMPLES, CROSS_SOURCE, CROSS_TARGETS, DATASETS,
                        DEFAULT_SEEDS, DEFAULT_SHOTS, LOGIT_KINDS, PROTOCOLS, STDOUT_LOG, auto_logits, canonical_benchmark,
                        dataset_slug, eval_file_name, sweep_run_dir)


def canonical_dataset(name: str) -> str:
    """Canonical name of a benchmark given its name (any case), its folder name or an alias
    (the one table, :data:`mmrl.vocab.DATASET_ALIASES`)."""
    canon = canonical_benchmark(name)
    if canon is None:
        raise ValueError(f"unknown dataset {shown(name)}; expected one of {', '.join(ALL_DATASETS)} "
                         f"(or a folder name or short form such as dtd, eurosat, oxford_pets, textures)")
    return canon


def run_dir_for(output: Path | str, protocol: str, method: str, dataset: str, shots: int, seed: int) -> Path:
    """`OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>` (the layout the report reads)."""
    return sweep_run_dir(output, protocol, method, dataset, shots, seed)


@dataclass(frozen=True)
class EvalJob:
    """One `mmrl eval` of a trained cell: a dataset's classes (``subsample``) with ``logits``.
    ``dataset`` is what `--dataset` gets, ``name`` the name its result carries (they differ for user data)."""
    dataset: str
    subsample: str = "all"
    logits: str = "auto"
    name: str = ""

    @property
    def file(self) -> str:
        """Its result's file name under RUN_DIR/eval/."""
        return eval_file_name(self.name or self.dataset, self.subsample, self.logits)


@dataclass(frozen=True)
class Cell:
    """One run of the grid, with everything needed to launch it.

    `dataset` is what `mmrl train --dataset` gets: a benchmark's canonical name, or a user
    dataset's spec (`dataset:PATH`, `folder:PATH`, `manifest:FILE`); `table_name` the name its
    evaluations carry (the benchmark's name, or the name the data layer gives the user dataset:
    the run folder and eval files are named after it). `targets` is empty except for
    cross-dataset, where it lists the datasets evaluated (with `mmrl eval`) on the model trained
    on `dataset`. `point`: the ablation grid point (`(key, value)` pairs; empty in a plain sweep).
    `logits`: logit kinds to evaluate besides the protocol's choice (an evaluation-only ablation).
    `device` is filled in by the worker that runs the cell (None: inherit).
    """
    protocol: str
    method: str
    dataset: str
    shots: int
    seed: int
    run_dir: Path
    targets: tuple[str, ...] = ()
    root: Path | None = None
    backbone: str | None = None
    sets: tuple[str, ...] = ()
    device: str | None = None
    point: Point = ()
    logits: tuple[str, ...] = ()
    table_name: str = ""

    def __post_init__(self) -> None:
        if not self.table_name:
            object.__setattr__(self, "table_name", self.dataset)

    @property
    def name(self) -> str:
        where = f"{ABLATION_DIR}/{point_dir(self.point)}/" if self.point else ""
        return f"{where}{self.protocol}/{self.method}/{self.table_name}/shots_{self.shots}/seed_{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / STDOUT_LOG

    @property
    def train_evals(self) -> tuple[str, ...]:
        """Eval files (under RUN_DIR/eval/) a finished `mmrl train` leaves behind."""
        return tuple(EvalJob(self.table_name, sub).file for sub in self.trained_subsamples)

    @property
    def trained_subsamples(self) -> tuple[str, ...]:
        """The subsamples `mmrl train` evaluates (base-to-novel: base and novel classes)."""
        return BASE2NOVEL_SUBSAMPLES if self.protocol == "base2novel" else ("all",)

    @property
    def eval_jobs(self) -> tuple[EvalJob, ...]:
        """The `mmrl eval` runs after training: every cross-dataset target, then each requested logit
        kind on every evaluated class set, except where it is the protocol's own choice (that
        evaluation exists already)."""
        jobs = [EvalJob(t) for t in self.targets]
        trained_sub = "base" if self.protocol == "base2novel" else "all"
        sets = [(self.dataset, self.table_name, sub) for sub in self.trained_subsamples] + \
               [(t, t, "all") for t in self.targets]
        for kind in self.logits:
            jobs += [EvalJob(d, sub, kind, name) for d, name, sub in sets
                     if auto_logits(self.table_name, trained_sub, name, sub) != kind]
        return tuple(jobs)

    @property
    def target_evals(self) -> tuple[str, ...]:
        """Eval files the cell's `mmrl eval` runs leave (:attr:`eval_jobs`)."""
        return tuple(j.file for j in self.eval_jobs)


def _user_datasets(specs: Sequence[str], root: Path | str | None, protocol: str) -> dict[str, str]:
    """{spec as `mmrl train` records it: the name the data layer gives the dataset} for user datasets
    (checked to exist now, not in a run)."""
    from mmrl import data

    if specs and protocol == "crossdataset":
        raise ValueError(f"crossdataset trains on {CROSS_SOURCE} and evaluates the benchmark targets; "
                         f"user datasets ({', '.join(specs)}) go with base2novel or fewshot")
    names = {}
    for spec in specs:
        try:
            canonical = data.canonical_name(spec)  # a folder holding dataset.json -> dataset:FOLDER
            names[canonical] = data.locate(canonical, root).name
        except (ValueError, OSError) as e:
            raise ValueError(f"--datasets {spec}: {e.args[0] if e.args else e}") from None
    return names


# Bytes of a dataset's folder name in the sweep layout: its evaluation files add up to 16 characters
# (``-base-fused.json``) and file systems allow 255 per name.
DATASET_NAME_MAX = 200


def check_folder_names(named: Mapping[str, str], benchmarks: Iterable[str] = ()) -> None:
    """Refuse user datasets whose name cannot be their run folder's name: ``.``/``..``, a name
    holding ``/`` or NUL, one longer than DATASET_NAME_MAX bytes, or one that becomes the same
    folder as another dataset's (names are made file-name safe, :func:`mmrl.vocab.dataset_slug`;
    compared without case, as macOS and Windows file systems do). ``named``: {spec: name}.

    Checked when the grid is built, before any work (and by ``--dry-run``): a run folder that
    cannot be created fails every one of its cells, and two datasets in one folder mix their runs.
    """
    taken = {dataset_slug(b).casefold(): f"the benchmark {b}" for b in benchmarks}
    for spec, name in named.items():
        slug = dataset_slug(name)
        why = ("it holds '/'" if "/" in name else "it holds a NUL character" if "\0" in name
               else f"'{slug}' is not a folder name" if slug in (".", "..")
               else f"its folder name would be {len(slug.encode())} bytes long (at most {DATASET_NAME_MAX})"
               if len(slug.encode()) > DATASET_NAME_MAX else "")
        if not why and slug.casefold() in taken:
            why = f"it would share the run folder '{slug}' with {taken[slug.casefold()]}"
        if why:
            prefix = spec.partition(":")[0]
            fix = {"dataset": "change \"name\" in its dataset.json", "folder": "rename the folder",
                   "manifest": "rename the manifest file"}.get(prefix, "rename it")
            raise ValueError(f"--datasets {shown(spec)}: its name {shown(name)} cannot name a run folder: {why}; {fix}")
        taken[slug.casefold()] = f"--datasets {shown(spec)}"


def check_data(cells: Sequence[Cell], root: Path | str | None) -> None:
    """Refuse a grid whose datasets are not on disk, before any work (and under ``--dry-run``): a
    benchmark's folder under ``root``, a user dataset's folder or manifest. One ValueError listing
    what is missing; ``mmrl data verify`` checks the content. Without ``root`` (Python callers;
    the command line requires ``--root`` for benchmarks) benchmarks are left to the runs, whose
    ``data.root`` may come from ``--set``."""
    from mmrl import data

    missing = []
    for name in dict.fromkeys(d for c in cells for d in (c.dataset, *c.targets)):
        if root is None and not is_user_dataset(name):
            continue
        try:
            where = data.locate(name, root).dataset_dir
        except (ValueError, OSError) as e:  # DataError, MissingDataError: their message names the path
            missing.append(str(e))
            continue
        if not where.exists():
            missing.append(f"{name}: {where}{'/' if not where.suffix else ''} not found")
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        verify = f"mmrl data verify --root {root}" if root is not None else "mmrl data verify"
        raise ValueError(f"data not found: {'; '.join(missing[:3])}{more}; `{verify}` shows what is expected where")


def build_grid(protocol: str, method: str, output: Path | str, *, datasets: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None, shots: Sequence[int] | None = None,
               root: Path | str | None = None, backbone: str | None = None,
               sets: Sequence[str] = (), points: Sequence[Point] = (), logits: Sequence[str] = ()) -> list[Cell]:
    """The grid of a protocol in canonical order: ablation point, dataset (papers' order, then user
    datasets by spec), shots, seed.

    The order does not depend on the order of the arguments, so `take_shard`
    splits the same grid the same way on every machine. For cross-dataset,
    `datasets` selects the targets (default: the 10 other datasets and the 4
    ImageNet variants) and there is one cell per shot count and seed, trained
    on ImageNet. `datasets` may also name user datasets (`dataset:PATH`, `folder:PATH`,
    `manifest:FILE`; base2novel and fewshot). `points`: the ablation's grid points
    (:func:`mmrl.sweep.ablation.points`); each is the whole grid under `OUTPUT/ablation/<point>/`.
    `logits`: logit kinds evaluated besides the protocol's choice.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {shown(protocol)}; expected one of {', '.join(PROTOCOLS)}")
    methods.get(method)  # ValueError naming the registered methods
    if bad := [k for k in logits if k not in LOGIT_KINDS]:
        raise ValueError(f"--logits {','.join(bad)}: expected some of {', '.join(LOGIT_KINDS)}")
    seeds = sorted(set(int(s) for s in (seeds or DEFAULT_SEEDS)))
    shot_list = sorted(set(int(k) for k in (shots or DEFAULT_SHOTS[protocol])))
    if any(k < 1 for k in shot_list):
        raise ValueError(f"shots must be >= 1, got {shot_list}")
    user = sorted({d for d in datasets or () if is_user_dataset(d)})
    named = _user_datasets(user, root, protocol)
    chosen = None if not datasets else {canonical_dataset(d) for d in datasets if d not in user}
    check_folder_names(named, chosen or ())
    common = dict(root=Path(root) if root is not None else None, backbone=backbone, sets=tuple(sets),
                  logits=tuple(k for k in LOGIT_KINDS if k in logits))
    cells: list[Cell] = []
    for point in points or [()]:
        base = Path(output) / ABLATION_DIR / point_dir(point) if point else Path(output)
        if protocol == "crossdataset":
            targets = tuple(t for t in CROSS_TARGETS if chosen is None or t in chosen)
            if chosen is not None and (bad := chosen - set(CROSS_TARGETS)):
                raise ValueError(f"cross-dataset targets must be among {', '.join(CROSS_TARGETS)}; got {sorted(bad)}")
            for k in shot_list:
                for s in seeds:
                    cells.append(Cell(protocol, method, CROSS_SOURCE, k, s,
                                      run_dir_for(base, protocol, method, CROSS_SOURCE, k, s), targets, point=point,
                                      **common))
            continue
        if chosen is not None and (bad := chosen - set(DATASETS)):
            raise ValueError(f"{protocol} runs on the 11 datasets {', '.join(DATASETS)} (or user datasets: "
                             f"dataset:PATH, folder:PATH, manifest:FILE); got {sorted(bad)}")
        wanted = [d for d in DATASETS if (chosen is None and not named) or (chosen is not None and d in chosen)]
        for d, name in [(d, d) for d in wanted] + list(named.items()):
            for k in shot_list:
                for s in seeds:
                    cells.append(Cell(protocol, method, d, k, s,
                                      run_dir_for(base, protocol, method, dataset_slug(name), k, s),
                                      point=point, table_name=name, **common))
    return cells


def is_user_dataset(name: str) -> bool:
    """A user dataset spec (``dataset:``, ``folder:``, ``manifest:``) or a folder holding a dataset.json."""
    from mmrl.data.imagefolder import is_user_spec

    return is_user_spec(name) or (canonical_benchmark(name) is None and (Path(name) / "dataset.json").is_file())


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """`"I/N"` (0-based I in [0, N)) -> (I, N); `"slurm"` reads a Slurm job array.

    With `slurm`, I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN and
    N = SLURM_ARRAY_TASK_COUNT, so both `--array=0-(N-1)` and `--array=1-N` work.
    """
    env = os.environ if environ is None else environ
    if text.strip().lower() == "slurm":
        try:
            task = int(env["SLURM_ARRAY_TASK_ID"])
            count = int(env["SLURM_ARRAY_TASK_COUNT"])
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        except (KeyError, ValueError) as e:
            raise ValueError(f"--shard slurm needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                             f"in the environment (a Slurm job array): {e}") from None
        index = task - first
    else:
        try:
            i, n = text.split("/")
            index, count = int(i), int(n)
        except ValueError:
            raise ValueError(f"--shard expects I/N (e.g. 0/4) or 'slurm', got {shown(text)}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {shown(text)}: need N >= 1 and 0 <= I < N (I is 0-based: "
                         f"use --array=0-{max(count - 1, 0)} in Slurm, or --shard slurm)")
    return index, count


def take_shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Cells whose position in the canonical grid is `index` modulo `count`."""
    return [c for i, c in enumerate(cells) if i % count == index]


def grid_spec(cells: Iterable[Cell], defaults: dict[str, dict] | None = None) -> dict:
    """The grid of one point as data (written to `<base>/<protocol>/<method>/grid-*.json` so the report
    knows what is expected): "datasets" are the run folders' names (`names`: folder -> the name the
    evaluations carry); an ablation point adds "ablation": {"values": {key: value}, "defaults":
    {dataset as run.json names it: {key: default}}}."""
    cells = list(cells)
    folders = {c.run_dir.parent.parent.name: c for c in cells}
    spec = {
        "protocol": cells[0].protocol if cells else None,
        "method": cells[0].method if cells else None,
        "datasets": list(folders),
        "targets": list(cells[0].targets) if cells else [],
        "shots": sorted({c.shots for c in cells}),
        "seeds": sorted({c.seed for c in cells}),
    }
    if any(c.table_name != folder for folder, c in folders.items()):
        spec["names"] = {folder: c.table_name for folder, c in folders.items()}
    if cells and cells[0].point:
        spec["ablation"] = {"values": dict(cells[0].point),
                            "defaults": {d: v for d, v in (defaults or {}).items() if d in {c.dataset for c in cells}}}
    return spec
