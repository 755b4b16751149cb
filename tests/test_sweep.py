"""The reproduction grid, shards and claim files."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from helpers import dead_pid, write_lock_file
from mmrl import sweep
from mmrl.engine import lock
from mmrl.sweep import CROSS_TARGETS, VARIANTS


def test_grid_per_protocol(tmp_path):
    b2n = sweep.build_grid("base2novel", "mmrl", tmp_path)
    assert len(b2n) == 11 * 3
    assert [c.dataset for c in b2n[:4]] == ["ImageNet"] * 3 + ["Caltech101"]
    assert {c.shots for c in b2n} == {16} and [c.seed for c in b2n[:3]] == [1, 2, 3]
    assert b2n[0].run_dir == tmp_path / "base2novel" / "mmrl" / "ImageNet" / "shots_16" / "seed_1"
    assert b2n[0].train_evals == ("ImageNet-base.json", "ImageNet-new.json") and b2n[0].targets == ()

    few = sweep.build_grid("fewshot", "mmrl++", tmp_path)
    assert len(few) == 11 * 5 * 3
    assert [(c.shots, c.seed) for c in few[:6]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert few[0].train_evals == ("ImageNet-all.json",)
    assert few[-1].run_dir == tmp_path / "fewshot" / "mmrl++" / "UCF101" / "shots_16" / "seed_3"

    cross = sweep.build_grid("crossdataset", "mmrl", tmp_path, seeds=[2, 1])
    assert [(c.dataset, c.shots, c.seed) for c in cross] == [("ImageNet", 16, 1), ("ImageNet", 16, 2)]
    assert cross[0].targets == CROSS_TARGETS and len(CROSS_TARGETS) == 14
    assert set(VARIANTS) < set(cross[0].targets) and "ImageNet" not in cross[0].targets
    sub = sweep.build_grid("crossdataset", "mmrl", tmp_path, datasets=["imagenet-a", "dtd"])
    assert sub[0].targets == ("DescribableTextures", "ImageNetA")


def test_grid_subset_order_and_errors(tmp_path):
    # canonical order whatever the argument order, aliases and case accepted
    a = sweep.build_grid("fewshot", "mmrl", tmp_path, datasets=["ucf101", "dtd", "EUROSAT"], shots=[4, 1], seeds=[3])
    assert [(c.dataset, c.shots) for c in a] == [("DescribableTextures", 1), ("DescribableTextures", 4),
                                                 ("EuroSAT", 1), ("EuroSAT", 4), ("UCF101", 1), ("UCF101", 4)]
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        sweep.build_grid("base2novel", "mmrl", tmp_path, datasets=["mnist"])
    with pytest.raises(ValueError, match="ImageNetV2"):
        sweep.build_grid("base2novel", "mmrl", tmp_path, datasets=["ImageNetV2"])
    with pytest.raises(ValueError, match="targets"):
        sweep.build_grid("crossdataset", "mmrl", tmp_path, datasets=["ImageNet"])
    with pytest.raises(ValueError, match="protocol"):
        sweep.build_grid("zeroshot", "mmrl", tmp_path)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 200])
def test_shards_partition_the_grid(tmp_path, n):
    grid = sweep.build_grid("fewshot", "mmrl", tmp_path)
    shards = [sweep.take_shard(grid, i, n) for i in range(n)]
    names = [c.name for s in shards for c in s]
    assert sorted(names) == sorted(c.name for c in grid)           # every cell ...
    assert len(names) == len(set(names)) == len(grid)              # ... exactly once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    # deterministic: the same call gives the same share
    assert [c.name for c in sweep.take_shard(sweep.build_grid("fewshot", "mmrl", tmp_path), 0, n)] == \
        [c.name for c in shards[0]]


def test_parse_shard():
    assert sweep.parse_shard("0/4") == (0, 4)
    assert sweep.parse_shard("3/4") == (3, 4)
    assert sweep.parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4",
                                       "SLURM_ARRAY_TASK_MIN": "0"}) == (2, 4)
    # --array=1-4 is mapped to 0-based shards
    assert sweep.parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                                       "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "a/b", "3"):
        with pytest.raises(ValueError, match="shard"):
            sweep.parse_shard(bad)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID"):
        sweep.parse_shard("slurm", {})


def test_claim_exclusive_and_release(tmp_path):
    p = tmp_path / "a" / "seed_1.claim"
    first = sweep.acquire_claim(p)
    assert first.claim is not None and p.exists()
    info = json.loads(p.read_text())
    assert info["pid"] == os.getpid() and info["host"] == sweep.HOST and "time" in info
    second = sweep.acquire_claim(p)  # our own live pid holds it: not stale
    assert second.claim is None and second.holder["token"] == first.claim.token
    sweep.release_claim(first.claim)
    assert not p.exists()
    assert sweep.acquire_claim(p).claim is not None


def test_stale_claims(tmp_path):
    p = tmp_path / "seed_1.claim"
    # dead process on this host: taken over
    write_lock_file(p, pid=dead_pid())
    got = sweep.acquire_claim(p)
    assert got.claim is not None and json.loads(p.read_text())["pid"] == os.getpid()
    sweep.release_claim(got.claim)
    # live pid, but the pid was reused by another process (start time differs): taken over
    write_lock_file(p, pid=os.getpid(), proc_start="1")
    if lock._proc_start(os.getpid()):
        assert sweep.acquire_claim(p).claim is not None
        p.unlink()
    # another host: respected while fresh, taken over once older than the timeout
    write_lock_file(p, host="elsewhere", boot_id="x", pid=1)
    assert sweep.acquire_claim(p, timeout_s=100).holder["host"] == "elsewhere"
    assert sweep.acquire_claim(p, timeout_s=None).claim is None
    old = time.time() - 1000
    os.utime(p, (old, old))
    assert sweep.acquire_claim(p, timeout_s=None).claim is None   # no timeout: never
    got = sweep.acquire_claim(p, timeout_s=100)
    assert got.claim is not None
    # releasing does not remove someone else's claim
    write_lock_file(p, host="elsewhere", pid=1)
    sweep.release_claim(got.claim)
    assert p.exists()


def test_claim_race_one_winner(tmp_path):
    """Many threads claiming the same fresh / stale file: exactly one wins each time."""
    for stale in (False, True):
        p = tmp_path / f"race_{stale}.claim"
        if stale:
            write_lock_file(p, pid=dead_pid())
        barrier = threading.Barrier(8)
        wins = []

        def go():
            barrier.wait()
            r = sweep.acquire_claim(p)
            if r.claim is not None:
                wins.append(r.claim)
        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert json.loads(p.read_text())["token"] == wins[0].token
        assert not p.with_name(p.name + ".takeover").exists()


def test_heartbeat_refreshes_claims(tmp_path):
    p = tmp_path / "x.claim"
    got = sweep.acquire_claim(p)
    old = time.time() - 1000
    os.utime(p, (old, old))
    with sweep.Heartbeat(0.02) as hb:
        hb.add(p)
        time.sleep(0.2)
    assert time.time() - p.stat().st_mtime < 10
    sweep.release_claim(got.claim)


def test_claimed_cell_is_skipped(tmp_path):
    cell = sweep.build_grid("base2novel", "mmrl", tmp_path, datasets=["EuroSAT"], seeds=[1])[0]
    write_lock_file(sweep.claim_path(cell), host="node7", boot_id="b", pid=42, time_iso="2025-01-01T00:00")
    calls = []
    out = sweep.run_cell(cell, lambda c: calls.append(c) or 0, lambda c, t: 0, claim_timeout=3600)
    assert out.status == "elsewhere" and "node7" in out.detail and calls == []
    assert sweep.claim_path(cell) == cell.run_dir.parent / "seed_1.claim"


def test_interrupt_stops_new_cells_and_releases_claims(tmp_path):
    import _thread

    cells = sweep.build_grid("base2novel", "mmrl", tmp_path, datasets=["EuroSAT"], seeds=[1, 2, 3])
    calls, stopped = [], threading.Event()

    def train(cell):  # Ctrl-C arrives while the first run trains; the run ends when its child is stopped
        calls.append(cell.name)
        _thread.interrupt_main()
        assert stopped.wait(10)
        return -15

    with pytest.raises(KeyboardInterrupt):
        sweep.run_cells(cells, train, lambda c, t: 0, workers=[None], log=lambda s: None,
                        on_interrupt=stopped.set)
    assert calls == [cells[0].name]
    assert not list(tmp_path.glob("**/*.claim"))


def test_one_alias_table_for_train_and_sweeps(tmp_path):
    """`mmrl reproduce --datasets` accepts every name `mmrl train --dataset` accepts (one table)."""
    from mmrl import data, vocab

    names = (list(vocab.DATASET_ALIASES) + list(vocab.DATASET_FOLDERS.values()) + list(vocab.ALL_DATASETS)
             + ["textures", "in1k", "imagenet-v2", "fgvc", "sketch", "ImageNet_A", "Food-101", "OXFORD PETS"])
    for name in names:
        assert sweep.canonical_dataset(name) == data.canonical_name(name) == vocab.canonical_benchmark(name), name
    cells = sweep.build_grid("fewshot", "mmrl", tmp_path, datasets=["textures", "fgvc"], shots=[1], seeds=[1])
    assert [c.dataset for c in cells] == ["FGVCAircraft", "DescribableTextures"]
    assert vocab.canonical_benchmark("mnist") is None
