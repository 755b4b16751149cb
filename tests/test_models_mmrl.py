"""The core method against docs/method.md, point by point, on tiny CLIPs built in-process."""
from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

import mmrl.models.reference as reference
from mmrl.cli import main as cli_main
from mmrl.models.backbone import Backbone, _frozen, _tokenizer, check_vit_clip, load_backbone
from mmrl.methods import MMRLConfig, MMRLPlusConfig
from mmrl.models import MMRL, build_method, method_config
from mmrl.models.zeroshot import ZeroShotCLIP

CLASSES = ["cat", "dog house", "golden_retriever", "a very long class name with many words in it"]
TEMPLATE = "a photo of a {}."


def tiny_clip(layers: int = 4, seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    clip = CLIP(32, CLIPVisionCfg(layers=layers, width=64, patch_size=8, image_size=32, head_width=32),
                CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=layers),
                quick_gelu=True)
    return _frozen(clip)


def tiny_backbone(layers: int = 4) -> Backbone:
    return Backbone(tiny_clip(layers), _tokenizer(77), "tiny")


def perturbed(model: MMRL, scale: float = 0.1, seed: int = 1) -> MMRL:
    """Move every adapter tensor off its initial value (LoRA B's start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def make(name: str, dtype=torch.float64, **kw) -> MMRL:
    plus = {"beta": 0.6} if name == "mmrl++" else {}
    cfg = method_config(name, n_rep_tokens=3, rep_dim=16, first_rep_block=2, **plus, **kw)
    model = perturbed(build_method(tiny_backbone(), cfg)).to(dtype)
    model.set_classes(CLASSES, TEMPLATE)
    return model


def images(n: int = 3, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=dtype)


class Recorder:
    """Records the input and output of every reference-path block call."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        original = reference.run_block_reference

        def wrapped(blk, x, attn_mask=None):
            y = original(blk, x, attn_mask)
            self.calls.append((x.detach(), y.detach()))
            return y

        monkeypatch.setattr(reference, "run_block_reference", wrapped)


# ----------------------------------------------------------------------------- towers
def test_tower_code_without_tokens_equals_open_clip():
    """Our stem/blocks/heads with no tokens inserted (the frozen teacher branches) give the
    backbone's own encode_image / encode_text (fp32; 1e-5 relative: only the attention
    kernel (SDPA vs nn.MultiheadAttention) and op order differ)."""
    bb = tiny_backbone()
    model = MMRL(bb, MMRLConfig(n_rep_tokens=3, rep_dim=16, first_rep_block=3))
    model.set_classes(CLASSES, TEMPLATE)
    x = images(dtype=torch.float32)
    with torch.no_grad():
        want_img = bb.clip.encode_image(x)
        want_txt = bb.clip.encode_text(bb.tokenizer([TEMPLATE.format(c.replace("_", " ")) for c in CLASSES]))
        got_img = model.encode_image(x, teacher=True).teacher
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    assert rel(got_img, want_img) < 1e-5
    assert rel(model.text_teacher, want_txt) < 1e-5


@pytest.mark.parametrize("name", ["mmrl", "mmrl++"])
def test_text_tokens_identical_across_classes_and_refresh(name, monkeypatch):
    model = make(name)
    rec = Recorder(monkeypatch)
    K, J0 = model.K, model.J0
    reference.encode_text(model)
    text_calls = rec.calls[-len(model.clip.transformer.resblocks):]
    late = text_calls[J0:]
    rep = model.rep_tokens
    for i, (x_in, x_out) in enumerate(late):
        assert x_in.shape[1] == 77 + K                                      # 77 + K positions from block J on
        slots_in = x_in[:, 1:1 + K]
        # text-side tokens see only SOT and earlier tokens: identical for every class
        assert torch.equal(x_out[:, 1:1 + K], x_out[:1, 1:1 + K].expand_as(x_out[:, 1:1 + K]))
        new = model.text_aligner.map(i, rep)
        if i == 0:
            torch.testing.assert_close(slots_in, new.expand_as(slots_in), rtol=0, atol=1e-12)
        elif name == "mmrl":                                               # replace
            torch.testing.assert_close(slots_in, new.expand_as(slots_in), rtol=0, atol=1e-12)
        else:                                                              # beta-blend with previous output
            prev = late[i - 1][1][:, 1:1 + K]
            torch.testing.assert_close(slots_in, 0.6 * new + 0.4 * prev, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["mmrl", "mmrl++"])
