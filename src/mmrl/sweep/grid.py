"""The reproduction grid: cells, shards and the grid's record.

A *cell* is one training run of a protocol's grid (one method, dataset, shot count and
seed; for cross-dataset also the evaluations of its targets). `mmrl reproduce` builds the
grid (:func:`build_grid`), optionally keeps a shard of it (:func:`take_shard`) and hands it to
:func:`mmrl.sweep.runner.run_cells`. Run folder layout:
`OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>/` (:func:`mmrl.vocab.sweep_run_dir`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mmrl.vocab import (ALL_DATASETS, CROSS_SOURCE, CROSS_TARGETS, DATASETS, DEFAULT_SEEDS, DEFAULT_SHOTS,
                        METHODS, PROTOCOLS, STDOUT_LOG, canonical_benchmark, eval_file_name,
                        sweep_run_dir)


def canonical_dataset(name: str) -> str:
    """Canonical name of a benchmark given its name (any case), its folder name or an alias
    (the one table, :data:`mmrl.vocab.DATASET_ALIASES`)."""
    canon = canonical_benchmark(name)
    if canon is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(ALL_DATASETS)} "
                         f"(or a folder name or short form such as dtd, eurosat, oxford_pets, textures)")
    return canon


def run_dir_for(output: Path | str, protocol: str, method: str, dataset: str, shots: int, seed: int) -> Path:
    """`OUTPUT/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>` (the layout the report reads)."""
    return sweep_run_dir(output, protocol, method, dataset, shots, seed)


@dataclass(frozen=True)
class Cell:
    """One run of the grid, with everything needed to launch it.

    `targets` is empty except for cross-dataset, where it lists the datasets
    evaluated (with `mmrl eval`) on the model trained on `dataset`.
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

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.method}/{self.dataset}/shots_{self.shots}/seed_{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / STDOUT_LOG

    @property
    def train_evals(self) -> tuple[str, ...]:
        """Eval files (under RUN_DIR/eval/) a finished `mmrl train` leaves behind."""
        if self.protocol == "base2novel":
            return (eval_file_name(self.dataset, "base"), eval_file_name(self.dataset, "new"))
        return (eval_file_name(self.dataset, "all"),)

    @property
    def target_evals(self) -> tuple[str, ...]:
        return tuple(eval_file_name(t, "all") for t in self.targets)


def build_grid(protocol: str, method: str, output: Path | str, *, datasets: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None, shots: Sequence[int] | None = None,
               root: Path | str | None = None, backbone: str | None = None,
               sets: Sequence[str] = ()) -> list[Cell]:
    """The grid of a protocol in canonical order: dataset (papers' order), then shots, then seed.

    The order does not depend on the order of the arguments, so `take_shard`
    splits the same grid the same way on every machine. For cross-dataset,
    `datasets` selects the targets (default: the 10 other datasets and the 4
    ImageNet variants) and there is one cell per shot count and seed, trained
    on ImageNet.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    seeds = sorted(set(int(s) for s in (seeds or DEFAULT_SEEDS)))
    shot_list = sorted(set(int(k) for k in (shots or DEFAULT_SHOTS[protocol])))
    if any(k < 1 for k in shot_list):
        raise ValueError(f"shots must be >= 1, got {shot_list}")
    chosen = None if not datasets else {canonical_dataset(d) for d in datasets}
    common = dict(root=Path(root) if root is not None else None, backbone=backbone, sets=tuple(sets))
    cells: list[Cell] = []
    if protocol == "crossdataset":
        targets = tuple(t for t in CROSS_TARGETS if chosen is None or t in chosen)
        if chosen is not None and (bad := chosen - set(CROSS_TARGETS)):
            raise ValueError(f"cross-dataset targets must be among {', '.join(CROSS_TARGETS)}; got {sorted(bad)}")
        for k in shot_list:
            for s in seeds:
                cells.append(Cell(protocol, method, CROSS_SOURCE, k, s,
                                  run_dir_for(output, protocol, method, CROSS_SOURCE, k, s), targets, **common))
        return cells
    if chosen is not None and (bad := chosen - set(DATASETS)):
        raise ValueError(f"{protocol} runs on the 11 datasets {', '.join(DATASETS)}; got {sorted(bad)}")
    for d in DATASETS:
        if chosen is not None and d not in chosen:
            continue
        for k in shot_list:
            for s in seeds:
                cells.append(Cell(protocol, method, d, k, s, run_dir_for(output, protocol, method, d, k, s),
                                  **common))
    return cells


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
            raise ValueError(f"--shard expects I/N (e.g. 0/4) or 'slurm', got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= I < N (I is 0-based: "
                         f"use --array=0-{max(count - 1, 0)} in Slurm, or --shard slurm)")
    return index, count


def take_shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Cells whose position in the canonical grid is `index` modulo `count`."""
    return [c for i, c in enumerate(cells) if i % count == index]


def grid_spec(cells: Iterable[Cell]) -> dict:
    """The grid as data (written to `<protocol>/<method>/grid-*.json` so the report knows what is expected)."""
    cells = list(cells)
    return {
        "protocol": cells[0].protocol if cells else None,
        "method": cells[0].method if cells else None,
        "datasets": sorted({c.dataset for c in cells}, key=ALL_DATASETS.index),
        "targets": list(cells[0].targets) if cells else [],
        "shots": sorted({c.shots for c in cells}),
        "seeds": sorted({c.seed for c in cells}),
    }
