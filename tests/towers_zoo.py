"""Tiny random models of every tower family the adapters accept, built in-process (no download).

Each is the family's own open_clip / timm classes at toy sizes (width 32, 3 blocks, 16x16
images, patch 8), so the towers' real stems, blocks, pooling and heads run:

=============  ===================================================================================
family         what it stands for
=============  ===================================================================================
clip           CLIP ViT (the fast path): CLS pooling, causal text pooled at the largest id
worldwide      MetaCLIP-2 worldwide: CLIP vision, causal text pooled at the first ``eos`` id
avg            open_clip vision tower with average pooling (``pool_type='avg'``)
clipa          CLIPA: average pooling then the norm (``final_ln_after_pool``), no ln_pre,
               bidirectional text pooled at the last position
siglip         SigLIP / SigLIP 2 / PE-Core-like: timm ViT without CLS, MAP head, no projection;
               bidirectional text pooled at the last position, biased text projection
timm-cls       MobileCLIP-B-like: timm ViT with CLS and 2 register tokens, CLS pooling, LayerScale,
               the classifier head as projection; CLIP's causal text
eva01          EVA-01: timm Eva, CLS pooling, layer scale gamma, no rotary embedding
eva02          EVA-02: timm Eva with a rotary embedding on the patch tokens, SwiGLU MLP, a norm
               inside attention (sub-LN)
eva02-e        EVA-02-E: timm Eva with post-norm blocks (``x + norm1(attn(x))``, ``x + norm2(mlp(x))``)
               and a rotary embedding
pe-core        PE-Core: timm Eva with a rotary embedding, CLS and a MAP head
naflex         NaFlex SigLIP 2 (open_clip 4): timm NaFlexVit on its fixed grid (linear patch
               embedding, patch 4: a 4x4 grid from a 3x3 position table resized bilinearly, as
               the real model resizes 16x16 to 24x24), no CLS, MAP head; SigLIP's text
coca           CoCa: open_clip's attentional pooler (8 queries, first pooled) over the image tokens;
               causal text with padding keys hidden and a class token appended and pooled
xlmr           xlm-roberta-*-ViT: CLIP vision; open_clip's HFTextEncoder around a Hugging Face
               XLM-R (post-LN layers, padding-aware learned positions), mean pooler, MLP projection
roberta-cls    RoBERTa, cls pooler (the encoder's own tanh pooler on <s>), linear projection
nllb           nllb-clip-*: an M2M100 encoder (pre-LN layers, final layer_norm, scaled embeddings,
               padding-aware sinusoidal positions), cls pooler (the first token), linear projection
=============  ===================================================================================
"""
from __future__ import annotations

import os
import zlib

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from mmrl.models.backbone import Backbone, _frozen

VOCAB, CTX, IMAGE = 60, 12, 16
FAMILIES = ("clip", "worldwide", "avg", "clipa", "siglip", "timm-cls", "eva01", "eva02", "eva02-e", "pe-core", "naflex",
            "coca", "xlmr", "roberta-cls", "nllb")
HF_FAMILIES = ("xlmr", "roberta-cls", "nllb")


class ToyTokenizer:
    """Words -> ids by a fixed hash; ``[sot] words eos`` padded with 0 to the context.
    ``eos`` = the largest id for 'argmax' towers (CLIP's convention), else 1."""

    def __init__(self, sot: int | None, eos: int, context_length: int = CTX, pad: int = 0):
        self.sot, self.eos, self.context_length, self.pad = sot, eos, context_length, pad

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.context_length), self.pad, dtype=torch.long)
        for r, t in enumerate(texts):
            ids = [3 + zlib.crc32(w.encode()) % (VOCAB - 5) for w in t.lower().split()]
            ids = ([self.sot] if self.sot is not None else []) + ids[: self.context_length - 2] + [self.eos]
            out[r, : len(ids)] = torch.tensor(ids)
        return out


