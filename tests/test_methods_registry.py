"""The method registry (mmrl.methods): a method registered in this file alone -- MMRL without its
representation branch -- is trained, evaluated, reported and exported by the ordinary commands,
with no line of the package changed (docs/architecture.md, "Adding a method")."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from helpers import make_benchmark_dataset, tiny_train_argv, write_tiny_clip
from mmrl import methods
from mmrl.cli import main
from mmrl.config import ConfigError, load_config, resolve_config
from mmrl.methods import MethodModel, MMRLConfig, MMRLPlusConfig
from mmrl.models import MMRL, Backbone, MMRLPlus, build_method, load_backbone
from mmrl.vocab import doc
from mmrl.models.mmrl import Logits

NAME = "mmrl-cls"


# --------------------------------------------------------------------------- the throwaway method
@dataclass(frozen=True)
class ClassOnlyConfig(MMRLConfig):
    name: str = doc("the method", NAME)


class ClassOnly(MMRL):
    """MMRL whose representation tokens are read by no head: CLIP's own projection for f_r, and all
    three logits are the class token's (so the loss is CE on them plus the regularisers)."""

    config_class = ClassOnlyConfig

    def _build_maps(self, backbone: Backbone, n_v: int, n_t: int) -> None:
        from mmrl.models.aligners import BlockAligners

        self.vision_aligner = BlockAligners(self.cfg.rep_dim, backbone.vision_width, n_v)
        self.text_aligner = BlockAligners(self.cfg.rep_dim, backbone.text_width, n_t)

    def rep_projection(self) -> torch.Tensor:
        return self.clip.visual.proj

    def logits_from_features(self, image, text) -> Logits:
        lc = super().logits_from_features(image, text).class_
        return Logits(lc, lc, lc)


@pytest.fixture
def registered():
    methods.register(methods.MethodSpec(NAME, "MMRL-cls", ClassOnlyConfig, ClassOnly, presets="mmrl"))
    yield
    methods.unregister(NAME)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("registry")
    clip = write_tiny_clip(base / "clip.pt")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures", per_class=8)
    return {"base": base, "clip": clip, "root": root}


# --------------------------------------------------------------------------- the registry itself
def test_builtin_methods_and_their_settings():
    assert methods.names()[:2] == ("mmrl", "mmrl++")
    assert methods.get("mmrl").config is MMRLConfig and methods.get("mmrl++").config is MMRLPlusConfig
    assert methods.title("mmrl++") == "MMRL++"
    # each method has only its own keys: MMRL has no beta, MMRL++ has MMRL's and its own
    assert not hasattr(MMRLConfig(), "beta")
    assert {"beta", "proj_lora_rank", "aligner_lora_rank", "n_rep_tokens"} <= set(MMRLPlusConfig.__dataclass_fields__)
    with pytest.raises(ValueError, match=r"unknown method 'mmrl\+'.*did you mean"):
        methods.get("mmrl+")


def test_models_follow_the_protocol(world):
    bb = load_backbone(str(world["clip"]))
    for name, cls in (("mmrl", MMRL), ("mmrl++", MMRLPlus)):
        model = build_method(bb, methods.method_config(name, first_rep_block=2, n_rep_tokens=2, rep_dim=16))
        assert type(model) is cls and isinstance(model, MethodModel)
    with pytest.raises(TypeError, match="built from MMRLConfig"):
        MMRL(bb, MMRLPlusConfig(first_rep_block=2))


def test_a_key_of_another_method_is_named_as_such():
    with pytest.raises(ConfigError, match=r"'method.beta' is a setting of mmrl\+\+, not of method mmrl"):
        resolve_config("mmrl", "fewshot", "dtd", overrides=["method.beta=0.5"])
    assert resolve_config("mmrl++", "fewshot", "dtd", overrides=["method.beta=0.5"]).method.beta == 0.5


def test_config_yaml_of_mmrl_0_2_still_loads(tmp_path):
    """mmrl 0.2 wrote MMRL++'s three keys into every MMRL config.yaml; they are dropped on reading."""
    from mmrl.config import dump_config

    text = dump_config(resolve_config("mmrl", "fewshot", "dtd"))
    old = text.replace("  logit_scale:", "  beta: 0.9\n  proj_lora_rank: 64\n  aligner_lora_rank: 4\n  logit_scale:")
    (tmp_path / "config.yaml").write_text(old)
    assert load_config(tmp_path / "config.yaml") == resolve_config("mmrl", "fewshot", "dtd")


def test_register_checks_the_spec(registered):
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.MethodSpec(NAME, "x", ClassOnlyConfig, ClassOnly))
    with pytest.raises(ValueError, match="name defaults to"):
        methods.register(methods.MethodSpec("other", "x", ClassOnlyConfig, ClassOnly))


# --------------------------------------------------------------------------- end to end
def test_throwaway_method_trains_evaluates_reports_exports(world, registered, tmp_path, capsys):
    root = world["root"]
    run = tmp_path / "sweep" / "fewshot" / NAME / "DescribableTextures" / "shots_2" / "seed_1"
    assert main(tiny_train_argv(world["clip"], root, run, method=NAME)) == 0
    cfg = load_config(run / "config.yaml")
    assert type(cfg.method) is ClassOnlyConfig and cfg.method.reg_weight == 6.0  # MMRL's preset for DTD
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == NAME and info["status"] == "finished"
    from safetensors import safe_open

    with safe_open(str(run / "adapter.safetensors"), "pt") as f:
        assert "proj_rep" not in f.keys() and "rep_tokens" in f.keys()

    assert main(["eval", str(run), "--dataset", "dtd", "--root", str(root), "--progress", "lines"]) == 0
    res = json.loads((run / "eval" / "DescribableTextures-all.json").read_text())
    assert res["logits"] == "fused" and res["beta"] is None and 0 <= res["accuracy"] <= 100

    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert "MMRL-cls" in (tmp_path / "rep" / "report.md").read_text()

    out = tmp_path / "cls.onnx"
    assert main(["export", str(run), "-o", str(out), "--classes", "a,b,c"]) == 0
    from mmrl import Classifier

    clf = Classifier.load(out)
    assert clf.metadata["method"] == NAME and clf.classes == ["a", "b", "c"]
    capsys.readouterr()
    assert main(["describe", "--method", NAME, "--backbone", str(world["clip"]), "--set", "first_rep_block=2",
                 "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["method"]["name"] == NAME and "proj_rep" not in described["adapter_tensors"]
