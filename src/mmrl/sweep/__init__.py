"""Sweeps: a protocol's grid of runs, run in parallel, sharded and resumable; torch-free.

``ablation`` (``--vary``: grid points) -> ``grid`` (cells and shards) -> ``state`` (where each cell stands; claims) -> ``runner``
(subprocesses from the threads of :mod:`mmrl.jobs`) -> ``reproduce`` (`mmrl reproduce`: the grid, then the
report). The names most callers need are importable from here: ``from mmrl import sweep``.
"""
from __future__ import annotations

from mmrl.engine.lock import (BOOT_ID, HOST, Claim, ClaimResult, Heartbeat, acquire_claim, describe_holder,
                              pid_alive, release_claim)
from mmrl.sweep.ablation import Vary, check_grid, parse_vary, point_dir, points
from mmrl.sweep.grid import (Cell, EvalJob, build_grid, canonical_dataset, grid_spec, is_user_dataset, parse_shard,
                             run_dir_for, take_shard)
from mmrl.sweep.runner import Outcome, SubprocessRunner, SweepInterrupted, run_cell, run_cells
from mmrl.sweep.state import CellState, cell_state, claim_path, read_claim_holder
from mmrl.vocab import (ALL_DATASETS, CROSS_SOURCE, CROSS_TARGETS, DATASETS, DEFAULT_SEEDS, DEFAULT_SHOTS, PROTOCOLS,
                        VARIANTS)

__all__ = ["Vary", "check_grid", "parse_vary", "point_dir", "points", "Cell", "EvalJob", "build_grid", "is_user_dataset", "canonical_dataset", "grid_spec", "parse_shard", "run_dir_for", "take_shard",
           "CellState", "cell_state", "claim_path", "read_claim_holder", "Outcome", "SubprocessRunner", "SweepInterrupted", "run_cell",
           "run_cells", "BOOT_ID", "HOST", "Claim", "ClaimResult", "Heartbeat", "acquire_claim", "describe_holder",
           "pid_alive", "release_claim", "ALL_DATASETS", "CROSS_SOURCE", "CROSS_TARGETS", "DATASETS",
           "DEFAULT_SEEDS", "DEFAULT_SHOTS", "PROTOCOLS", "VARIANTS"]