def _register_timm_models() -> None:
    import pytest

    pytest.importorskip("timm", reason="timm towers need timm (pip install -e '.[timm]')")
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    def tiny(**kw):
        def build(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **over):
            return VisionTransformer(**{**dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                                mlp_ratio=2.0), **kw, **over})
        return build

    from timm.models.eva import Eva

    def tiny_eva(**kw):
        def build(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **over):
            return Eva(**{**dict(img_size=IMAGE, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0),
                          **kw, **over})
        return build

    from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg

    def tiny_naflex(**kw):
        def build(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **over):
            over.pop("dynamic_img_size", None)
            cfg = NaFlexVitCfg(patch_size=4, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, **kw)
            return NaFlexVit(cfg=cfg, img_size=IMAGE, **over)
        return build

    for name, make, kw in (
            ("mmrl_test_vit_map", tiny, dict(class_token=False, global_pool="map", no_embed_class=True)),
            ("mmrl_test_vit_cls_reg", tiny, dict(reg_tokens=2, global_pool="token", init_values=0.1)),
            ("mmrl_test_eva01", tiny_eva, dict(global_pool="token", init_values=0.1)),
            ("mmrl_test_eva02", tiny_eva, dict(global_pool="token", use_rot_pos_emb=True, ref_feat_shape=(2, 2),
                                               swiglu_mlp=True, scale_attn_inner=True)),
            ("mmrl_test_pe", tiny_eva, dict(global_pool="map", use_rot_pos_emb=True, ref_feat_shape=(2, 2))),
            ("mmrl_test_eva02_e", tiny_eva, dict(global_pool="token", use_rot_pos_emb=True, ref_feat_shape=(2, 2),
                                                 use_post_norm=True)),
            ("mmrl_test_naflex", tiny_naflex, dict(global_pool="map", act_layer="gelu_tanh", pos_embed_grid_size=(3, 3),
                                                   pos_embed_interp_mode="bilinear"))):
        if name not in timm.list_models(name):
            fn = make(**kw)
            fn.__name__ = name
            register_model(fn)


def hf_config(family: str):
    """A tiny Hugging Face config of an HF text family (pad id 1, as XLM-R's and NLLB's)."""
    import pytest

    transformers = pytest.importorskip("transformers", reason="HF text towers need transformers (pip install -e '.[hf]')")
    if family == "nllb":
        return transformers.M2M100Config(vocab_size=VOCAB, d_model=32, encoder_layers=3, decoder_layers=1,
                                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=48,
                                         decoder_ffn_dim=48, max_position_embeddings=40, pad_token_id=1,
                                         bos_token_id=0, eos_token_id=2, scale_embedding=True, dropout=0.1,
                                         activation_function="relu")
    cls = transformers.XLMRobertaConfig if family == "xlmr" else transformers.RobertaConfig
    return cls(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
               max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
               layer_norm_eps=1e-5)


