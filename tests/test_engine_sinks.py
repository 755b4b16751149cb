"""--report-to tensorboard,wandb,csv (mmrl.engine.sinks): what each writer holds read back and
compared with metrics.jsonl, the evaluations and the cost block; resume without duplicate steps;
a missing package; only the writing rank logs."""
from __future__ import annotations

import csv
import glob
import importlib.util
import json
import struct

import pytest
import torch

from helpers import make_benchmark_dataset, read_jsonl, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.config import RunConfig, set_key
from mmrl.engine import distributed as ddp_util
from mmrl.engine import rundir, sinks, trainer

torch.set_num_threads(1)
EPOCHS = ["--set", "optim.epochs=3", "--set", "optim.batch_size=3"]  # 6 training images: 2 steps per epoch
HAVE_TB = importlib.util.find_spec("tensorboard") is not None
HAVE_WANDB = importlib.util.find_spec("wandb") is not None
WRITERS = ",".join(["csv"] + ["tensorboard"] * HAVE_TB + ["wandb"] * HAVE_WANDB)


@pytest.fixture(autouse=True)
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("sinks")
    clip = write_tiny_clip(base / "clip.pt")
    make_benchmark_dataset(base / "data", "DescribableTextures")
    return {"clip": clip, "root": base / "data", "base": base}


def _argv(world, out, protocol="fewshot", writers=WRITERS):
    return tiny_train_argv(world["clip"], world["root"], out, protocol=protocol,
                           extra=[*EPOCHS, "--report-to", writers])


# --------------------------------------------------------------------------- reading the writers back
def tensorboard_scalars(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / sinks.TB_DIR), size_guidance={"scalars": 0})
    ea.Reload()  # purge_orphaned_data (the default) applies the resumed writer's purge_step
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def _wandb_records(path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB-log blocks of 32 KiB
    (each record: crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last), data)."""
    raw = open(path, "rb").read()
    assert raw[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield data
        elif kind == 2:
            parts = data
        elif kind == 3:
            parts += data
        elif kind == 4:
            yield parts + data


def wandb_offline_run(run) -> dict:
    """Every offline attempt of the run: ids, names, tags, config keys, history rows, summary."""
    from wandb.proto import wandb_internal_pb2

    out = {"ids": set(), "names": set(), "tags": set(), "config": {}, "history": [], "summary": {}}
    for path in sorted(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))):
        for data in _wandb_records(path):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(rec.run.run_id)
                out["names"].add(rec.run.display_name)
                out["tags"].update(rec.run.tags)
                out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
            elif kind == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in rec.history.item})
            elif kind == "summary":
                out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in rec.summary.update})
    return out


def _expected_steps(run) -> dict[str, list[tuple[int, float]]]:
    rows = read_jsonl(run / rundir.METRICS_FILE)
    return {tag: [(r["step"], r[k]) for r in rows] for k, tag in sinks.STEP_TAGS.items()}


def _close(got, expected):
    """The same steps, and values equal up to TensorBoard's float32."""
    return [s for s, _ in got] == [s for s, _ in expected] and \
        all(v == pytest.approx(w, rel=1e-6, abs=1e-12) for (_, v), (_, w) in zip(got, expected))


# --------------------------------------------------------------------------- one run, every writer
@pytest.fixture(scope="module")
def reported(world):
    out = world["base"] / "b2n"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_CONFIG_DIR", str(world["base"] / "wandb-config"))
        assert main(_argv(world, out, protocol="base2novel")) == 0
    return out


def _evaluations(run) -> dict[str, float]:
    results = json.loads((run / rundir.RESULTS_FILE).read_text())
    return sinks.evaluation_scalars(results), results


@pytest.mark.skipif(not HAVE_TB, reason="tensorboard not installed (pip install tensorboard)")
def test_tensorboard_holds_metrics_jsonl_the_evaluation_and_the_cost(reported):
    tb = tensorboard_scalars(reported)
    for tag, expected in _expected_steps(reported).items():
        assert _close(tb[tag], expected), tag
    assert {"train/loss", "train/acc", "train/lr", "test/accuracy"} <= set(tb)  # Dassl's tags
    values, results = _evaluations(reported)
    last = results["cost"]["steps"]
    assert values["test/accuracy"] == results["hm"]
    assert {"test/DescribableTextures-base/accuracy", "test/DescribableTextures-new/macro_accuracy"} <= set(values)
    for k, v in values.items():
        assert tb[k] == [(last, pytest.approx(v, rel=1e-6))], k
    assert tb["cost/flops/train_step"] == [(last, pytest.approx(results["cost"]["flops"]["train_step"], rel=1e-6))]
    assert tb["cost/images_per_s"][0][1] == pytest.approx(results["cost"]["images_per_s"], rel=1e-6)


