"""Data parallelism under torchrun (CPU, gloo on 127.0.0.1): the batch split, the gradient
identity it relies on, and end-to-end `mmrl train` / `mmrl eval` with 2 processes compared
with one process, a failing rank, and `--resume` after a crash.

The end-to-end runs start `python -m torch.distributed.run` (torchrun) as subprocesses with
OMP_NUM_THREADS=1 (the test machine's cores are shared); each costs a few seconds of
interpreter start-up, so the module runs 4 of them.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_benchmark_dataset, read_jsonl, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.engine.distributed import DistInfo, rank_slice, shard_indices
from mmrl.engine.schedule import epoch_batches, rank_batches

torch.set_num_threads(1)

# 2 base classes x 4 shots = 8 training images; global batch 3 -> 2 steps per epoch (the last
# 2 images dropped, like Dassl), each split 2 + 1 over 2 ranks (uneven slices); 3 epochs, no
# warm-up so that every step moves the weights at the full learning rate. 6 test images per
# subsample in eval batches of 4 -> rank 0 evaluates one batch of 4, rank 1 one batch of 2.
RUN_SETTINGS = ["--set", "optim.epochs=3", "--set", "optim.batch_size=3", "--set", "optim.warmup_epochs=0",
                "--set", "eval.batch_size=4"]
TORCHRUN_TIMEOUT_S = 120


# --------------------------------------------------------------------------- batch split (unit)
@pytest.mark.parametrize("n,bs,world_size", [(10, 4, 2), (8, 3, 2), (37, 8, 3), (3, 4, 2), (2, 4, 3), (1, 4, 2),
                                        (9, 4, 4)])
def test_rank_batches_partition_every_global_batch(n, bs, world_size):
    glob = epoch_batches(seed=3, epoch=1, n=n, batch_size=bs)  # the single-process batches
    one = rank_batches(3, 1, n, bs)  # one process: the global batches, all weights 1
    assert [i for i, _, _ in one] == glob and all(torch.equal(w, torch.ones(len(i))) and g == len(i)
                                                  for i, w, g in one)
    per_rank = [rank_batches(3, 1, n, bs, rank=r, world_size=world_size) for r in range(world_size)]
    assert all(len(p) == len(glob) for p in per_rank)  # every rank steps the same number of times
    for k, g in enumerate(glob):
        real, padded_ranks = [], 0
        for r in range(world_size):
            idx, w, size = per_rank[r][k]
            assert size == len(g) and len(idx) == len(w) >= 1
            if w.sum() == 0:  # a rank without a sample: exactly one padding sample from this batch
                assert len(idx) == 1 and idx[0] in g
                padded_ranks += 1
            else:
                assert torch.equal(w, torch.ones(len(idx)))
                real += idx
        assert real == g  # every sample of the global batch exactly once, in order, over the ranks
        assert padded_ranks == max(0, world_size - len(g))
        # epoch_batches(rank, world) lists the same indices as rank_batches
        assert [epoch_batches(3, 1, n, bs, rank=r, world_size=world_size)[k] for r in range(world_size)] == \
            [per_rank[r][k][0] for r in range(world_size)]


def test_rank_slice_and_eval_shards():
    idx, w = rank_slice(torch.tensor([7, 2, 5]), 1, 2)
    assert idx.tolist() == [5] and w.tolist() == [1.0]
    idx, w = rank_slice(torch.tensor([7]), 1, 2)
    assert idx.tolist() == [7] and w.tolist() == [0.0]  # padding: the batch's first sample, weight 0
    for n in (0, 1, 5, 12):
        for world in (1, 2, 3, 5):
            shards = [shard_indices(n, DistInfo(r, world)) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))  # contiguous, in rank order
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_rank_losses_average_to_the_single_process_gradient(tmp_path, method):
    """What every rank's `_ddp_train_step` computes, without a process group: per-rank losses
    with the global batch size, world size and rank_batches' weights; DDP averages their
    gradients. The average equals the single-process gradient, also with a padding rank
    (global batch of 2 over 3 ranks), and the summed metrics equal the single-process loss."""
    from mmrl.models import build_method, load_backbone, method_config

    torch.manual_seed(0)
    lora = {"proj_lora_rank": 4, "aligner_lora_rank": 2} if method == "mmrl++" else {}
    model = build_method(load_backbone(str(write_tiny_clip(tmp_path / "clip.pt"))),
                         method_config(method, first_rep_block=2, n_rep_tokens=2, rep_dim=16, **lora)).double()
    model.set_classes(["a", "b", "c"], "a photo of a {}.")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # away from the initial values (LoRA B's start at 0)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    for n, world in ((5, 2), (2, 3)):
        single = model.loss(x[:n], y[:n])
        full = torch.autograd.grad(single.total, params)
        grads, loss = [torch.zeros_like(p) for p in params], 0.0
        for r in range(world):
            (idx, w, size), = rank_batches(0, 0, n, n, rank=r, world_size=world)  # one global batch
            rows = torch.tensor(idx)
            out = model(x[rows], y[rows], batch_size=size, weights=w.double(), world_size=world)
            for acc, g in zip(grads, torch.autograd.grad(out.total, params)):
                acc += g / world  # DDP's average
            loss += float(out.sample_part.detach())
        loss += model.cfg.reg_weight * float(single.reg_text.detach())
        # float64: only reassociation of sums differs (~1e-16 relative)
        for a, f in zip(grads, full):
            torch.testing.assert_close(a, f, rtol=1e-9, atol=1e-13)
        assert loss == pytest.approx(float(single.total.detach()), rel=1e-12)


# --------------------------------------------------------------------------- end to end (torchrun)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path, nproc: int = 2, env: dict | None = None):
    """Run `torchrun --nproc_per_node NPROC -m mmrl ARGS`; returns (CompletedProcess, seconds)."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    full_env.update(OMP_NUM_THREADS="1", MMRL_DIST_TIMEOUT_S="60", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "mmrl", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    return proc, time.monotonic() - t0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    clip = write_tiny_clip(base / "clip.pt")
    make_benchmark_dataset(base / "data", "DescribableTextures", per_class=10)
    return {"clip": clip, "root": base / "data", "base": base}


