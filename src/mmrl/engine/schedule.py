"""Learning-rate schedule and the per-epoch batch order.

Both are plain functions of (config, epoch) so that a resumed run, or a run split over
several processes, follows exactly the trajectory of one uninterrupted process.
"""
from __future__ import annotations

import math

from mmrl.engine.distributed import global_batches


def lr_at_epoch(epoch: int, optim) -> float:
    """Learning rate of 0-indexed ``epoch`` (method.md, "Optimisation").

    With ``W = optim.warmup_epochs`` warm-up epochs, epochs ``0..W-1`` run at the constant
    ``optim.warmup_lr``; epoch ``e >= W`` runs at ``lr * (1 + cos(pi * (e - W) / E)) / 2``
    with ``E = optim.epochs`` (Dassl's ConstantWarmupScheduler around CosineAnnealingLR).
    W = 1 gives the spec's ``lr (1 + cos(pi (e - 1) / E)) / 2``; W = 0 gives
    ``lr (1 + cos(pi e / E)) / 2``.

    Args:
        epoch: 0-indexed epoch.
        optim: an ``OptimConfig`` (or a ``RunConfig``, whose ``.optim`` is used).
    """
    o = getattr(optim, "optim", optim)
    W, E = o.warmup_epochs, o.epochs
    if epoch < W:
        return float(o.warmup_lr)
    return float(o.lr * (1.0 + math.cos(math.pi * (epoch - W) / E)) / 2.0)


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int, rank: int = 0, world_size: int = 1,
                  drop_last: bool = True) -> list[list[int]]:
    """This process's batches of one epoch, as lists of dataset indices.

    The order is ONE permutation of ``range(n)`` seeded from (seed, epoch)
    (:func:`mmrl.engine.distributed.global_batches`), cut into global batches of
    ``batch_size``. Like Dassl's training loader, the last incomplete global batch is
    dropped when there is at least one full batch (``drop_last``). With ``world_size > 1``
    each rank takes its contiguous slice of every global batch (``torch.tensor_split``), so
    the union over ranks is the single-process batch.
    """
    if n <= 0:
        return []
    batches = global_batches(n, batch_size, seed, epoch)
    if drop_last and n >= batch_size and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    if world_size > 1:
        batches = [b.tensor_split(world_size)[rank] for b in batches]
    return [b.tolist() for b in batches]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of (global) batches :func:`epoch_batches` yields for ``n`` samples."""
    if n <= 0:
        return 0
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)
