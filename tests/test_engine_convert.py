"""convert-official: an authors' Dassl checkpoint becomes a run directory whose evaluation
gives the same logits as loading the same tensors into the model directly."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import (make_benchmark_dataset, random_adapter, read_jsonl, tiny_method_overrides,
                     write_official_checkpoint, write_tiny_clip)
from mmrl import data
from mmrl.cli import main
from mmrl.config import resolve_config
from mmrl.models import build_method, load_backbone

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("engine_convert")
    clip = write_tiny_clip(base / "clip.pt")
    make_benchmark_dataset(base / "data", "DescribableTextures")
    return {"clip": clip, "root": base / "data", "base": base}


def _direct_logits(world, method, tensors, subsample):
    """Logits of the model with ``tensors`` set directly, on the test images of ``subsample``."""
    cfg = resolve_config(method, "base2novel", "dtd", overrides=tiny_method_overrides(method))
    model = build_method(load_backbone(str(world["clip"])), cfg.method).eval()
    model.load_adapter_state_dict(tensors)
    splits = data.prepare_splits("dtd", world["root"], shots=2, seed=1, subsample=subsample)
    ds = data.ImageDataset(splits.test, data.build_transform(False, 32))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    model.set_classes(splits.classnames, splits.template)
    with torch.no_grad():
        lg = model.logits(images)
    return {d.relpath: row for d, row in zip(splits.test, lg.fused if subsample == "base" else lg.class_)}


@pytest.mark.parametrize("method, prefix", [("mmrl", "module."), ("mmrl++", "")])
def test_convert_official_round_trip(world, method, prefix):
    cfg = resolve_config(method, "base2novel", "dtd", overrides=tiny_method_overrides(method))
    shapes = build_method(load_backbone(str(world["clip"])), cfg.method).adapter_shapes()
    tensors = random_adapter(shapes, seed=3)
    ckpt = write_official_checkpoint(world["base"] / method / "model.pth.tar-10", tensors, method, prefix)
    run = world["base"] / f"run-{method}"
    argv = ["convert-official", str(ckpt), "--method", method, "--backbone", str(world["clip"]), "--dataset", "dtd",
            "--protocol", "base2novel", "--shots", "2", "--seed", "1", "-o", str(run),
            "--set", f"data.root={world['root']}"]
    for item in tiny_method_overrides(method):
        argv += ["--set", item]
    assert main(argv) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["method"] == method
    assert info["trainable_parameters"] == sum(t.numel() for t in tensors.values())
    stored = load_file(str(run / "adapter.safetensors"))
    assert stored.keys() == tensors.keys() and all(torch.equal(stored[k], tensors[k]) for k in tensors)
    for subsample, kind in (("base", "fused"), ("new", "class")):
        preds = world["base"] / f"{method}-{subsample}.jsonl"
        assert main(["eval", str(run), "--dataset", "dtd", "--subsample", subsample, "--predictions", str(preds),
                     "--progress", "lines"]) == 0
        direct = _direct_logits(world, method, tensors, subsample)
        rows = read_jsonl(preds)
        assert len(rows) == len(direct) > 0
        for r in rows:
            assert r["logits_kind"] == kind
            # same math on the same images; only the batch composition may differ, so allow
            # float32 rounding on logits of magnitude <= 100
            assert torch.allclose(torch.tensor(r["logits"]), direct[r["image"]], atol=1e-4, rtol=0)


def test_convert_official_wrong_method_is_explained(world, capsys):
    cfg = resolve_config("mmrl", "base2novel", "dtd", overrides=tiny_method_overrides("mmrl"))
    shapes = build_method(load_backbone(str(world["clip"])), cfg.method).adapter_shapes()
    ckpt = write_official_checkpoint(world["base"] / "wrong" / "model.pth.tar-5", random_adapter(shapes), "mmrl")
    argv = ["convert-official", str(ckpt), "--method", "mmrl++", "--backbone", str(world["clip"]),
            "--dataset", "dtd", "--protocol", "base2novel", "-o", str(world["base"] / "wrong-run")]
    for item in tiny_method_overrides("mmrl++"):
        argv += ["--set", item]
    assert main(argv) == 1
    assert "method='mmrl'" in capsys.readouterr().err
    assert not (world["base"] / "wrong-run" / "run.json").exists()


def test_convert_official_shape_mismatch_is_explained(world, capsys):
    cfg = resolve_config("mmrl", "base2novel", "dtd", overrides=tiny_method_overrides("mmrl"))
    shapes = build_method(load_backbone(str(world["clip"])), cfg.method).adapter_shapes()
    ckpt = write_official_checkpoint(world["base"] / "shape" / "model.pth.tar-5", random_adapter(shapes), "mmrl")
    argv = ["convert-official", str(ckpt), "--method", "mmrl", "--backbone", str(world["clip"]),
            "--dataset", "dtd", "--protocol", "base2novel", "-o", str(world["base"] / "shape-run")]
    for item in tiny_method_overrides("mmrl"):
        argv += ["--set", item]
    argv += ["--set", "method.rep_dim=8"]  # the checkpoint has d_r = 16
    assert main(argv) == 1
    assert "d_r=16" in capsys.readouterr().err