@pytest.mark.skipif(not HAVE_WANDB, reason="wandb not installed (pip install wandb)")
def test_wandb_offline_run_holds_metrics_jsonl_config_name_tags_and_cost(reported):
    wb = wandb_offline_run(reported)
    assert len(wb["ids"]) == 1
    assert wb["names"] == {"mmrl-base2novel-DescribableTextures-2shot-seed1"}
    assert {"mmrl", "base2novel", "DescribableTextures"} <= wb["tags"]
    assert wb["config"]["protocol"] == "base2novel" and wb["config"]["optim"]["epochs"] == 3
    steps = [h for h in wb["history"] if "train/loss" in h]
    for tag, expected in _expected_steps(reported).items():
        assert _close([(h["step"], h[tag]) for h in steps], expected), tag
    values, results = _evaluations(reported)
    evals = [h for h in wb["history"] if "test/accuracy" in h]
    assert len(evals) == 1 and evals[0]["step"] == results["cost"]["steps"]
    assert {k: evals[0][k] for k in values} == pytest.approx(values)
    assert wb["summary"]["cost/flops/train_step"] == results["cost"]["flops"]["train_step"]
    assert wb["summary"]["cost/steps"] == results["cost"]["steps"]
    state = json.loads((reported / sinks.WANDB_STATE).read_text())
    assert state == {"id": next(iter(wb["ids"])), "last_step": results["cost"]["steps"]}


def test_csv_files_hold_metrics_jsonl_evaluations_and_cost(reported):
    with open(reported / sinks.CSV_DIR / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = read_jsonl(reported / rundir.METRICS_FILE)
    assert [{k: float(v) for k, v in r.items()} for r in rows] == [{k: float(v) for k, v in r.items()}
                                                                   for r in expected]
    values, results = _evaluations(reported)
    with open(reported / sinks.CSV_DIR / "evaluations.csv", newline="") as f:
        assert {r["key"]: float(r["value"]) for r in csv.DictReader(f)} == pytest.approx(values)
    with open(reported / sinks.CSV_DIR / "cost.csv", newline="") as f:
        got = {r["key"]: float(r["value"]) for r in csv.DictReader(f)}
    assert got == pytest.approx(sinks.flat_numbers(results["cost"]))
    assert got["flops/train_step"] == results["cost"]["flops"]["train_step"]


# --------------------------------------------------------------------------- resume without duplicates
class Crash(RuntimeError):
    pass


def test_resume_continues_the_same_runs_without_duplicate_steps(world, monkeypatch):
    """A crash in the middle of epoch 2 (step 3 logged, the checkpoint covers steps 1-2), then the
    same command again: every writer holds steps 1..6 once, equal to the final metrics.jsonl."""
    out = world["base"] / "crashed"
    real = trainer.train_step

    def crashing(*a, step, **k):
        if step == 4:
            raise Crash("simulated crash at step 4")
        return real(*a, step=step, **k)

    monkeypatch.setattr(trainer, "train_step", crashing)
    with pytest.raises(Crash):
        trainer.train(_config(world, out), progress=False)
    monkeypatch.setattr(trainer, "train_step", real)
    assert [r["step"] for r in read_jsonl(out / rundir.METRICS_FILE)] == [1, 2, 3]
    assert main(_argv(world, out)) == 0
    expected = _expected_steps(out)
    assert [s for s, _ in expected["train/loss"]] == [1, 2, 3, 4, 5, 6]
    if HAVE_TB:
        tb = tensorboard_scalars(out)
        for tag, exp in expected.items():
            assert _close(tb[tag], exp), tag
        assert [s for s, _ in tb["test/accuracy"]] == [6]
    if HAVE_WANDB:
        wb = wandb_offline_run(out)
        assert len(wb["ids"]) == 1  # the same W&B run, resumed
        steps = [h["step"] for h in wb["history"] if "train/loss" in h]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # each once (the attempts' files may list in any order)
        assert [h["step"] for h in wb["history"] if "test/accuracy" in h] == [6]
    with open(out / sinks.CSV_DIR / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def _config(world, out):
    from mmrl.commands.train import add_arguments, build_config
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    return build_config(p.parse_args(_argv(world, out)[1:]))


# --------------------------------------------------------------------------- refusals, ranks
def test_a_missing_package_is_one_line_naming_the_install(world, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = world["base"] / "no-wandb"
    assert main(_argv(world, out, writers="csv,wandb")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0] and "Traceback" not in err[0]
    assert not (out / rundir.RUN_FILE).exists()  # refused before anything was written


def test_an_unknown_writer_is_refused_naming_the_choices(world, capsys):
    assert main(_argv(world, world["base"] / "bad", writers="tensorbord")) != 0
    err = capsys.readouterr().err.strip()
    assert "logging.report_to" in err and "tensorboard" in err and "did you mean" in err


def test_only_the_writing_rank_opens_writers(tmp_path):
    cfg = RunConfig()
    set_key(cfg, "logging.report_to", ["csv"])
    files = rundir.RunFiles(tmp_path / "rank1", writes=False)  # what rank > 0 gets under torchrun
    files.start(cfg, ddp_util.DistInfo(rank=1, world_size=2))
    with files.metrics(None):
        files.metric({"step": 1, "loss": 1.0})
    assert files.sinks is None and not (tmp_path / "rank1").exists()
