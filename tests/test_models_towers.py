"""MMRL / MMRL++ on other tower families (docs/method.md, "Other tower families").

For each tiny family of :mod:`towers_zoo` (built in-process, float64):

* the model (the generic path, fused attention by the blocks' parts) equals the rule written
  out in :mod:`mmrl.models.reference` (every block by its library's own forward): loss, the
  three logits and the gradient of every trainable tensor;
* the special case: slots' keys hidden, aligner outputs zeroed, proj_rep = P -> the class-path
  logits are the frozen model's own zero-shot logits (``clip.encode_image`` / ``encode_text``);
* the adapter's stem + blocks + pooling without slots equals the model's own encoders;
* the frozen classifier (export) equals the model's logits.
CLIP itself keeps the fast path (tests/test_models_fast_path.py).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmrl.models import build_method, method_config
from mmrl.models import reference
from mmrl.models.towers import towers_of
from towers_zoo import FAMILIES, IMAGE, tiny_backbone

OTHER = [f for f in FAMILIES if f != "clip"]
CLASSES = ["cat", "dog house", "golden retriever", "a very long class name with words"]
TEMPLATE = "a photo of a {}."
METHODS = ["mmrl", "mmrl++"]


def make(family: str, method: str, seed: int = 1):
    bb = tiny_backbone(family)
    torch.manual_seed(seed)
    plus = {"beta": 0.6, "proj_lora_rank": 4, "aligner_lora_rank": 2} if method == "mmrl++" else {}
    cfg = method_config(method, n_rep_tokens=3, rep_dim=8, first_rep_block=2, reg_weight=2.0, **plus)
    model = build_method(bb, cfg).double()
    bb.clip.double()
    with torch.no_grad():  # every adapter tensor off its initial value (LoRA B's start at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * p.abs().mean().clamp_min(0.05) * torch.randn_like(p))
    model.set_classes(CLASSES, TEMPLATE)
    return model


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def grads(model, out) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    g = torch.autograd.grad(out.total, list(params.values()))
    return dict(zip(params, g))


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("family", OTHER)
def test_other_families_take_the_generic_path_and_clip_the_fast_one(family):
    assert towers_of(tiny_backbone("clip").clip).clip_layout
    assert not make(family, "mmrl").fast


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_without_slots_equals_the_models_own_encoders(family):
    """stem -> blocks (by their parts) -> the tower's pooling and head, with nothing inserted: the
    frozen teacher of the generic path; it must be the model's own encode_image / encode_text."""
    from mmrl.models import generic

    bb = tiny_backbone(family)
    bb.clip.double()
    t = towers_of(bb.clip)
    ids = bb.tokenizer([TEMPLATE.format(c) for c in CLASSES])
    unit = (lambda f: F.normalize(f, dim=-1)) if family == "coca" else (lambda f: f)  # CoCa's encoders normalise
    with torch.no_grad():
        close(unit(generic.text_features(t.text, ids)), bb.clip.encode_text(ids), "text")
        f, _, teacher = generic.image_features(t.vision, images(), 1, lambda i: torch.zeros(3, t.vision.width,
                                                                                           dtype=torch.float64),
                                               lambda s, n: n, None, teacher=True)
        close(unit(teacher), bb.clip.encode_image(images()), "image")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", OTHER)
def test_loss_logits_and_every_gradient_equal_the_reference(family, method):
    model = make(family, method)
    x, y = images(), torch.tensor([0, 2, 3])
    got = model.loss(x, y)
    want = reference.loss(model, x, y)
    for kind in ("class_", "rep", "fused"):
        close(getattr(got.logits, kind), getattr(want.logits, kind), kind)
    for term in ("total", "ce_class", "ce_rep", "reg_image", "reg_text"):
        close(getattr(got, term), getattr(want, term), term)
    g_got, g_want = grads(model, got), grads(model, want)
    assert set(g_got) == set(g_want) and len(g_got) >= 4
    for name in g_got:
        assert g_got[name].abs().sum() > 0, f"{name}: no gradient"
        close(g_got[name], g_want[name], f"grad {name}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", OTHER)
