"""The cost block of a run (mmrl.engine.cost): every field, a fake clock for the times, and the
FLOP count of a tiny ViT step against the hand-computed formula."""
from __future__ import annotations

import json
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import make_benchmark_dataset, read_jsonl, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.engine import cost
from mmrl.models.towers import model_image_size
from mmrl.engine.rundir import load_run, training_classnames, training_template

torch.set_num_threads(1)


class FakeClock:
    """Advances by the listed amounts, one per call."""

    def __init__(self, start: float = 100.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


# --------------------------------------------------------------------------- the meter, with a fake clock
def test_phases_steps_and_block_with_a_fake_clock():
    clock = FakeClock()
    m = cost.CostMeter(clock)
    with m.phase("backbone_load"):
        clock.advance(2.0)
    with m.phase("setup"):
        clock.advance(1.0)
        with m.phase("text_encoding"):
            clock.advance(0.5)
    durations = [0.30, 0.10, 0.20, 0.40, 0.25]
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    x = torch.randn(5, 3)

    for dt in durations:
        def step(dt=dt):
            model(x).sum().backward()
            clock.advance(dt)
            return dt
        assert m.step(step, x) == dt  # the step's result is passed on
    with m.phase("train"):  # the trainer's phase around all epochs
        clock.advance(sum(durations) + 0.05)
    def evaluation(subsample, dt, n):
        clock.advance(dt)
        return {"dataset": "DTD", "subsample": subsample, "n": n, "accuracy": 50.0}
    assert m.evaluation(lambda: evaluation("base", 3.0, 10))["accuracy"] == 50.0
    m.evaluation(lambda: evaluation("new", 4.0, 12))
    b = m.block(device=torch.device("cpu"), precision="fp32", model=model, steps=7, images_seen=35, train_s=10.0)
    assert b["wall_s"]["backbone_load"] == 2.0
    assert b["wall_s"]["setup"] == 1.5 and b["wall_s"]["text_encoding"] == 0.5
    assert b["wall_s"]["eval"] == {"DTD-base": 3.0, "DTD-new": 4.0}
    assert b["wall_s"]["train"] == 10.0  # all attempts (run.json's train_s), not this attempt's 1.3 s
    assert b["wall_s"]["total"] == pytest.approx(2.0 + 1.5 + 1.3 + 7.0 + 1.25, abs=1e-3)
    assert b["median_step_s"] == pytest.approx(statistics.median(durations))
    assert (b["steps"], b["images_seen"], b["images_per_s"]) == (7, 35, 3.5)
    assert m.rank_images == 25 and b["images_evaluated"] == 22
    assert b["parameters"] == {"trainable": 4 * 2 + 2, "frozen": 3 * 4 + 4}
    # the first step was counted: both forwards, and the weight gradient of the trainable layer only
    # (its input, the frozen layer's output, needs no gradient)
    assert b["flops"]["train_step"] == 2 * 5 * 3 * 4 + 2 * 5 * 4 * 2 + 2 * 5 * 4 * 2
    # device-hours: this attempt's wall time plus the earlier attempts' training (10 - 1.3 s)
    assert b["device_hours"] == pytest.approx((b["wall_s"]["total"] + 10.0 - 1.3) / 3600, abs=1e-6)
    assert b["device"]["type"] == "cpu" and b["device"]["threads"] == torch.get_num_threads()
    assert b["device"]["name"] and b["precision"] == "fp32" and b["world_size"] == 1
    assert b["peak_rss_mb"] > 0 and b["cuda_memory_mb"] == {}
    assert "FlopCounterMode" in b["flops"]["how"]


def test_no_step_no_median_and_no_throughput():
    m = cost.CostMeter(FakeClock())
    b = m.block(device=torch.device("cpu"), precision="fp32", model=nn.Linear(2, 2), steps=0, images_seen=0,
                train_s=0.0)
    assert b["median_step_s"] is None and b["images_per_s"] is None and b["flops"]["train_step"] is None


def test_ranks_are_kept_and_summed():
    def rank(i):
        return {"device": {"type": "cuda", "name": f"GPU{i % 2}"}, "precision": "bf16", "world_size": 2,
                "wall_s": {"train": 5.0 + i}, "steps": 4, "images_seen": 32, "peak_rss_mb": 100.0 + i,
                "cuda_memory_mb": {f"cuda:{i}": {"max_allocated": 10.0, "max_reserved": 12.0}},
                "flops": {"train_step": 1000 + i, "per_eval_image": 50, "how": "x"}, "device_hours": 0.5}
    out = cost.combine_ranks([rank(0), rank(1)])
    assert out["ranks"] == [rank(0), rank(1)]
    assert out["device"] == {"type": "cuda", "count": 2, "names": ["GPU0", "GPU1"]}
    assert out["device_hours"] == 1.0 and out["peak_rss_mb"] == 201.0
    assert out["flops"]["train_step"] == 2001  # the global step = the sum of the ranks' slices
    assert set(out["cuda_memory_mb"]) == {"cuda:0", "cuda:1"}
    assert out["steps"] == 4 and out["images_seen"] == 32  # global counts: rank 0's
    assert cost.combine_ranks([rank(0)]) == rank(0)


def test_cuda_memory_read_per_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda i: 5 * 2**20)
    assert cost.cuda_memory_mb(torch.device("cuda:1")) == {"cuda:1": {"max_allocated": 3.0, "max_reserved": 5.0}}