def test_vision_token_placement_refresh_and_pooling(name, monkeypatch):
    model = make(name)
    rec = Recorder(monkeypatch)
    x = images()
    feats = reference.encode_image(model, x)
    K, J0 = model.K, model.J0
    blocks = model.clip.visual.transformer.resblocks
    calls = rec.calls[: len(blocks)]
    n_patches = (32 // 8) ** 2
    assert calls[J0 - 1][1].shape[1] == 1 + n_patches                      # blocks 1..J-1 untouched
    stem = model._vision_stem(x)
    for i, (x_in, _) in enumerate(calls[J0:]):
        assert x_in.shape[1] == 1 + K + n_patches
        new = model.vision_aligner.map(i, model.rep_tokens).expand(x.shape[0], -1, -1)
        if i == 0:
            # inserted right after CLS, no positional embedding / ln_pre on them
            torch.testing.assert_close(x_in[:, 1:1 + K], new, rtol=0, atol=1e-12)
            prev_out = calls[J0 - 1][1]
            assert torch.equal(x_in[:, :1], prev_out[:, :1]) and torch.equal(x_in[:, 1 + K:], prev_out[:, 1:])
        elif name == "mmrl":
            torch.testing.assert_close(x_in[:, 1:1 + K], new, rtol=0, atol=1e-12)
        else:
            prev = calls[J0 + i - 1][1][:, 1:1 + K]
            torch.testing.assert_close(x_in[:, 1:1 + K], 0.6 * new + 0.4 * prev, rtol=0, atol=1e-12)
    out = calls[-1][1]
    v = model.clip.visual
    torch.testing.assert_close(feats.class_, v.ln_post(out[:, 0]) @ v.proj, rtol=0, atol=1e-12)
    # ln_post on each token, THEN the mean (not ln_post of the mean)
    want_rep = v.ln_post(out[:, 1:1 + K]).mean(1) @ model.rep_projection()
    torch.testing.assert_close(feats.rep, want_rep, rtol=0, atol=1e-12)
    wrong = v.ln_post(out[:, 1:1 + K].mean(1)) @ model.rep_projection()
    assert (wrong - feats.rep).abs().max() > 1e-3
    assert stem.shape == (3, 1 + n_patches, 64)


def test_eot_read_at_eot_plus_k_and_causal_mask(monkeypatch):
    model = make("mmrl")
    rec = Recorder(monkeypatch)
    t = reference.encode_text(model)
    out = rec.calls[-1][1]
    K = model.K
    eot = model.text_tokens.argmax(-1)
    want = model.clip.ln_final(out[torch.arange(len(CLASSES)), eot + K]) @ model.clip.text_projection
    torch.testing.assert_close(t, want, rtol=0, atol=1e-12)
    # positions after EOT never influence the feature (causal mask over 77 + K)
    tokens = model.text_tokens.clone()
    for c in range(len(CLASSES)):
        tokens[c, eot[c] + 1:] = torch.randint(1, 40000, (77 - eot[c] - 1,))
    model.register_buffer("text_tokens", tokens, persistent=False)
    torch.testing.assert_close(reference.encode_text(model), t, rtol=0, atol=1e-10)
    # the words DO see the tokens: changing R changes every class's feature
    with torch.no_grad():
        model.rep_tokens.add_(0.5)
    changed = (reference.encode_text(model) - t).norm(dim=-1)
    assert (changed > 1e-6).all()


# ----------------------------------------------------------------------------- init
def test_initial_state_mmrl():
    model = build_method(tiny_backbone(), method_config("mmrl", n_rep_tokens=5, rep_dim=512, first_rep_block=2))
    assert model.rep_tokens.shape == (5, 512)
    # N(0, 0.02^2): 2560 samples, std within 10% (5 sigma of the sample std's spread is ~7%)
    assert abs(model.rep_tokens.std().item() - 0.02) < 0.002
    first = model.vision_aligner[0]
    assert len(model.vision_aligner) == 3 and len(model.text_aligner) == 3
    for lin in list(model.vision_aligner)[1:]:
        assert torch.equal(lin.weight, first.weight) and torch.equal(lin.bias, first.bias)
    # PyTorch default Linear init: kaiming-uniform(a=sqrt 5) -> U(+-1/sqrt(fan_in))
    assert first.weight.abs().max() <= 1 / math.sqrt(512)
    # proj_rep: a NEW matrix d_v^-0.5 randn, not a copy of proj
    assert model.proj_rep.shape == (64, 32)
    assert not torch.equal(model.proj_rep, model.clip.visual.proj)
    assert abs(model.proj_rep.std().item() - 64 ** -0.5) < 0.1 * 64 ** -0.5


def test_initial_state_mmrl_plus():
    model = build_method(tiny_backbone(), method_config("mmrl++", n_rep_tokens=5, rep_dim=512, first_rep_block=2))
    al = model.vision_aligner
    rep = model.rep_tokens
    for i in range(len(al)):
        assert al.A[i].shape == (64, 4) and al.B[i].shape == (4, 512)
        assert al.A[i].abs().max() <= 0.5 and al.A[i].abs().max() > 0.3       # U(+-1/sqrt(4))
        assert torch.equal(al.B[i], torch.zeros(4, 512))
        # at step 0 every block's map equals the shared one
        torch.testing.assert_close(al.map(i, rep), al.map(0, rep), rtol=0, atol=0)
        assert torch.equal(al.bias[i], al.bias[0])
    assert model.proj_lora_A.shape == (64, 64) and model.proj_lora_B.shape == (64, 32)
    assert model.proj_lora_A.abs().max() <= 1 / 8 and model.proj_lora_A.abs().max() > 0.1
    # proj + A B equals CLIP's proj at step 0 (B = 0)
    assert torch.equal(model.rep_projection(), model.clip.visual.proj)


# ----------------------------------------------------------------------------- logits and loss
@pytest.mark.parametrize("name", ["mmrl", "mmrl++"])
def test_logits_and_loss_against_formula(name):
    model = make(name)
    x, y = images(), torch.tensor([0, 3, 1])
    out = model.loss(x, y)
    feats = model.encode_image(x, teacher=True)
    t = model.encode_text()
    n = lambda a: a / a.norm(dim=-1, keepdim=True)
    lc = 100 * n(feats.class_) @ n(t).T
    lr = 100 * n(feats.rep) @ n(t).T
    torch.testing.assert_close(out.logits.class_, lc, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out.logits.rep, lr, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out.logits.fused, 0.7 * lc + 0.3 * lr, rtol=1e-12, atol=1e-10)
    ce = lambda lg: -(lg.log_softmax(-1)[torch.arange(3), y]).mean()
    # teacher features: frozen CLIP of the same images and the same single-template prompts
    f_zs = model.clip.encode_image(x)
    t_zs = model.clip.encode_text(model.text_tokens)
    reg_i = 1 - (n(feats.class_) * n(f_zs)).sum(-1).mean()
    reg_t = 1 - (n(t) * n(t_zs)).sum(-1).mean()
    lam = model.cfg.reg_weight
    want = 0.7 * ce(lc) + 0.3 * ce(lr) + lam * reg_i + lam * reg_t
    torch.testing.assert_close(out.total, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.reg_image, reg_i, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.reg_text, reg_t, rtol=1e-10, atol=1e-12)


def test_only_adapter_trains_and_clip_is_frozen():
    model = make("mmrl++")
    out = model.loss(images(), torch.tensor([0, 1, 2]))
    out.total.backward()
    for n, p in model.clip.named_parameters():
        assert not p.requires_grad and p.grad is None, n
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.adapter_state_dict())
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    assert not any(n.startswith("clip.") for n in trainable)


