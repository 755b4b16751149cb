"""Data parallelism under PyTorch's own ``torchrun``: process group, batch split, reductions.

Reproducible across world sizes: every epoch's order is ONE seeded global permutation
cut into global batches (:func:`global_batches`); each rank takes a contiguous slice of
every global batch (:func:`rank_slice`), and the loss is scaled so that DDP's gradient
average equals the single-process gradient of the global batch (``MMRL.loss``'s
``batch_size`` / ``world_size``). Augmentation randomness is per sample, seeded from
(seed, epoch, index) in :class:`mmrl.data.ImageDataset`, so it does not depend on which
process draws the sample. A rank with no sample in a short last batch runs one
zero-weight padding sample so that every trainable tensor gets a (zero) gradient.

Evaluation shards the test set by whole evaluation batches (:func:`shard_indices` over
the batches), so every image is computed in the same batch as in one process and the
gathered logits are bit-identical to a single-process evaluation.

Single process (no ``WORLD_SIZE`` > 1 in the environment) everything here is a no-op.

``MMRL_DIST_BACKEND=nccl|gloo`` overrides the backend (default: NCCL when the device is CUDA,
else gloo). With it set, local ranks are placed on the GPUs round-robin (``cuda:LOCAL_RANK %
count``), so several processes can share one GPU: gloo on CUDA tensors allows that (NCCL
refuses two ranks on one device); useful to test data parallelism on a one-GPU machine.

Testing aid: ``MMRL_TEST_FAIL_RANK=R`` (and optionally ``MMRL_TEST_FAIL_STEP=S``, default
1) makes rank R raise a RuntimeError just before optimiser step S of ``mmrl train``
(:func:`failure_hook`), to check that a failing rank stops the whole job.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mmrl.config import ConfigError
from mmrl.errors import UserError

LOG = logging.getLogger("mmrl")
T = TypeVar("T")


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


def env_info() -> DistInfo:
    """Rank, world size and local rank that torchrun put in the environment (no process group needed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def current() -> DistInfo:
    """The initialised process group's rank/world size, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def init_distributed(device: str | torch.device | None = "auto") -> DistInfo:
    """Join the process group torchrun set up (NCCL when ``device`` resolves to CUDA, else gloo).

    ``device`` is the config's device spec (``auto``, ``cpu``, ``cuda``, ``cuda:N``). A no-op
    returning a single-process DistInfo when ``WORLD_SIZE`` is unset or 1; idempotent.
    The collective timeout (``MMRL_DIST_TIMEOUT_S``, default 1800 s) bounds how long the
    others wait for a rank that hangs; torchrun itself stops the remaining workers when one
    exits with an error. Ranks other than 0 log warnings and errors only.
    """
    env = env_info()
    if not env.enabled:
        return DistInfo()
    if dist.is_initialized():
        return current()
    spec = "auto" if device is None else str(device)
    on_cuda = torch.cuda.is_available() and (spec == "auto" or spec.startswith("cuda"))
    forced = os.environ.get("MMRL_DIST_BACKEND", "")
    if forced not in ("", "nccl", "gloo"):
        raise ConfigError(f"MMRL_DIST_BACKEND={forced!r}: expected nccl or gloo")
    backend = forced or ("nccl" if on_cuda else "gloo")
    if on_cuda:
        if not forced and env.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {env.local_rank}, but only {torch.cuda.device_count()} CUDA device(s) "
                              "here: start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(_gpu_index(env.local_rank))
    timeout_s = os.environ.get("MMRL_DIST_TIMEOUT_S", "1800")
    try:
        timeout = timedelta(seconds=float(timeout_s))
    except ValueError:
        raise ConfigError(f"MMRL_DIST_TIMEOUT_S={timeout_s!r}: expected a number of seconds") from None
    dist.init_process_group(backend, timeout=timeout)
    info = current()
    if not info.is_main:
        LOG.setLevel(logging.WARNING)  # progress and results come from rank 0 only
    return info


def _gpu_index(local_rank: int) -> int:
    """This process's GPU: its local rank, round-robin when ``MMRL_DIST_BACKEND`` lets ranks share GPUs."""
    if os.environ.get("MMRL_DIST_BACKEND"):
        return local_rank % max(torch.cuda.device_count(), 1)
    return local_rank


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Under torchrun a CUDA device means this process's GPU, ``cuda:LOCAL_RANK``."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", _gpu_index(info.local_rank))
    return device


def shutdown() -> None:
    """Leave the process group (local; no collective), so that peers waiting on us fail fast."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_cli(fn: Callable[[], int]) -> int:
    """Run a command's body; under torchrun name the failing rank and leave the process group at once.

    An exception (or a non-zero status) on one rank must not leave the others waiting in a
    collective: the rank reports itself on stderr, destroys its process group (the peers'
    pending collectives then fail instead of waiting for ``MMRL_DIST_TIMEOUT_S``) and exits
    non-zero, which makes torchrun stop the remaining workers.
    """
    env = env_info()
    if not env.enabled:
        return fn()
    where = f"rank {env.rank} of {env.world_size} (local rank {env.local_rank})"
    try:
        rc = fn()
    except BaseException as e:
        peer = lost_peer(e)
        what = f"stops: {describe_error(e)}" if peer else f"failed: {type(e).__name__}: {e}"
        print(f"mmrl: error: {where} {what}", file=sys.stderr, flush=True)
        try:
            shutdown()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        if peer:  # not this rank's fault: no traceback
            return 1
        raise
    if rc:
        print(f"mmrl: {where} stops with exit status {rc}", file=sys.stderr, flush=True)
    else:
        # every rank has finished its collectives before any tears the group down: gloo aborts
        # (SIGABRT) a process whose peer closes the connection under an operation still in flight
        dist.barrier()
    shutdown()
    return rc


_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
              "communicator was aborted", "Broken pipe")


def lost_peer(e: BaseException) -> bool:
    """Whether a collective failed because another rank went away (gloo/NCCL error texts)."""
    network_error = getattr(dist, "DistNetworkError", None)
    return (network_error is not None and isinstance(e, network_error)) or any(s in str(e) for s in _PEER_LOST)


def describe_error(e: BaseException) -> str:
    """``Type: message``, or for a lost peer a sentence that points at the other rank's error."""
    if lost_peer(e):
        return ("another process of the job failed or disappeared (its own error is in its output); "
                f"this one stopped in a collective: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return f"{type(e).__name__}: {e}"


def failure_hook(rank: int, step: int) -> None:
    """Testing aid: raise on rank ``$MMRL_TEST_FAIL_RANK`` just before optimiser step
    ``$MMRL_TEST_FAIL_STEP`` (default 1); does nothing when the variable is unset."""
    want = os.environ.get("MMRL_TEST_FAIL_RANK")
    if want is not None and int(want) == rank and step == int(os.environ.get("MMRL_TEST_FAIL_STEP", "1")):
        raise RuntimeError(f"simulated failure of rank {rank} at step {step} (MMRL_TEST_FAIL_RANK={want})")


# --------------------------------------------------------------------------- batches
def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch's order: a permutation of range(n) seeded from (seed, epoch), cut into
    global batches of ``batch_size`` (the last may be shorter). Same on every rank."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    order = torch.randperm(n, generator=g)
    return list(order.split(batch_size))


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous slice of a global batch (1-D index tensor), and per-sample weights.

    ``torch.tensor_split`` gives slice sizes differing by at most one, in rank order, so the
    concatenation over ranks is the global batch. Returns ``(indices (b,), weights (b,))``;
    a rank left without samples gets the batch's first index with weight 0 (a padding
    sample), so every rank runs forward and backward.
    """
    part = torch.tensor_split(batch, world_size)[rank]
    if len(part) == 0:
        return batch[:1], torch.zeros(1)
    return part, torch.ones(len(part))


def shard_indices(n: int, info: DistInfo) -> range:
    """This rank's contiguous share of range(n) (sizes differ by at most one, rank order)."""
    per, extra = divmod(n, info.world_size)
    start = info.rank * per + min(info.rank, extra)
    return range(start, start + per + (1 if info.rank < extra else 0))


# --------------------------------------------------------------------------- collectives
def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity on one process)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Gather one picklable object per rank (our own tensors/lists, never files) in rank order."""
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


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result.

    If it raises there, every rank raises: rank 0 the original exception, the others a
    ConfigError (or a UserError) with the same message when it was one (so all ranks exit
    alike, with one line), else a RuntimeError naming rank 0's error. Single process: just ``fn()``.
    """
    if not info.enabled:
        return fn()
    result, error, err = None, None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:  # reported to the other ranks, then re-raised below
            err = e
            error = (type(e).__name__, str(e), "config" if isinstance(e, ConfigError)
                     else "user" if isinstance(e, UserError) else "")
    result, error = broadcast_object((result, error), info)
    if err is not None:
        raise err
    if error is not None:
        name, msg, kind = error
        if kind == "config":
            raise ConfigError(msg)
        if kind == "user":
            raise UserError(msg)
        raise RuntimeError(f"rank 0 failed: {name}: {msg}")
    return result


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` without buffer syncing in forward.

    The frozen CLIP's and the class texts' buffers are identical on every rank (same
    backbone file, same seed), so only gradients need communicating. Newer PyTorch spells
    ``broadcast_buffers=False`` as ``forward_sync_buffers=False`` (and deprecates the former).
    """
    kw = ({"forward_sync_buffers": False}
          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
          else {"broadcast_buffers": False})
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **kw)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@contextlib.contextmanager
def local_rank0_first(info: DistInfo) -> Iterator[None]:
    """Local rank 0 of each node runs the body first, then the node's other ranks (so that
    what it caches, e.g. downloaded backbone weights, is written once per node). Every rank
    must enter it; a no-op on one process."""
    if info.enabled and info.local_rank != 0:
        barrier(info)
    yield
    if info.enabled and info.local_rank == 0:
        barrier(info)
