"""Learning-rate schedule and the per-epoch batch order.

Both are plain functions of (config, epoch) so that a resumed run, or a run split over
several processes, follows exactly the trajectory of one uninterrupted process.
"""
from __future__ import annotations

import math

import torch

from mmrl.engine.distributed import global_batches, rank_slice


def lr_at_epoch(epoch: int, optim) -> float:
    """Learning rate of 0-indexed ``epoch`` (docs/method.md#optimisation).

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


def rank_batches(seed: int, epoch: int, n: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> list[tuple[list[int], torch.Tensor, int]]:
    """This process's share of every global batch of one epoch.

    The order is ONE permutation of ``range(n)`` seeded from (seed, epoch)
    (:func:`mmrl.engine.distributed.global_batches`), cut into global batches of
    ``batch_size``. Like Dassl's training loader, the last incomplete global batch is
    dropped when there is at least one full batch (``drop_last``). Each rank takes its
    contiguous slice of every global batch (:func:`mmrl.engine.distributed.rank_slice`).

    Returns one ``(indices, weights (b,), global batch size)`` per global batch: the dataset
    indices this rank loads, 1 for a real sample and 0 for the padding sample of a rank
    that got no sample, and the denominator of the batch mean. Every rank gets the same
    number of batches, so data-parallel ranks step together.
    """
    if n <= 0:
        return []
    batches = global_batches(n, batch_size, seed, epoch)
    if drop_last and n >= batch_size and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    out = []
    for b in batches:
        idx, w = rank_slice(b, rank, world_size)
        out.append((idx.tolist(), w, len(b)))
    return out


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int, rank: int = 0, world_size: int = 1,
                  drop_last: bool = True) -> list[list[int]]:
    """This process's batches of one epoch, as lists of dataset indices (see :func:`rank_batches`).

    With ``world_size = 1`` these are the global batches; with ``world_size > 1`` each
    rank's slice of them, so the union over ranks is the single-process batch (a rank
    without a sample in a short batch gets the padding sample that :func:`rank_batches`
    marks with weight 0).
    """
    return [idx for idx, _, _ in rank_batches(seed, epoch, n, batch_size, rank, world_size, drop_last)]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of (global) batches :func:`epoch_batches` yields for ``n`` samples."""
    if n <= 0:
        return 0
    if drop_last and n >= batch_size:
        return n // batch_size
    return math.ceil(n / batch_size)