def test_adapter_round_trip_and_mismatch_error():
    a, b = make("mmrl"), make("mmrl")
    perturbed(b, seed=7)
    b.load_adapter_state_dict(a.adapter_state_dict())
    x = images()
    torch.testing.assert_close(a.logits(x).fused, b.logits(x).fused, rtol=0, atol=0)
    bad = dict(a.adapter_state_dict())
    bad["rep_tokens"] = torch.zeros(4, 16)
    with pytest.raises(ValueError, match="rep_tokens"):
        b.load_adapter_state_dict(bad)


def test_zero_shot_clip_matches_open_clip():
    bb = tiny_backbone()
    zs = ZeroShotCLIP(bb)
    zs.set_classes(CLASSES, TEMPLATE)
    x = images(dtype=torch.float32)
    with torch.no_grad():
        lg = zs.logits(x).class_
        img = F.normalize(bb.clip.encode_image(x), dim=-1)
        txt = F.normalize(bb.clip.encode_text(bb.tokenizer([TEMPLATE.format(c.replace("_", " ")) for c in CLASSES])), dim=-1)
    torch.testing.assert_close(lg, 100 * img @ txt.T, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("key,value", [("n_rep_tokens", 0), ("first_rep_block", 0), ("first_rep_block", 5),
                                       ("beta", 1.5), ("beta", -0.1), ("alpha", 2.0), ("rep_dim", 0),
                                       ("name", "coop"), ("reg_weight", -1.0)])
def test_invalid_settings_name_the_key(key, value):
    cfg = MMRLPlusConfig(**{key: value})  # MMRL++: every key of MMRL and its own
    with pytest.raises(ValueError, match=f"method.{key}"):
        build_method(tiny_backbone(layers=4), cfg)


def test_too_shallow_backbone_says_why():
    with pytest.raises(ValueError, match="at least J blocks"):
        MMRL(tiny_backbone(layers=4), MMRLConfig(first_rep_block=6))


def test_resnet_clip_refused():
    clip = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(ValueError, match="needs a ViT"):
        check_vit_clip(clip, "RN50")


# ----------------------------------------------------------------------------- backbones
def test_packaged_toy_clip_is_built_once_and_handed_out_as_independent_copies():
    """`load_backbone("toy-clip")` (called ~30 times by `mmrl demo`) builds the packaged model
    once per process: every call gets its own copy, equal to a fresh build from the file, frozen,
    and changing one copy changes no other; the tokenizer is shared (it is stateless)."""
    from mmrl.models.backbone import TOY_CLIP_FILE, clip_from_openai_state_dict
    from mmrl.models.safe_load import load_clip_state_dict

    a, b = load_backbone("toy-clip"), load_backbone("toy-clip")
    assert a.clip is not b.clip and a.tokenizer is b.tokenizer
    ref = clip_from_openai_state_dict(load_clip_state_dict(TOY_CLIP_FILE)).state_dict()
    assert set(a.clip.state_dict()) == set(ref)
    assert all(torch.equal(v, ref[k]) for k, v in a.clip.state_dict().items())
    with torch.no_grad():
        a.clip.ln_final.weight.add_(1.0)
        a.clip.visual.proj.mul_(2.0)
    c = load_backbone("toy-clip")
    for other in (b, c):
        assert torch.equal(other.clip.ln_final.weight, ref["ln_final.weight"])
        assert torch.equal(other.clip.visual.proj, ref["visual.proj"])
    assert not c.clip.training and not any(p.requires_grad for p in c.clip.parameters())


def test_openai_state_dict_file_any_size(tmp_path):
    """A torch.save'd OpenAI-format state dict: architecture inferred from shapes."""
    torch.manual_seed(0)
    clip = CLIP(48, CLIPVisionCfg(layers=3, width=128, patch_size=16, image_size=64, head_width=64),
                CLIPTextCfg(context_length=40, vocab_size=49408, width=128, heads=2, layers=2), quick_gelu=True)
    clip.eval()
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    bb = load_backbone(str(path))
    d = bb.describe()
    assert (d["vision_width"], d["vision_layers"], d["vision_heads"], d["patch_size"], d["image_size"]) == (128, 3, 2, 16, 64)
    assert (d["text_width"], d["text_layers"], d["text_heads"], d["context_length"], d["embed_dim"]) == (128, 2, 2, 40, 48)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.clip.encode_image(x), clip.encode_image(x), rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in bb.clip.parameters())
    assert bb.tokenizer(["a cat"]).shape == (1, 40)


