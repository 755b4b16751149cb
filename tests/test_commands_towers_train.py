"""The CLI on other tower families: `mmrl describe`, a few steps of `mmrl train`, `mmrl eval` and
`mmrl export` (torch.export) on a CLIPA-like architecture (average pooling, then the norm; a
bidirectional text tower pooled at the last position), a SigLIP-like one (a timm ViT with a
MAP head and no class token; CustomTextCLIP) and a NaFlex SigLIP 2-like one (timm NaFlexVit on
its fixed grid), registered with open_clip in-process and loaded as
``NAME:/path/checkpoint.pt``, as any open_clip checkpoint is. All take the generic path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from helpers import make_benchmark_dataset, read_jsonl, tiny_train_argv  # noqa: E402
from mmrl import Classifier  # noqa: E402
from mmrl.cli import main  # noqa: E402

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3, "pool_type": "last",
        "no_causal_mask": True}
CONFIGS = {
    "clipa": {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8,
                             "pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True},
              "text_cfg": TEXT},
    "siglip": {"embed_dim": 32, "custom_text": True, "init_logit_bias": -10,
               "vision_cfg": {"image_size": 16, "timm_model_name": "mmrl_test_vit_map",  # the zoo's ViT: 16 px "timm_pool": "map",
                              "timm_proj": "none"},
               "text_cfg": {**TEXT, "proj_bias": True}},
    "naflex": {"embed_dim": 32, "custom_text": True, "init_logit_bias": -10,
               "vision_cfg": {"image_size": 16, "timm_model_name": "mmrl_test_naflex", "timm_pool": "map",
                              "timm_proj": "none"},  # the zoo's NaFlexVit: its position table resized to the grid
               "text_cfg": {**TEXT, "proj_bias": True}},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def world(request, tmp_path_factory):
    family = request.param
    if family in ("siglip", "naflex"):
        from towers_zoo import _register_timm_models

        _register_timm_models()  # the tiny timm ViT the config names (skips without timm)
    name = f"mmrl-test-{family}"
    base = tmp_path_factory.mktemp(family)
    (base / "configs").mkdir()
    (base / "configs" / f"{name}.json").write_text(json.dumps(CONFIGS[family]))
    open_clip.add_model_config(base / "configs")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), base / f"{family}.pt")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures", size=40)
    spec = f"{name}:{base / f'{family}.pt'}"
    run = base / "run"
    assert main(tiny_train_argv(spec, root, run, method="mmrl++")) == 0
    return {"family": family, "base": base, "root": root, "spec": spec, "run": run}


def test_describe(world, capsys):
    if world["family"] != "clipa":
        pytest.skip("the parameter count below is CLIPA's")
    sets = ["--set", "first_rep_block=2", "--set", "n_rep_tokens=2", "--set", "rep_dim=16"]
    assert main(["describe", "--method", "mmrl", "--backbone", world["spec"], "--json", *sets]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"]["fast_path"] is False and info["backbone"]["text_pooling"] == "last (bidirectional)"
    assert info["method"]["blocks_vision"] == [2, 3] and info["method"]["blocks_text"] == [2, 3]
    # R (2, 16); two aligners per tower (blocks 2, 3) of 16 -> 64 with bias; proj_rep (64, 16)
    assert info["trainable_parameters"] == 2 * 16 + 2 * 2 * (16 * 64 + 64) + 64 * 16


def test_train_eval_and_export_agree(world):
    run, base = world["run"], world["base"]
    metrics = json.loads((run / "eval" / "DescribableTextures-all.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 100.0
    preds = base / "preds.jsonl"
    assert main(["eval", str(run), "--dataset", "dtd", "--predictions", str(preds), "--progress", "lines"]) == 0
    rows = read_jsonl(preds)
    path = base / f"{world['family']}.pt2"
    assert main(["export", str(run), "-o", str(path)]) == 0
    clf = Classifier.load(path, trust_pt2=True)
    images = [str(world["root"] / "dtd" / "images" / r["image"]) for r in rows]
    got = clf.logits(clf.preprocess(images)).numpy()
    want = np.asarray([r["logits"] for r in rows])
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
