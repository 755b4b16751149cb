"""The torch Dataset over a list of `Datum`, with per-sample deterministic augmentation."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import signal
import sys
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .core import LOG, Datum
from .images import BadImageError, find_bad_images, load_image  # noqa: F401 (this module's interface too)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class ImageDataset(Dataset):
    """items -> (image tensor (3, res, res), label, index).

    The transform's randomness comes from torch's CPU generator seeded with
    `sample_seed(seed, epoch, index)` inside `torch.random.fork_rng`, so the
    same (seed, epoch, index) gives a bit-identical tensor in any process and
    with any number of workers, and the caller's RNG state is untouched. Call
    `set_epoch(e)` before iterating each epoch (DataLoader workers copy the
    dataset when an iterator starts, so do not use persistent_workers).

    An unreadable image raises BadImageError naming the file. With
    `skip_bad=True` every image is checked (exists and decodes) here, at
    construction; bad ones are dropped from `items` (so indices refer to the
    filtered list), counted in `num_bad`, listed in `bad` and in one warning.
    """

    def __init__(self, items: Sequence[Datum], transform: Callable, seed: int = 0, skip_bad: bool = False):
        self.items = list(items)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.bad: list[tuple[str, str]] = []
        if skip_bad:
            self.bad = find_bad_images(self.items, decode=True)
            if self.bad:
                bad = {p for p, _ in self.bad}
                self.items = [d for d in self.items if d.impath not in bad]
                LOG.warning("skipping %d unreadable image(s): %s", len(self.bad),
                            "; ".join(f"{p} ({r})" for p, r in self.bad))

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        d = self.items[index]
        img = load_image(d.impath)
        with torch.random.fork_rng(devices=[]):
            # CPU generator only: torch.manual_seed would also reseed CUDA, which fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            x = self.transform(img)
        return x, d.label, index


DEFAULT_MAX_WORKERS = 4
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset/Slurm), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_num_workers(cap: int = DEFAULT_MAX_WORKERS) -> int:
    """Data-loading workers when ``data.num_workers`` is null: one per usable CPU, at most ``cap``
    (more workers than CPUs only compete with the training process, and torch warns)."""
    return max(1, min(cap, usable_cpus()))


def resolve_num_workers(num_workers: int | None) -> int:
    """``num_workers`` as given, or :func:`default_num_workers` for None."""
    return default_num_workers() if num_workers is None else int(num_workers)


def end_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker is killed when its parent dies, even by kill -9.

    Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (torch's own watchdog notices a dead parent
    only every 5 s). The signal follows the *thread* that started the worker, so iterate
    loaders from a thread that lives as long as they do (the main thread here). A parent
    that died before the call leaves the worker re-parented: it exits at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: keep torch's watchdog
        return
    if os.getppid() != parent_pid:
        os._exit(0)


def worker_options(num_workers: int | None) -> dict[str, Any]:
    """``num_workers`` and ``worker_init_fn`` keyword arguments of a DataLoader: None = the
    machine's default, workers that end with this process."""
    n = resolve_num_workers(num_workers)
    return {"num_workers": n, "worker_init_fn": functools.partial(end_with_parent, os.getpid()) if n > 0 else None}


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int | None = 0,
                 pin_memory: bool | None = None, sampler=None, seed: int = 0) -> DataLoader:
    """A DataLoader like Dassl's: train shuffles (generator seeded with `seed`) and drops the last
    incomplete batch when there is at least one full batch; pin_memory defaults to CUDA availability."""
    gen = None
    if train and sampler is None:
        gen = torch.Generator()
        gen.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
        **worker_options(workers), pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=train and len(dataset) >= batch_size, generator=gen,
    )
