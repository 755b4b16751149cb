"""The per-epoch learning-rate schedule (docs/method.md#optimisation) and the seeded global batch order."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import make_benchmark_dataset, read_jsonl, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.config import OptimConfig
from mmrl.engine import epoch_batches, lr_at_epoch

torch.set_num_threads(1)


def spec_lr(e: int, lr: float, E: int, warmup: bool, warmup_lr: float = 1e-5) -> float:
    """docs/method.md#optimisation, written out: warm-up epoch at 1e-5, then lr (1 + cos(pi (e - 1) / E)) / 2;
    without warm-up lr (1 + cos(pi e / E)) / 2."""
    if warmup:
        return warmup_lr if e == 0 else lr * (1 + math.cos(math.pi * (e - 1) / E)) / 2
    return lr * (1 + math.cos(math.pi * e / E)) / 2


@pytest.mark.parametrize("warmup", [True, False])
def test_lr_at_epoch_matches_spec(warmup):
    o = OptimConfig(lr=2e-3, epochs=10, warmup_epochs=1 if warmup else 0, warmup_lr=1e-5)
    got = [lr_at_epoch(e, o) for e in range(10)]
    assert got == pytest.approx([spec_lr(e, 2e-3, 10, warmup) for e in range(10)], rel=1e-12, abs=0)
    assert got[1 if warmup else 0] == pytest.approx(2e-3)  # the first cosine epoch is at the peak


@pytest.mark.parametrize("warmup", [1, 0])
def test_training_uses_the_schedule(tmp_path, warmup):
    clip = write_tiny_clip(tmp_path / "clip.pt")
    make_benchmark_dataset(tmp_path / "data", "DescribableTextures", classes=("a", "b"))
    run = tmp_path / "run"
    extra = ["--set", "optim.epochs=4", "--set", f"optim.warmup_epochs={warmup}", "--set", "optim.lr=3e-3"]
    assert main(tiny_train_argv(clip, tmp_path / "data", run, shots=2, extra=extra)) == 0
    rows = read_jsonl(run / "metrics.jsonl")
    per_epoch = {r["epoch"]: r["lr"] for r in rows}
    assert sorted(per_epoch) == [0, 1, 2, 3]
    for e, lr in per_epoch.items():
        assert lr == pytest.approx(spec_lr(e, 3e-3, 4, warmup == 1), rel=1e-12)


def test_epoch_batches_seeded_global_permutation():
    a = epoch_batches(seed=1, epoch=0, n=10, batch_size=4)
    assert a == epoch_batches(seed=1, epoch=0, n=10, batch_size=4)            # depends only on (seed, epoch)
    assert a != epoch_batches(seed=1, epoch=1, n=10, batch_size=4)
    assert a != epoch_batches(seed=2, epoch=0, n=10, batch_size=4)
    assert [len(b) for b in a] == [4, 4]                                       # Dassl: last partial batch dropped
    assert len(set(sum(a, []))) == 8
    full = epoch_batches(seed=1, epoch=0, n=10, batch_size=4, drop_last=False)
    assert full[:2] == a and sorted(sum(full, [])) == list(range(10))          # one permutation, cut in order
    assert epoch_batches(seed=1, epoch=0, n=3, batch_size=4) == [full_b for full_b in
                                                                 epoch_batches(1, 0, 3, 4, drop_last=False)]
    assert len(epoch_batches(seed=1, epoch=0, n=3, batch_size=4)[0]) == 3      # fewer than a batch: kept


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_partition_each_global_batch(world_size):
    glob = epoch_batches(seed=5, epoch=2, n=37, batch_size=8)
    per_rank = [epoch_batches(5, 2, 37, 8, rank=r, world_size=world_size) for r in range(world_size)]
    for i, g in enumerate(glob):
        assert sum((pr[i] for pr in per_rank), []) == g
