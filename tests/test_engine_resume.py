"""Runs survive crashes: per-epoch atomic checkpoints, bit-identical resumption on the CPU,
non-finite loss handling."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_benchmark_dataset, read_jsonl, tiny_method_overrides, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.config import resolve_config
from mmrl.engine import NonFiniteLossError, train
from mmrl.engine.checkpoint import load_checkpoint

torch.set_num_threads(1)
EPOCHS = ["--set", "optim.epochs=3", "--set", "optim.batch_size=3"]  # 8 images: 2 steps per epoch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("engine_resume")
    clip = write_tiny_clip(base / "clip.pt")
    make_benchmark_dataset(base / "data", "DescribableTextures")
    return {"clip": clip, "root": base / "data", "base": base}


def _argv(world, out, method="mmrl", extra=()):
    return tiny_train_argv(world["clip"], world["root"], out, method=method, protocol="fewshot",
                           extra=[*EPOCHS, *extra])


def _cfg(world, out, method="mmrl", extra_overrides=()):
    overrides = tiny_method_overrides(method) + ["optim.epochs=3", "optim.batch_size=3", *extra_overrides]
    return resolve_config(method, "fewshot", "dtd", overrides=overrides,
                          flags={"data.root": str(world["root"]), "backbone": str(world["clip"]),
                                 "data.shots": 2, "seed": 1, "output": str(out)})


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter.safetensors"))


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _adapter(a), _adapter(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k  # bit-identical, not just close
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [(r["step"], r["epoch"], r["loss"]) for r in ra] == [(r["step"], r["epoch"], r["loss"]) for r in rb]


@pytest.fixture(scope="module")
def reference(world):
    """An uninterrupted 3-epoch run per method."""
    runs = {}
    for method in ("mmrl", "mmrl++"):
        out = world["base"] / f"ref-{method}"
        assert main(_argv(world, out, method)) == 0
        runs[method] = out
    return runs


class Crash(RuntimeError):
    pass


def _crash_after(n_epochs: int):
    def cb(info):
        if info["epoch"] == n_epochs:
            raise Crash(f"simulated crash after epoch {n_epochs}")
    return cb


@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_resume_after_crash_is_bit_identical(world, reference, method):
    out = world["base"] / f"crash-{method}"
    # workers > 0 in the interrupted run: augmentation depends only on (seed, epoch, index)
    with pytest.raises(Crash):
        train(_cfg(world, out, method, ["data.num_workers=2"]), progress=False, on_epoch_end=_crash_after(1))
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "simulated crash" in info["error"]
    assert not (out / "adapter.safetensors").exists()
    ck = load_checkpoint(out / "checkpoint.safetensors")
    assert (ck.epoch, ck.step) == (1, 2)
    # re-running the same command continues after epoch 1
    assert main(_argv(world, out, method)) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert "resuming" in (out / "train.log").read_text()
    _assert_identical(reference[method], out)


def test_fp16_grad_scaler_state_survives_resume(world):
    # fp16 autocast with loss scaling (CPU autocast here): the GradScaler state is checkpointed too
    ref, out = world["base"] / "fp16-ref", world["base"] / "fp16-crash"
    train(_cfg(world, ref, extra_overrides=["precision=fp16"]), progress=False)
    with pytest.raises(Crash):
        train(_cfg(world, out, extra_overrides=["precision=fp16"]), progress=False, on_epoch_end=_crash_after(1))
    assert load_checkpoint(out / "checkpoint.safetensors").scaler["scale"] > 0
    train(_cfg(world, out, extra_overrides=["precision=fp16"]), progress=False)
    _assert_identical(ref, out)


def test_resume_flag_uses_stored_config(world, reference):
    out = world["base"] / "crash-flag"
    with pytest.raises(Crash):
        train(_cfg(world, out), progress=False, on_epoch_end=_crash_after(2))
    assert main(["train", "--resume", str(out), "--progress", "lines"]) == 0
    _assert_identical(reference["mmrl"], out)


def test_resume_after_kill_9(world, reference):
    out = world["base"] / "killed"
    script = f"""
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_engine_resume import _cfg
from mmrl.engine import train
def kill(info):
    if info["epoch"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
train(_cfg({ {k: str(v) for k, v in world.items()}!r}, {str(out)!r}), progress=False, on_epoch_end=kill)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # died without cleaning up
    assert load_checkpoint(out / "checkpoint.safetensors").epoch == 1
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no partial files behind
    assert main(_argv(world, out)) == 0
    _assert_identical(reference["mmrl"], out)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(world, monkeypatch, capsys):
    from mmrl.models.mmrl import MMRL

    real_loss = MMRL.loss
    calls = {"n": 0}

    def poisoned(self, images, labels, *a, **kw):
        out = real_loss(self, images, labels, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 4:  # step 4 = second step of epoch 2
            return out._replace(total=out.total * float("nan"))
        return out

    monkeypatch.setattr(MMRL, "loss", poisoned)
    out = world["base"] / "nan"
    assert main(_argv(world, out)) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "step 4" in err and "epoch 2/3" in err and "checkpoint" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "NonFiniteLossError" in info["error"]
    ck = load_checkpoint(out / "checkpoint.safetensors")
    assert (ck.epoch, ck.step) == (1, 2)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    # the kept checkpoint is the good state after epoch 1: resuming without the poison finishes
    monkeypatch.setattr(MMRL, "loss", real_loss)
    assert main(_argv(world, out)) == 0


def test_non_finite_loss_in_process_raises(world, monkeypatch):
    from mmrl.models.mmrl import MMRL

    real_loss = MMRL.loss
    monkeypatch.setattr(MMRL, "loss", lambda self, *a, **kw: real_loss(self, *a, **kw)._replace(
        total=torch.tensor(float("inf"), requires_grad=True)))
    with pytest.raises(NonFiniteLossError, match="step 1"):
        train(_cfg(world, world["base"] / "inf"), progress=False)
    assert not (world["base"] / "inf" / "checkpoint.safetensors").exists()


def test_resume_with_other_training_config_is_refused(world, capsys):
    out = world["base"] / "crash-other"
    with pytest.raises(Crash):
        train(_cfg(world, out), progress=False, on_epoch_end=_crash_after(1))
    capsys.readouterr()
    assert main(_argv(world, out, extra=["--set", "method.reg_weight=0.1"])) == 2
    assert "method.reg_weight" in capsys.readouterr().err
    # but moving the data or changing workers/device is fine
    assert main(["train", "--resume", str(out), "--set", "data.num_workers=0", "--device", "cpu",
                 "--progress", "lines"]) == 0
