"""Data parallelism under PyTorch's own ``torchrun``: process group, batch split, reductions.

Reproducible across world sizes: every epoch's order is ONE seeded global permutation
cut into global batches (:func:`global_batches`); each rank takes a contiguous slice of
every global batch (:func:`rank_slice`), and the loss is scaled so that DDP's gradient
average equals the single-process gradient of the global batch (``MMRL.loss``'s
``batch_size`` / ``world_size``). Augmentation randomness is per sample, seeded from
(seed, epoch, index) in :class:`mmrl.data.ImageDataset`, so it does not depend on which
process draws the sample. A rank with no sample in a short last batch runs one
zero-weight padding sample so that every trainable tensor gets a (zero) gradient.

Single process (no ``WORLD_SIZE`` in the environment) everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs).

    The collective timeout (``MMRL_DIST_TIMEOUT_S``, default 1800 s) bounds how long the
    others wait for a rank that died; torchrun itself stops the remaining workers when one
    exits with an error.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_nccl = str(device).startswith("cuda") and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=float(os.environ.get("MMRL_DIST_TIMEOUT_S", "1800")))
    dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch's order: a permutation of range(n) seeded from (seed, epoch), cut into
    global batches of ``batch_size`` (the last may be shorter). Same on every rank."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    order = torch.randperm(n, generator=g)
    return list(order.split(batch_size))


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous slice of a global batch, and per-sample weights.

    Returns ``(indices, weights)``; a rank left without samples gets the batch's first
    index with weight 0 (a padding sample), so every rank runs forward and backward.
    """
    part = torch.tensor_split(batch, world_size)[rank]
    if len(part) == 0:
        return batch[:1], torch.zeros(1)
    return part, torch.ones(len(part))


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity on one process)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Gather one picklable object per rank (our own dicts/lists, never files) in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard_indices(n: int, info: DistInfo) -> range:
    """Evaluation: this rank's contiguous share of range(n) (sizes differ by at most one)."""
    per, extra = divmod(n, info.world_size)
    start = info.rank * per + min(info.rank, extra)
    return range(start, start + per + (1 if info.rank < extra else 0))