def hf_config_dir(family: str) -> str:
    """The tiny config saved to a folder of its own: open_clip builds its HFTextEncoder from a
    name or path exactly as for a real model (AutoConfig.from_pretrained reads the folder, offline)."""
    import tempfile
    from pathlib import Path

    d = Path(tempfile.gettempdir()) / f"mmrl-test-hf-{family}-{os.getpid()}"
    if not (d / "config.json").is_file():
        hf_config(family).save_pretrained(str(d))
    return str(d)


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A frozen, randomly initialised model of ``family`` (see module docstring)."""
    torch.manual_seed(seed)
    text = dict(context_length=CTX, vocab_size=VOCAB, width=32, heads=2, layers=3)
    vision = dict(layers=3, width=32, head_width=16, patch_size=8, image_size=IMAGE)
    if family == "clip":
        m = CLIP(16, CLIPVisionCfg(**vision), CLIPTextCfg(**text))
    elif family == "worldwide":
        m = CLIP(16, CLIPVisionCfg(**vision), CLIPTextCfg(**text, pool_type="eos", eos_id=1))
    elif family == "avg":
        m = CLIP(16, CLIPVisionCfg(**vision, pool_type="avg"), CLIPTextCfg(**text))
    elif family == "clipa":
        m = CLIP(16, CLIPVisionCfg(**vision, pool_type="avg", final_ln_after_pool=True, no_ln_pre=True),
                 CLIPTextCfg(**text, pool_type="last", no_causal_mask=True))
    elif family in ("siglip", "naflex"):  # the same SigLIP text and MAP head; a timm ViT or a NaFlexVit
        _register_timm_models()
        timm_name = "mmrl_test_vit_map" if family == "siglip" else "mmrl_test_naflex"
        m = CustomTextCLIP(32, CLIPVisionCfg(image_size=IMAGE, timm_model_name=timm_name,
                                             timm_pool="map", timm_proj="none"),
                           CLIPTextCfg(**text, pool_type="last", no_causal_mask=True, proj_bias=True),
                           init_logit_bias=-10)
    elif family == "timm-cls":
        _register_timm_models()
        m = CustomTextCLIP(16, CLIPVisionCfg(image_size=IMAGE, timm_model_name="mmrl_test_vit_cls_reg",
                                             timm_pool="token", timm_proj=None),
                           CLIPTextCfg(**text))
    elif family in ("eva01", "eva02", "eva02-e", "pe-core"):
        _register_timm_models()
        timm_name = {"eva01": "mmrl_test_eva01", "eva02": "mmrl_test_eva02", "eva02-e": "mmrl_test_eva02_e",
                     "pe-core": "mmrl_test_pe"}[family]
        m = CustomTextCLIP(16, CLIPVisionCfg(image_size=IMAGE, timm_model_name=timm_name,
                                             timm_pool="map" if family == "pe-core" else "token", timm_proj=None),
                           CLIPTextCfg(**text))
    elif family == "coca":
        from open_clip.coca_model import CoCa

        m = CoCa(16, {"context_length": CTX, "vocab_size": VOCAB, "width": 32, "heads": 2, "layers": 2},
                 {**text, "context_length": CTX - 1, "embed_cls": True, "output_tokens": True},
                 {**vision, "attentional_pool": True, "attn_pooler_queries": 8, "attn_pooler_heads": 2,
                  "output_tokens": True})
    elif family in HF_FAMILIES:
        pooler, proj = {"xlmr": ("mean_pooler", "mlp"), "roberta-cls": ("cls_pooler", "linear"),
                        "nllb": ("cls_pooler", "linear")}[family]
        path = hf_config_dir(family)
        torch.manual_seed(seed)
        m = CustomTextCLIP(16, CLIPVisionCfg(**vision),
                           CLIPTextCfg(hf_model_name=path, hf_tokenizer_name=path, hf_pooler_type=pooler,
                                       hf_proj_type=proj, hf_model_pretrained=False, context_length=CTX))
    else:
        raise KeyError(family)
    with torch.no_grad():  # off their initial values (LayerScale, zero biases...), so every part matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return _frozen(m)


def tokenizer_of(family: str) -> ToyTokenizer:
    if family == "worldwide":
        return ToyTokenizer(sot=2, eos=1)
    if family in ("clipa", "siglip", "naflex"):
        return ToyTokenizer(sot=None, eos=1)
    if family in ("xlmr", "roberta-cls"):  # <s> words </s>, padded with <pad> = 1
        return ToyTokenizer(sot=0, eos=2, pad=1)
    if family == "nllb":  # the language code first, words, </s>, padded with 1
        return ToyTokenizer(sot=VOCAB - 1, eos=2, pad=1)
    if family == "coca":  # one position of the context is its class token's
        return ToyTokenizer(sot=2, eos=VOCAB - 1, context_length=CTX - 1)
    return ToyTokenizer(sot=2, eos=VOCAB - 1)


def tiny_backbone(family: str, seed: int = 0) -> Backbone:
    return Backbone(tiny_model(family, seed), tokenizer_of(family), f"tiny-{family}")