def test_open_clip_name_with_local_checkpoint(tmp_path):
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "mmrl-test-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    ref = open_clip.create_model("mmrl-test-tiny", pretrained=None)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, ckpt)
    bb = load_backbone(f"mmrl-test-tiny:{ckpt}")
    for k, v in ref.state_dict().items():
        assert torch.equal(bb.clip.state_dict()[k], v), k
    with pytest.raises(ValueError, match="no pretrained tag"):
        load_backbone("mmrl-test-tiny:nosuchtag")
    with pytest.raises(FileNotFoundError):
        load_backbone(str(tmp_path / "missing.pt"))


def test_vit_b16_parameter_counts():
    """Trainable parameter counts of docs/method.md#trainable-parameters on the ViT-B/16 architecture (random init)."""
    bb = load_backbone("ViT-B-16", pretrained=False)
    assert build_method(bb, method_config("mmrl")).num_trainable_parameters() == 4_992_256
    assert build_method(bb, method_config("mmrl++")).num_trainable_parameters() == 813_312
    assert build_method(bb, method_config("mmrl", rep_dim=2048)).num_trainable_parameters() == 18_762_496


def test_describe_cli(capsys):
    assert cli_main(["describe", "--method", "mmrl++", "--backbone", "ViT-B-16", "--set", "method.beta=0.3",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable_parameters"] == 813_312
    assert out["method"]["beta"] == 0.3 and out["method"]["name"] == "mmrl++"
    assert out["backbone"]["vision_layers"] == 12


@pytest.mark.parametrize("name", ["mmrl", "mmrl++"])
def test_data_parallel_loss_scaling_reproduces_global_gradient(name):
    """Two 'ranks' each with part of a global batch (batch_size = global size, world_size = 2):
    the AVERAGE of their gradients (what DDP computes) equals the single-process gradient, and a
    zero-weight padding sample contributes nothing."""
    model = make(name)
    x, y = images(4), torch.tensor([0, 3, 1, 2])
    params = [p for p in model.parameters() if p.requires_grad]
    full = torch.autograd.grad(model.loss(x, y).total, params)
    g0 = torch.autograd.grad(model.loss(x[:3], y[:3], batch_size=4, world_size=2).total, params)
    pad_w = torch.tensor([1.0, 0.0], dtype=torch.float64)          # rank 1: one real sample + one padding
    g1 = torch.autograd.grad(model(x[3:].repeat(2, 1, 1, 1), y[3:].repeat(2), batch_size=4, world_size=2,
                                   weights=pad_w).total, params)
    for f, a, b in zip(full, g0, g1):
        torch.testing.assert_close((a + b) / 2, f, rtol=1e-10, atol=1e-14)