def test_hidden_slots_give_the_frozen_towers_zero_shot_logits(family, method):
    """Slots present but their keys hidden from every other token, aligner outputs zeroed,
    proj_rep = P: the class path is the frozen model's own zero-shot classifier, to float rounding."""
    model = make(family, method)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "aligner" in name:
                p.zero_()
        if method == "mmrl++":
            model.proj_lora_B.zero_()
            assert torch.equal(model.rep_projection(), model.towers.vision.projection())
    model.mask_slot_keys = True
    x = images()
    with torch.no_grad():
        img = F.normalize(model.clip.encode_image(x), dim=-1)
        txt = F.normalize(model.clip.encode_text(model.text_tokens), dim=-1)
        zero_shot = model.cfg.logit_scale * img @ txt.t()
        close(model.logits(x).class_, zero_shot, "fast path class logits")
        close(reference.logits(model, x).class_, zero_shot, "reference class logits")
        close(model.encode_text(), model.text_teacher, "text features = t_zs")
    model.mask_slot_keys = False
    with torch.no_grad():  # and the slots do act when they are seen
        assert not torch.allclose(model.logits(x).class_, zero_shot, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("family", ["siglip", "clipa", "timm-cls", "eva02", "eva02-e", "pe-core", "naflex", "coca"])
def test_frozen_classifier_equals_the_models_logits(family):
    model = make(family, "mmrl++").eval()
    x = images()
    with torch.no_grad():
        logits = model.logits(x)
        for kind, want in (("fused", logits.fused), ("class", logits.class_), ("rep", logits.rep)):
            close(model.freeze(kind)(x), want, kind)


def test_slot_positions_follow_the_rule():
    """SigLIP-like towers: the slots lead both sequences (no CLS; the last text position stays
    the pooled one); timm with CLS + 2 registers: after all three prefix tokens; causal text: after SOT."""
    sig = towers_of(tiny_backbone("siglip").clip)
    assert (sig.vision.n_prefix, sig.text.n_prefix, sig.text.causal) == (0, 0, False)
    reg = towers_of(tiny_backbone("timm-cls").clip)
    assert (reg.vision.n_prefix, reg.text.n_prefix, reg.text.causal) == (3, 1, True)
    assert towers_of(tiny_backbone("siglip").clip).vision.projection().shape == (32, 32)  # identity P


def test_naflex_towers_that_are_not_a_fixed_grid_vit_are_refused_naming_the_part():
    """A NaFlexVit with rotary terms (they depend on each image's grid) or a MAP head that pools the
    prefix tokens too is refused in one line; the zoo's plain one is accepted."""
    from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg

    from mmrl.models.towers import towers_problem

    m = tiny_backbone("naflex").clip
    assert towers_problem(m) is None
    base = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, global_pool="map")
    for kw, want in ((dict(rope_type="axial"), "without rotary position terms (timm NaFlexVit has rope)"),
                     (dict(class_token=True, pool_include_prefix=True), "pool_include_prefix is set")):
        m.visual.trunk = NaFlexVit(cfg=NaFlexVitCfg(**base, **kw), img_size=IMAGE, num_classes=0)
        problem = towers_problem(m)
        assert problem is not None and want in problem and "\n" not in problem, (kw, problem)


def test_a_tower_with_its_own_mean_and_std_gets_images_restandardised():
    """mmrl's pipeline standardises with CLIP's mean/std; a tower configured with others (SigLIP:
    0.5, 0.5) gets exactly the images it was trained on: raw = x * std_clip + mean_clip, then its own."""
    from mmrl.models import ZeroShotCLIP
    from mmrl.models.towers import CLIP_MEAN, CLIP_STD

    model = make("siglip", "mmrl")
    model.clip.visual.preprocess_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    raw = torch.rand(2, 3, IMAGE, IMAGE, dtype=torch.float64)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    as_clip = (raw - mean) / std
    close(model.towers.vision.model_input(as_clip), (raw - 0.5) / 0.5, "restandardised")
    with torch.no_grad():  # the teacher and zero-shot CLIP see the model's own standardisation too
        want = model.clip.encode_image((raw - 0.5) / 0.5)
        close(model.encode_image(as_clip, teacher=True).teacher, want, "teacher")
        zs = ZeroShotCLIP(tiny_backbone("siglip"))
        zs.clip.double()
        zs.clip.load_state_dict(model.clip.state_dict())
        zs.clip.visual.preprocess_cfg = model.clip.visual.preprocess_cfg
        zs.set_classes(CLASSES, TEMPLATE)
        f = F.normalize(want, dim=-1)
        close(zs.logits(as_clip).class_, 100.0 * f @ F.normalize(zs.encode_text(), dim=-1).t(), "zero-shot")
    assert towers_of(tiny_backbone("clip").clip).vision.model_input(as_clip) is as_clip  # CLIP: untouched


