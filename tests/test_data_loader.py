"""Quiet, sensible defaults: data-loading workers fit the machine and end with their parent; a split built
from raw data is announced once per run."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from helpers import make_folder_dataset, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.config import RunConfig, config_from_dict, dump_config, load_config, resolve_config
from mmrl.data import default_num_workers, worker_options

torch.set_num_threads(1)
PR_GET_PDEATHSIG = 2  # linux/prctl.h


def test_num_workers_default_follows_the_cpus_this_process_may_use():
    assert RunConfig().data.num_workers is None
    assert resolve_config("mmrl", "fewshot", "dtd").data.num_workers is None
    assert default_num_workers() == min(4, len(os.sched_getaffinity(0)))
    # pinned to one CPU (taskset, a Slurm allocation): one worker
    cpu = min(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}}); from mmrl.data import default_num_workers as d; print(d())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip() == "1"


def test_explicit_num_workers_kept(tmp_path):
    for n in (0, 3, 8):
        cfg = resolve_config("mmrl", "fewshot", "dtd", overrides=[f"data.num_workers={n}"])
        assert cfg.data.num_workers == n and worker_options(n)["num_workers"] == n
        (tmp_path / "c.yaml").write_text(dump_config(cfg))
        assert load_config(tmp_path / "c.yaml").data.num_workers == n
    assert config_from_dict({"data": {"dataset": "dtd", "num_workers": None}}, "x").data.num_workers is None
    assert worker_options(0)["worker_init_fn"] is None  # no workers, nothing to set up


class _Probe(Dataset):
    """Each item: the worker's parent-death signal (prctl) and the pid of its parent."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        sig = ctypes.c_int(-1)
        ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
        return torch.tensor([sig.value, os.getppid(), os.getpid()])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_workers_end_with_their_parent():
    """Each worker asks the kernel to kill it when its parent dies (kill -9 included), instead of
    noticing the missing parent on torch's 5-second watchdog."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default workers on this machine: no "too many workers" warning
        rows = torch.cat(list(DataLoader(_Probe(), batch_size=1, **worker_options(None))))
    assert default_num_workers() > 0
    assert set(rows[:, 0].tolist()) == {int(signal.SIGKILL)}
    assert set(rows[:, 1].tolist()) == {os.getpid()} and os.getpid() not in rows[:, 2].tolist()


def test_built_split_announced_once_per_run(tmp_path):
    clip = write_tiny_clip(tmp_path / "clip.pt")
    folder = make_folder_dataset(tmp_path / "pets")
    run = tmp_path / "run"
    # base-to-novel reads the dataset three times: training split, base and novel evaluations
    assert main(tiny_train_argv(clip, tmp_path, run, dataset=f"folder:{folder}", protocol="base2novel",
                                extra=["--set", f"data.cache_dir={tmp_path / 'cache'}"])) == 0
    log = (run / "train.log").read_text()
    assert log.count("no split file") == 1, log