# --------------------------------------------------------------------------- FLOPs of a tiny ViT step
class TinyViT(nn.Module):
    """Patch embedding, class token, pre-norm blocks (attention via SDPA, 4x MLP), linear head."""

    def __init__(self, d=16, patch=4, image=8, layers=2, heads=2, classes=3):
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, d, patch, patch, bias=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d),
            "ln2": nn.LayerNorm(d), "fc1": nn.Linear(d, 4 * d), "fc2": nn.Linear(4 * d, d)}) for _ in range(layers))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        B, T, d = x.shape
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, d)
            x = x + blk["proj"](a)
            x = x + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](x))))
        return self.head(x[:, 0])


def test_tiny_vit_step_flops_match_the_formula():
    B, d, p, image, L, C = 2, 16, 4, 8, 2, 3
    model = TinyViT(d, p, image, L, classes=C)
    x, y = torch.randn(B, 3, image, image), torch.tensor([0, 2])
    _, flops = cost.count_flops(lambda: F.cross_entropy(model(x), y).backward())
    N = (image // p) ** 2
    T = N + 1
    patch = 2 * B * N * (3 * p * p) * d
    linears = 2 * B * T * (3 * d * d + d * d + 4 * d * d + 4 * d * d)  # qkv, proj, fc1, fc2
    attention = 2 * B * T * T * d  # one of its matmuls (QK^T or AV; heads x head width = d)
    head = 2 * B * d * C
    # backward: 2x forward (input and weight gradients) for the linears; for attention the
    # kernels' formula, which recomputes the scores (5 matmuls against the forward's 2); the
    # patch embedding's input (the images) needs no gradient: its weight gradient only
    expected = (3 * L * linears + 3 * head) + L * (2 + 5) * attention + 2 * patch
    assert flops == expected


# --------------------------------------------------------------------------- a real run's block
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cost")
    clip = write_tiny_clip(base / "clip.pt")
    make_benchmark_dataset(base / "data", "DescribableTextures")
    out = base / "run"
    assert main(tiny_train_argv(clip, base / "data", out, protocol="base2novel")) == 0
    return out


def test_run_json_and_results_json_hold_the_same_cost_block(run):
    info = json.loads((run / "run.json").read_text())
    results = json.loads((run / "results.json").read_text())
    c = info["cost"]
    assert results["cost"] == c
    metrics = read_jsonl(run / "metrics.jsonl")
    assert c["steps"] == len(metrics) == metrics[-1]["step"]
    split = json.loads((run / "split.json").read_text())
    assert c["images_seen"] == len(split["train"]) * 2  # optim.epochs=2 of tiny_train_argv
    assert set(c["wall_s"]) == {"backbone_load", "setup", "text_encoding", "train", "eval", "total", "process"}
    assert c["wall_s"]["process"] >= c["wall_s"]["total"]
    assert c["images_evaluated"] == sum(json.loads(p.read_text())["n"] for p in (run / "eval").glob("*.json"))
    assert set(c["wall_s"]["eval"]) == {"DescribableTextures-base", "DescribableTextures-new"}
    assert c["wall_s"]["train"] == info["timings"]["train_s"]
    assert c["images_per_s"] == pytest.approx(c["images_seen"] / c["wall_s"]["train"], rel=1e-2)
    assert c["device"]["type"] == "cpu" and c["precision"] == info["precision"] == "fp32"
    model, _ = load_run(run, device="cpu")
    assert c["parameters"]["trainable"] == info["trainable_parameters"] == model.num_trainable_parameters()
    assert c["parameters"]["frozen"] == sum(p.numel() for p in model.clip.parameters())
    assert c["device_hours"] * 3600 == pytest.approx(c["wall_s"]["total"], abs=1e-3)  # one process, one attempt


def test_train_step_flops_are_those_of_a_real_step(run):
    """A recount on the trained model: one forward + backward of a batch of the run's size."""
    c = json.loads((run / "run.json").read_text())["cost"]
    model, cfg = load_run(run, device="cpu")
    model.train()
    model.clip.eval()
    model.set_classes(training_classnames(run), training_template(run))
    n = min(cfg.optim.batch_size, c["images_seen"] // cfg.optim.epochs)
    size = model_image_size(model)
    images = torch.randn(n, 3, size, size)
    labels = torch.arange(n) % len(training_classnames(run))
    _, flops = cost.count_flops(lambda: model.loss(images, labels).total.backward())
    assert c["flops"]["train_step"] == flops > 0
    model.eval()
    with torch.no_grad():
        text = model.encode_text()
        _, one = cost.count_flops(lambda: model.logits(images[:1], text))
        _, three = cost.count_flops(lambda: model.logits(images[:1].expand(3, -1, -1, -1), text))
    # linear in the batch: per image, plus what the logits do once per batch
    assert three == 3 * c["flops"]["per_eval_image"] + c["flops"]["per_eval_batch"]
    assert one == c["flops"]["per_eval_image"] + c["flops"]["per_eval_batch"]
    assert c["flops"]["per_eval_image"] > 0


# --------------------------------------------------------------------------- mmrl describe --classes
def _describe(capsys, *argv):
    assert main(["describe", "--backbone", "toy-clip", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_describe_classes_counts_a_step_and_its_memory(capsys):
    four = _describe(capsys, "--classes", "4", "--set", "first_rep_block=2")
    eight = _describe(capsys, "--classes", "8", "--set", "first_rep_block=2")
    st = four["step"]
    assert (st["classes"], st["batch_size"]) == (4, 4)
    # the text tower runs once per class: more classes, more FLOPs per step; per image, the two
    # logit kinds (class and representation features) against 4 more classes of width embed_dim 64
    assert eight["step"]["flops"]["train_step"] > st["flops"]["train_step"] > 0
    assert eight["step"]["flops"]["per_eval_image"] - st["flops"]["per_eval_image"] == 2 * (2 * 4 * 64)
    m = st["memory_mb"]
    assert m["weights"] >= (four["trainable_parameters"] + four["frozen_parameters"]) * 4 / 2**20 - 0.1
    assert m["gradients_and_adamw"] == pytest.approx(3 * four["trainable_parameters"] * 4 / 2**20, abs=0.1)
    assert m["step_peak"] == pytest.approx(m["weights"] + m["saved_activations"] + m["gradients_and_adamw"], abs=0.2)
    assert m["saved_activations"] > 0
    bigger = _describe(capsys, "--classes", "4", "--batch-size", "8", "--set", "first_rep_block=2")
    assert bigger["step"]["memory_mb"]["saved_activations"] > m["saved_activations"]


def test_describe_classes_refuses_one_class(capsys):
    assert main(["describe", "--backbone", "toy-clip", "--classes", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--classes 1" in err[0]


# --------------------------------------------------------------------------- under torchrun
@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_cost_per_rank_and_summed_and_rank_0_alone_reports(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    clip = write_tiny_clip(tmp_path / "clip.pt")
    make_benchmark_dataset(tmp_path / "data", "DescribableTextures", per_class=10)
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MMRL_DIST_TIMEOUT_S="60")
    argv = tiny_train_argv(clip, tmp_path / "data", out, protocol="base2novel", shots=4,
                           extra=["--set", "optim.epochs=2", "--report-to", "csv"])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), "-m", "mmrl", *argv],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    c = json.loads((out / "run.json").read_text())["cost"]
    assert json.loads((out / "results.json").read_text())["cost"] == c
    assert [r["world_size"] for r in c["ranks"]] == [2, 2] and c["device"]["count"] == 2
    assert c["flops"]["train_step"] == sum(r["flops"]["train_step"] for r in c["ranks"]) > 0
    # each rank steps on its half of every global batch of 4: about half the FLOPs each
    assert c["ranks"][0]["flops"]["train_step"] == pytest.approx(c["ranks"][1]["flops"]["train_step"], rel=0.2)
    assert c["device_hours"] == pytest.approx(sum(r["device_hours"] for r in c["ranks"]), abs=1e-8)
    assert c["steps"] == len(read_jsonl(out / "metrics.jsonl"))
    # only rank 0 wrote the CSV: every step once
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, c["steps"] + 1))