@pytest.mark.slow  # the ONNX exporter: ~10 s a file on 2 shared cores
@pytest.mark.parametrize("fmt", ["torch", "onnx"])
@pytest.mark.parametrize("family", ["siglip", "eva02", "naflex"])
def test_exported_classifier_equals_the_model(family, fmt, tmp_path):
    """`mmrl export`'s program (torch.export, then ONNX) of another family: the same logits."""
    from mmrl.engine.export import export_program, write_exported

    model = make(family, "mmrl++").float().eval()
    model.clip.float()
    frozen = model.freeze("fused")
    x = images().float()
    program = export_program(frozen, IMAGE)
    with torch.no_grad():
        want = model.logits(x).fused
        if fmt == "torch":
            torch.testing.assert_close(program.module()(x), want, rtol=1e-5, atol=1e-5)
            return
    ort = pytest.importorskip("onnxruntime")
    path = write_exported(program, {"input_size": IMAGE}, tmp_path / "m.onnx", "onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


def test_a_bare_name_without_an_openai_tag_means_its_first_tag_and_gets_its_mean_and_std():
    from mmrl.models.backbone import _default_tag, _set_preprocess

    assert _default_tag("ViT-B-16") == "openai"
    assert _default_tag("ViT-B-16-SigLIP") == "webli"
    model = tiny_backbone("siglip").clip
    _set_preprocess(model, "ViT-B-16-SigLIP", "webli")
    assert towers_of(model).vision.preprocess["mean"] == (0.5, 0.5, 0.5)


def test_a_tokenizer_that_is_not_cached_is_one_line_with_the_ways_on(monkeypatch):
    import open_clip

    from mmrl.errors import BackboneUnavailableError
    from mmrl.models.backbone import _tokenizer_for

    def not_cached(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files,\n and they are not cached")

    monkeypatch.setattr(open_clip, "get_tokenizer", not_cached)
    monkeypatch.setattr(open_clip, "get_model_config", lambda name: {"text_cfg": {}})  # no HF tokenizer named
    tok = _tokenizer_for(tiny_backbone("siglip").clip, "ViT-B-16-SigLIP:webli")  # built lazily: loading works
    with pytest.raises(BackboneUnavailableError, match=r"tokenizer of ViT-B-16-SigLIP is not cached.*Ways on") as e:
        tok(["a photo"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family", ["clip", "siglip", "eva02"])
def test_device_and_image_size_of_any_family(family):
    from mmrl.models.towers import model_device, model_image_size

    model = make(family, "mmrl")
    assert model_image_size(model) == IMAGE and model_device(model) == torch.device("cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_sizes_and_parameter_counts_of_every_family(family):
    bb = tiny_backbone(family)
    d = bb.describe()
    patch = 4 if family == "naflex" else 8
    assert (d["vision_width"], d["vision_layers"], d["vision_heads"], d["patch_size"], d["image_size"]) == (32, 3, 2, patch, 16)
    # CoCa: one position is its class token's; an HF encoder: 77, or fewer where its learned
    # position table is shorter (the tiny RoBERTa's 40 positions start after the pad id: 38;
    # NLLB's sinusoidal positions have no end)
    ctx = {"coca": 11, "xlmr": 38, "roberta-cls": 38, "nllb": 77}.get(family, 12)
    assert (d["text_width"], d["text_layers"], d["text_heads"], d["context_length"]) == (32, 3, 2, ctx)
    assert d["embed_dim"] == (32 if family in ("siglip", "naflex") else 16) and d["fast_path"] == (family == "clip")
    model = build_method(bb, method_config("mmrl", n_rep_tokens=3, rep_dim=8, first_rep_block=2))
    K, d_r, n = 3, 8, 2  # aligners for blocks 2..3 of each tower
    d_p = 16 if family == "coca" else 32  # proj_rep's rows: d_v, or CoCa's pooler width
    want = K * d_r + 2 * n * (d_r * 32 + 32) + d_p * d["embed_dim"]
    assert model.num_trainable_parameters() == want
    assert model.settings()["blocks_vision"] == [2, 3] and model.settings()["blocks_text"] == [2, 3]


def test_a_hugging_face_tokenizer_without_transformers_says_what_to_install(monkeypatch):
    import importlib.util

    from mmrl.errors import BackboneUnavailableError
    from mmrl.models.backbone import _tokenizer_for

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    tok = _tokenizer_for(tiny_backbone("siglip").clip, "ViT-B-16-SigLIP:webli")
    with pytest.raises(BackboneUnavailableError, match=r'timm/ViT-B-16-SigLIP.*pip install "mmrl\[hf\]"'):
        tok(["a photo"])