def _argv(world, out: Path) -> list[str]:
    return tiny_train_argv(world["clip"], world["root"], out, protocol="base2novel", shots=4, extra=RUN_SETTINGS)


@pytest.fixture(scope="module")
def runs(world):
    """The same run trained in this process and by 2 torchrun processes."""
    single, ddp = world["base"] / "single", world["base"] / "ddp2"
    assert main(_argv(world, single)) == 0
    proc, _ = _torchrun(_argv(world, ddp), cwd=world["base"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"single": single, "ddp": ddp, "proc": proc}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_training_follows_the_single_process_trajectory(runs):
    single, ddp = runs["single"], runs["ddp"]
    a, b = read_jsonl(single / "metrics.jsonl"), read_jsonl(ddp / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 7))  # written once (by rank 0), 2 steps x 3 epochs
    assert [(r["epoch"], r["batch"], r["lr"]) for r in a] == [(r["epoch"], r["batch"], r["lr"]) for r in b]
    # One process sums each global batch in one fp32 reduction, two processes sum two partial
    # sums (and the metrics in float64): ~1e-7 relative per step, which AdamW's updates carry
    # along; measured max 1.5e-6 over the 6 steps. 1e-5 is far below the step-to-step changes.
    # The terms are compared to 1e-5 of the step's loss: a small term (the CE of a confident
    # prediction, 1 - cos near 0) loses relative digits to cancellation, its precision is set
    # by the logits' scale (measured max: ce_rep 7.8e-7 off at 0.037, i.e. 1.4e-5 relative).
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5), ra["step"]
        for k in ("ce_class", "ce_rep", "reg_image", "reg_text"):
            assert rb[k] == pytest.approx(ra[k], abs=1e-5 * ra["loss"]), (ra["step"], k)
        assert rb["accuracy"] == pytest.approx(ra["accuracy"], abs=1e-4)
    assert len({round(r["loss"], 3) for r in a}) > 3  # the loss really moves
    # Final weights: same origin of the differences; measured max |diff| 5e-8 for weights of
    # magnitude up to 0.4. The exact gradient identity is checked in float64 above.
    wa, wb = load_file(str(single / "adapter.safetensors")), load_file(str(ddp / "adapter.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    # the sharded end-of-training evaluation gives the same results
    ra, rb = _json(single / "results.json"), _json(ddp / "results.json")
    assert {k: ra[k] for k in ("base", "novel", "hm")} == {k: rb[k] for k in ("base", "novel", "hm")}
    for f in ("DescribableTextures-base.json", "DescribableTextures-new.json"):
        ea, eb = _json(single / "eval" / f), _json(ddp / "eval" / f)
        assert (eb["n"], eb["correct"], eb["per_class"]) == (ea["n"], ea["correct"], ea["per_class"]) and eb["n"] == 6
    # rank 0 alone wrote the run directory and printed the results
    info = _json(ddp / "run.json")
    assert info["status"] == "finished" and info["world_size"] == 2 and info["attempts"] == 1
    log = (ddp / "train.log").read_text()
    assert log.count("epoch 1/3") == 1 and log.count("finished") == 1 and "data parallel: 2 processes" in log
    assert runs["proc"].stdout.count("DescribableTextures: base") == 1
    assert not list(ddp.rglob(".*.tmp")) and not (ddp / "checkpoint.safetensors").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_eval_equals_single_process_eval(world, runs):
    run, base = runs["ddp"], world["base"]
    args = ["eval", str(run), "--dataset", "dtd", "--subsample", "base", "--batch-size", "4", "--progress", "lines"]
    assert main(args + ["--predictions", str(base / "p1.jsonl"), "--output-dir", str(base / "e1")]) == 0
    proc, _ = _torchrun(args + ["--predictions", str(base / "p2.jsonl"), "--output-dir", str(base / "e2")],
                        cwd=base)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("accuracy") == 1  # rank 0 reports
    # batches of 4 over 6 images: rank 0 computes one batch, rank 1 the other, exactly as one
    # process batches them, so the logits (and their JSON text) are bit-identical
    p1, p2 = (base / "p1.jsonl").read_text(), (base / "p2.jsonl").read_text()
    assert p1 == p2 and len(p1.splitlines()) == 6
    split = _json(run / "split.json")
    assert [json.loads(line)["image"] for line in p2.splitlines()] == \
        [r[0] for r in split["test"] if r[1] in (0, 1)]  # dataset order (base classes 0 and 1)
    e1, e2 = _json(base / "e1" / "DescribableTextures-base.json"), _json(base / "e2" / "DescribableTextures-base.json")
    for d in (e1, e2):
        d.pop("time_s"), d.pop("predictions"), d.pop("path", None)
    assert e1 == e2


@pytest.fixture(scope="module")
def crashed(world):
    """A torchrun run whose rank 1 raises before step 3 (first step of epoch 2)."""
    out = world["base"] / "crash"
    proc, seconds = _torchrun(_argv(world, out), cwd=world["base"],
                              env={"MMRL_TEST_FAIL_RANK": "1", "MMRL_TEST_FAIL_STEP": "3"})
    return {"run": out, "proc": proc, "seconds": seconds}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_failing_rank_stops_the_job(crashed):
    proc, out = crashed["proc"], crashed["run"]
    assert proc.returncode != 0
    assert crashed["seconds"] < 60  # no rank waits for the collective timeout
    assert "rank 1 of 2" in proc.stderr and "simulated failure of rank 1 at step 3" in proc.stderr
    assert _json(out / "run.json")["status"] != "finished" and not (out / "adapter.safetensors").exists()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    from mmrl.engine.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.safetensors").epoch == 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_under_torchrun_after_a_crash(world, runs, crashed):
    out = crashed["run"]
    proc, _ = _torchrun(["train", "--resume", str(out), "--progress", "lines"], cwd=world["base"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming" in (out / "train.log").read_text()
    # same processes, same slices, same reductions (a sum of 2 terms is order-free): bit-identical
    wa, wb = load_file(str(runs["ddp"] / "adapter.safetensors")), load_file(str(out / "adapter.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    a, b = read_jsonl(runs["ddp"] / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in a] == [(r["step"], r["loss"]) for r in b]
    ra, rb = _json(runs["ddp"] / "results.json"), _json(out / "results.json")
    assert {k: ra[k] for k in ("base", "novel", "hm")} == {k: rb[k] for k in ("base", "novel", "hm")}


# --------------------------------------------------------------------------- backend override
def test_backend_override_is_checked_before_joining(monkeypatch):
    from mmrl.config import ConfigError
    from mmrl.engine.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MMRL_DIST_BACKEND", "mpi")
    with pytest.raises(ConfigError, match="MMRL_DIST_BACKEND='mpi': expected nccl or gloo"):
        init_distributed("cpu")


def test_backend_override_lets_ranks_share_gpus(monkeypatch):
    from mmrl.engine.distributed import local_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    info = DistInfo(rank=1, world_size=2, local_rank=1)
    assert local_device(torch.device("cuda"), info) == torch.device("cuda", 1)  # default: one GPU per rank
    monkeypatch.setenv("MMRL_DIST_BACKEND", "gloo")
    assert local_device(torch.device("cuda"), info) == torch.device("cuda", 0)  # round-robin over 1 GPU
    assert local_device(torch.device("cpu"), info) == torch.device("cpu")
