"""What the run folder's files guarantee about themselves: valid JSON (never NaN), adapter and
checkpoint tensors that are finite floating point and match the sha256 written with them,
byte-identical files for the same training, checkpoints whose progress fits the run, and run
folders whose config.yaml, run.json and adapter agree -- else one line naming the file."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import make_benchmark_dataset, tiny_train_argv, train_killed_after_first_checkpoint, write_tiny_clip
from mmrl.cli import main
from mmrl.engine.checkpoint import load_adapter, load_checkpoint, save_adapter, tensors_sha256
from mmrl.engine.runcheck import adapter_settings, disagreements
from mmrl.errors import CorruptFileError
from mmrl.fileio import dumps_json, write_json_atomic

torch.set_num_threads(1)


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("integrity")
    clip = write_tiny_clip(base / "clip.pt")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures")
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        runs[name] = base / name
        assert main(tiny_train_argv(clip, root, runs[name], seed=seed)) == 0
    return {"clip": clip, "root": root, "base": base, **runs}


@pytest.fixture
def cli(capsys):
    def run(argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        _, err = capsys.readouterr()
        assert "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.startswith("mmrl: error: ")]
        return rc, lines
    return run


def _copy(world, src: str, name: str) -> Path:
    dst = world["base"] / name
    shutil.copytree(world[src], dst)
    return dst


# --------------------------------------------------------------------------- JSON
def test_no_json_the_project_writes_contains_nan(tmp_path):
    obj = {"loss": float("nan"), "acc": [1.0, float("inf"), -float("inf")], "n": 3, "nested": {"x": (float("nan"),)}}
    assert _strict_json(dumps_json(obj)) == {"loss": None, "acc": [1.0, None, None], "n": 3, "nested": {"x": [None]}}
    write_json_atomic(obj, tmp_path / "r.json")
    assert _strict_json((tmp_path / "r.json").read_text())["loss"] is None


def test_a_diverged_step_writes_valid_metrics(world, monkeypatch, tmp_path):
    """metrics.jsonl of a run whose loss is NaN stays valid JSON (null where the value is not finite)."""
    from mmrl.engine import rundir

    real = rundir.RunFiles.metric

    def nan_metric(self, row):
        real(self, {**row, "loss": math.nan})
    monkeypatch.setattr(rundir.RunFiles, "metric", nan_metric)
    out = tmp_path / "run"
    assert main(tiny_train_argv(world["clip"], world["root"], out)) == 0
    rows = [_strict_json(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["loss"] is None for r in rows)


# --------------------------------------------------------------------------- bytes
def test_equal_tensors_give_byte_identical_files(tmp_path):
    tensors = {f"t{i}": torch.randn(3, i + 1) for i in range(4)}
    meta = {"method": {"name": "mmrl", "n_rep_tokens": 2}, "backbone": "x", "seed": 1}
    blobs = set()
    for i in range(10):  # safetensors orders its metadata map at random: 10 writes would differ
        save_adapter(tensors, tmp_path / f"{i}.safetensors", metadata=meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    back, info = load_adapter(tmp_path / "0.safetensors")
    assert info == meta and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_the_same_training_twice_gives_the_same_adapter_bytes(world):
    a, b = (world[n] / "adapter.safetensors" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    info = json.loads((world["a"] / "run.json").read_text())
    import hashlib
    assert info["adapter_sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- tensors
def _data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_changed_bytes_inside_the_adapter_are_detected(world, cli):
    run = _copy(world, "a", "flipped")
    adapter = run / "adapter.safetensors"
    data = bytearray(adapter.read_bytes())
    data[_data_start(adapter) + 5] ^= 0x40  # one bit of one weight: still a readable file of finite floats
    adapter.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="do not match the sha256 written with them"):
        load_adapter(adapter)
    rc, lines = cli(["eval", run, "--dataset", "dtd", "--root", world["root"]])
    assert rc == 1 and len(lines) == 1 and str(adapter) in lines[0] and f"mmrl train --resume {run}" in lines[0]


@pytest.mark.parametrize("bad", ["nan", "inf", "int"])
def test_non_finite_or_non_float_adapter_tensors_are_refused(tmp_path, bad):
    t = {"rep_tokens": torch.zeros(2, 3), "proj_rep": torch.ones(3, 3)}
    if bad == "int":
        t["proj_rep"] = torch.ones(3, 3, dtype=torch.int64)
    else:
        t["proj_rep"][1, 2] = float(bad)
    save_file(t, str(tmp_path / "a.safetensors"), metadata={"info": "{}"})  # no checksum: a foreign writer
    with pytest.raises(CorruptFileError, match=r"a\.safetensors: tensor 'proj_rep' "
                                               + ("is int64, expected floating point" if bad == "int"
                                                  else "holds NaN or infinite values")):
        load_adapter(tmp_path / "a.safetensors")


def _killed_run(world, name: str) -> Path:
    out = world["base"] / name
    proc = train_killed_after_first_checkpoint(tiny_train_argv(world["clip"], world["root"], out))
    assert proc.returncode != 0 and (out / "checkpoint.safetensors").is_file(), proc.stderr
    return out


def _rewrite_checkpoint(path: Path, tensors=None, **meta_changes) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata={**meta, **meta_changes})


def test_checkpoint_with_nan_state_is_refused_with_the_way_on(world, cli):
    out = _killed_run(world, "ck-nan")
    ck = out / "checkpoint.safetensors"
    tensors = load_file(str(ck))
    name = next(k for k in tensors if k.startswith("optim.") and k.endswith("exp_avg_sq"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    _rewrite_checkpoint(ck, tensors, sha256=tensors_sha256(tensors))  # a consistent file, NaN inside
    with pytest.raises(CorruptFileError, match=f"tensor '{name}' holds NaN"):
        load_checkpoint(ck)
    rc, lines = cli(tiny_train_argv(world["clip"], world["root"], out))
    assert rc == 1 and len(lines) == 1 and str(ck) in lines[0] and f"rm {ck}" in lines[0]


@pytest.mark.parametrize("epoch, step, expected", [("99", "2", "records 99 epochs done, but this run trains 1..2"),
                                                   ("1", "5000", "records 5000 optimiser steps after 1 epochs")])
def test_checkpoint_progress_is_range_checked_against_the_config(world, cli, epoch, step, expected):
    out = _killed_run(world, f"ck-range-{epoch}")
    ck = out / "checkpoint.safetensors"
    _rewrite_checkpoint(ck, epoch=epoch, step=step)
    rc, lines = cli(tiny_train_argv(world["clip"], world["root"], out))
    assert rc == 1 and len(lines) == 1 and str(ck) in lines[0] and expected in lines[0], lines


# --------------------------------------------------------------------------- the run folder as a whole
def test_disagreements_name_file_key_and_both_values():
    cfg = {"backbone": "toy-clip", "seed": 1, "protocol": "fewshot", "data": {"shots": 2, "dataset": "dtd"},
           "method": {"name": "mmrl", "n_rep_tokens": 2, "rep_dim": 16}}
    assert disagreements(cfg, {"method": "mmrl", "backbone": "toy-clip", "seed": 1}, {"method": {"n_rep_tokens": 2}}) == []
    assert disagreements(cfg, {"method": "mmrl++"}, {"backbone": "ViT-B-16", "method": {"rep_dim": 32}}) == [
        "run.json says method 'mmrl++', config.yaml says 'mmrl'",
        "adapter.safetensors says backbone 'ViT-B-16', config.yaml says 'toy-clip'",
        "adapter.safetensors says method.rep_dim 32, config.yaml says 16"]


def test_inconsistent_run_folders_are_refused(world, cli):
    # run.json from another method
    run = _copy(world, "a", "other-method")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "method": "mmrl++"}))
    for argv in (["eval", run, "--dataset", "dtd", "--root", world["root"]], ["export", run, "-o", run / "x.onnx"]):
        rc, lines = cli(argv)
        assert rc == 1 and len(lines) == 1, lines
        assert "inconsistent run folder" in lines[0] and "run.json says method 'mmrl++'" in lines[0]
    assert not (run / "x.onnx").exists()
    # config.yaml edited to other method settings than the adapter was trained with
    run = _copy(world, "a", "edited-config")
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("rep_dim: 16", "rep_dim: 32"))
    rc, lines = cli(["eval", run, "--dataset", "dtd", "--root", world["root"]])
    assert rc == 1 and "adapter.safetensors says method.rep_dim 16, config.yaml says 32" in lines[0]
    # a valid adapter of another run (same shapes, other seed): only its sha256 tells
    run = _copy(world, "a", "swapped-adapter")
    shutil.copy(world["c"] / "adapter.safetensors", run / "adapter.safetensors")
    assert adapter_settings(run / "adapter.safetensors")["seed"] == 2
    info = json.loads((world["c"] / "run.json").read_text())
    rc, lines = cli(["eval", run, "--dataset", "dtd", "--root", world["root"]])
    assert rc == 1 and "adapter.safetensors says seed 2, config.yaml says 1" in lines[0]
    settings = load_adapter(run / "adapter.safetensors")[1]
    tensors = load_adapter(run / "adapter.safetensors")[0]
    save_adapter(tensors, run / "adapter.safetensors", metadata={**settings, "seed": 1})  # its record forged
    rc, lines = cli(["eval", run, "--dataset", "dtd", "--root", world["root"]])
    assert rc == 1 and "sha256 differs" in lines[0] and info["adapter_sha256"] != \
        json.loads((run / "run.json").read_text())["adapter_sha256"]
    # the untouched run still evaluates
    rc, lines = cli(["eval", world["a"], "--dataset", "dtd", "--root", world["root"]])
    assert rc == 0, lines
