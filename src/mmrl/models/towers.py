"""Tower adapters: the one module that reads open_clip / timm internals.

MMRL needs the same few things from every transformer tower (docs/method.md, "Other tower
families"): a stem that turns the input into tokens, a list of pre-LN attention blocks, the
final norm, the tower's own pooling and head, and where the K slots go. This module finds
them by the PARTS a model has (not by its class), so that open_clip 3.x and 4.x, open_clip's
own towers with their pooling variants (CLIPA, CoCa, SigLIP-style text) and timm ViTs / Evas
wrapped by open_clip's ``TimmModel`` (SigLIP, SigLIP 2, MobileCLIP-B, ViTamin, EVA, PE-Core;
NaFlex SigLIP 2 on its fixed grid) all look alike to the rest of mmrl:

* :class:`BlockParts` -- one pre-LN block seen through one set of names (``norm1``, fused
  ``qkv_weight`` (3D, D), ``out_proj``, ``ls1``, ``norm2``, ``mlp``, ``ls2``, ``num_heads``)
  whatever its library calls them; :func:`block_problem` says what a block lacks.
* :class:`VisionTower` -- ``stem(images) -> (B, N, d_v)`` (after ``model_input``: the tower's own
  mean/std), ``blocks`` / ``run_block`` (timm Evas by their own forward, rotary terms inside),
  ``n_prefix`` (the slots go after this many leading tokens), ``pool(tokens) -> (B, d_e)`` (the
  tower's head over its own tokens), ``rep_features(slots) -> (B, rep_width)``, ``projection()``
  (P, or the identity).
* :class:`TextTower` -- ``embed(ids) -> (C, T, d_t)`` and the tower's own mask, ``extend_mask``
  (over the slots), ``blocks``, ``causal``, ``n_prefix``, ``pool(tokens, ids) -> (C, d_e)``.
* :func:`towers_of` / :func:`towers_problem` / :func:`refusal` -- both towers of a model, or one
  line naming the model and the part it lacks.

Anything not recognised is refused; nothing here changes a weight (an Eva block's
``num_prefix_tokens`` is raised by K for the duration of one call, see ``run_block``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

# mmrl.models.blocks (the fused block computation) imports this module's BlockParts: it is
# imported inside the three functions that run a block by its parts.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults when a model names none
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class TowerError(ValueError):
    """A model whose towers MMRL cannot adapt; the message is one line naming the part."""


# --------------------------------------------------------------------------- blocks
def _identity(m: object) -> bool:
    return m is None or isinstance(m, nn.Identity)


def attention_layout_problem(attn: nn.Module) -> str | None:
    """What keeps ``attn`` from being plain fused multi-head self-attention, or None.

    Parts, not class: open_clip 3.x's ``nn.MultiheadAttention``, 4.x's own ``Attention``
    (``in_proj_weight`` (3D, D), ``in_proj_bias``, ``out_proj``) and timm's ``Attention``
    (``qkv`` Linear (3D, D), ``proj``) pass. Anything that changes ``softmax(q k^T / sqrt(d_h)) v``
    is refused: separate q/k/v weights, extra key/value biases, scaled-cosine attention,
    per-head scales, q/k or inner norms, gates, rotary terms, a non-standard scale.
    """
    if isinstance(getattr(attn, "qkv", None), nn.Linear):       # timm
        w, out, heads = attn.qkv.weight, getattr(attn, "proj", None), getattr(attn, "num_heads", None)
        bias = attn.qkv.bias
        if getattr(attn, "rope", None) is not None or hasattr(attn, "rotate_half"):
            return "attention without rotary position terms"
    else:                                                       # open_clip 3.x / 4.x
        w, out, heads = (getattr(attn, n, None) for n in ("in_proj_weight", "out_proj", "num_heads"))
        bias = getattr(attn, "in_proj_bias", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[0] != 3 * w.shape[1]:
        return "a fused q/k/v projection (in_proj_weight of shape (3D, D))"
    D = w.shape[1]
    if bias is not None and tuple(bias.shape) != (3 * D,):
        return "an in_proj_bias of shape (3D,)"
    if not isinstance(out, nn.Linear) or (out.in_features, out.out_features) != (D, D):
        return "an out_proj Linear (D, D)"
    if not isinstance(heads, int) or heads < 1 or D % heads:
        return "a num_heads that divides the width"
    if getattr(attn, "bias_k", None) is not None or getattr(attn, "add_zero_attn", False):
        return "attention without extra key/value biases (bias_k, add_zero_attn)"
    for name in ("logit_scale", "head_scale", "gate", "q_bias", "k_bias"):
        if getattr(attn, name, None) is not None:
            return f"attention without {name}"
    for name in ("ln_q", "ln_k", "ln_inner", "q_norm", "k_norm", "norm"):
        if not _identity(getattr(attn, name, None)):
            return f"attention without {name}"
    scale = getattr(attn, "scale", None)
    if scale is not None and abs(float(scale) - (D // heads) ** -0.5) > 1e-12:
        return "the standard attention scale 1/sqrt(head width)"
    return None


# open_clip and timm name the same parts differently: (norm1, ls1, norm2, ls2, attn, mlp)
_NAMES = {"open_clip": ("ln_1", "ls_1", "ln_2", "ls_2"), "timm": ("norm1", "ls1", "norm2", "ls2")}


def _block_kind(blk: nn.Module) -> str | None:
    # timm's EvaBlock: norm1 / norm2 with its layer scale gamma_1 / gamma_2 (None without one);
    # EvaBlockPostNorm (EVA02-E: x + norm1(attn(x)), then x + norm2(mlp(x))) has no gamma_1 but
    # the same Eva attention, which counts the prefix tokens its rotary embedding skips. Both
    # are run by their own forward, so their norms' places do not matter here.
    norms = all(isinstance(getattr(blk, n, None), nn.Module) for n in ("norm1", "norm2"))
    eva_attention = isinstance(getattr(getattr(blk, "attn", None), "num_prefix_tokens", None), int)
    if norms and (hasattr(blk, "gamma_1") or eva_attention):
        return "eva"
    for kind, (n1, _, n2, _) in _NAMES.items():
        if isinstance(getattr(blk, n1, None), nn.Module) and isinstance(getattr(blk, n2, None), nn.Module):
            return kind
    return None


def block_problem(blk: nn.Module) -> str | None:
    """What keeps ``blk`` from being a pre-LN residual attention block
    ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``, or None (parts, not class)."""
    kind = _block_kind(blk)
    if kind is None:
        for n1, _, n2, _ in _NAMES.values():
            if hasattr(blk, n1) or hasattr(blk, n2):
                return f"a block part {n2 if hasattr(blk, n1) else n1}"
        return "a block part ln_1 (the norm before attention)"
    for name in ("attn", "mlp"):
        if not isinstance(getattr(blk, name, None), nn.Module):
            return f"a block part {name}"
    if kind == "eva":  # run by its own forward (rotary terms inside): only where the slots go matters
        if not isinstance(getattr(blk.attn, "num_prefix_tokens", None), int):
            return "an Eva attention with num_prefix_tokens (the tokens its rotary embedding skips)"
        return None
    n1, l1, n2, l2 = _NAMES[kind]
    if hasattr(blk, "ln_1_kv"):
        return "self-attention blocks (not cross-attention)"
    for name in (l1, l2):
        if not callable(getattr(blk, name, None)):
            return f"a block part {name} (LayerScale or identity; post-norm blocks have none)"
    for name in ("ln_attn", "attn_out_norm", "post_attention_norm"):  # post-norms change the math
        if not _identity(getattr(blk, name, None)):
            return f"blocks without a norm after attention ({name})"
    return attention_layout_problem(blk.attn)


class BlockParts:
    """A pre-LN attention block under one set of names (open_clip's or timm's underneath).
    timm's Eva blocks (``kind='eva'``) are only run by their own forward (:meth:`VisionTower.run_block`).

    Properties are read from the block each time, so moving or copying the model keeps them
    right. ``forward(x, attn_mask)`` is the block's OWN forward (batch-first (B, N, D); an
    additive float mask), for reference computations.
    """

    __slots__ = ("blk", "kind")

    def __init__(self, blk: nn.Module):
        self.blk = blk
        self.kind = _block_kind(blk)

    @property
    def _attn(self) -> nn.Module:
        return self.blk.attn

    @property
    def norm1(self) -> nn.Module:
        return getattr(self.blk, _NAMES[self.kind][0])

    @property
    def ls1(self) -> nn.Module:
        return getattr(self.blk, _NAMES[self.kind][1])

    @property
    def norm2(self) -> nn.Module:
        return getattr(self.blk, _NAMES[self.kind][2])

    @property
    def ls2(self) -> nn.Module:
        return getattr(self.blk, _NAMES[self.kind][3])

    @property
    def mlp(self) -> nn.Module:
        return self.blk.mlp

    @property
    def qkv_weight(self) -> Tensor:  # (3D, D)
        a = self._attn
        return a.qkv.weight if self.kind == "timm" else a.in_proj_weight

    @property
    def qkv_bias(self) -> Tensor | None:  # (3D,)
        a = self._attn
        return a.qkv.bias if self.kind == "timm" else a.in_proj_bias

    @property
    def out_proj(self) -> nn.Linear:
        a = self._attn
        return a.proj if self.kind == "timm" else a.out_proj

    @property
    def num_heads(self) -> int:
        return self._attn.num_heads

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The block's own forward, (B, N, D) -> (B, N, D). open_clip 3.x's
        ``nn.MultiheadAttention`` blocks may be sequence-first; 4.x's and timm's are batch-first."""
        if self.kind == "open_clip" and not getattr(self._attn, "batch_first", True):
            return self.blk(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        return self.blk(x, attn_mask=attn_mask)


def parts(blk: nn.Module | BlockParts) -> BlockParts:
    """``blk`` as :class:`BlockParts` (a view is returned as it is)."""
    return blk if isinstance(blk, BlockParts) else BlockParts(blk)


def _blocks_problem(blocks: Sequence[nn.Module], tower: str) -> str | None:
    if len(blocks) == 0:
        return f"{tower} transformer blocks"
    for i, blk in enumerate(blocks):
        problem = block_problem(blk)
        if problem is not None:
            return f"{tower} block {i} ({type(blk).__name__}) is not supported: MMRL needs {problem}"
    return None


def _size(v: object) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


# --------------------------------------------------------------------------- vision
@dataclass
class VisionTower:
    """The image tower of a model, whatever its library. ``kind``: ``open_clip`` (open_clip's
    ``VisionTransformer``) or ``timm`` (a timm ViT inside open_clip's ``TimmModel``)."""

    module: nn.Module
    kind: str

    # ---- sizes
    @property
    def _trunk(self) -> nn.Module:
        return self.module.trunk

    @property
    def block_modules(self) -> Sequence[nn.Module]:
        return self.module.transformer.resblocks if self.kind == "open_clip" else self._trunk.blocks

    @property
    def blocks(self) -> list[BlockParts]:
        return [BlockParts(b) for b in self.block_modules]

    def run_block(self, blk: BlockParts, x: Tensor, attn_mask: Tensor | None = None, n_slots: int = 0,
                  reference: bool = False) -> Tensor:
        """One block on (B, N, d_v) tokens whose K = ``n_slots`` slots follow the ``n_prefix``
        leading tokens; ``attn_mask`` boolean (True = may attend) or None. Fused attention by the
        block's parts (:func:`mmrl.models.blocks.run_block`), or its own forward with
        ``reference``. An Eva block always runs its own forward with the tower's rotary
        embedding, the slots counted among its prefix tokens so that they get no rotary term."""
        if self.kind != "eva":
            if reference:
                return blk.forward(x, _additive(attn_mask, x.dtype))
            from mmrl.models.blocks import run_block

            return run_block(blk, x, attn_mask=attn_mask)
        attn = blk.blk.attn
        npt = attn.num_prefix_tokens
        attn.num_prefix_tokens = npt + n_slots
        try:
            return blk.blk(x, rope=self._rope(), attn_mask=_additive(attn_mask, x.dtype))
        finally:
            attn.num_prefix_tokens = npt

    def _rope(self) -> Tensor | None:
        rope = getattr(self._trunk, "rope", None)
        return None if rope is None else rope.get_embed()

    @property
    def width(self) -> int:  # d_v
        return self.module.transformer.width if self.kind == "open_clip" else int(self._trunk.embed_dim)

    @property
    def layers(self) -> int:
        return len(self.block_modules)

    @property
    def heads(self) -> int:
        return int(self.block_modules[0].attn.num_heads)

    @property
    def patch_size(self) -> int:
        if self.kind == "open_clip":
            return _size(self.module.conv1.kernel_size)
        return _size(self._stem_module.patch_size)

    @property
    def _stem_module(self) -> nn.Module:
        """A timm trunk's patch embedding: ``patch_embed``, or a NaFlex trunk's ``embeds``
        (patches, position table and prefix tokens in one module)."""
        t = self._trunk
        return t.embeds if _naflex_stem(t) else t.patch_embed

    @property
    def image_size(self) -> int:
        return _size(self.module.image_size)

    @property
    def n_prefix(self) -> int:
        """Leading tokens the slots go after: CLIP's CLS; a timm ViT's CLS and register tokens
        (none for SigLIP's MAP-pooled towers: the slots go before the patch tokens)."""
        return 1 if self.kind == "open_clip" else int(self._trunk.num_prefix_tokens)

    @property
    def preprocess(self) -> dict:
        """``{"mean", "std", "interpolation", "resize_mode"}`` from the model's own config
        (what open_clip attaches to it), open_clip's defaults where it says nothing."""
        cfg = dict(getattr(self.module, "preprocess_cfg", None) or {})
        return {"mean": tuple(float(v) for v in cfg.get("mean", CLIP_MEAN)),
                "std": tuple(float(v) for v in cfg.get("std", CLIP_STD)),
                "interpolation": cfg.get("interpolation", "bicubic"), "resize_mode": cfg.get("resize_mode", "shortest")}

    # ---- computation
    def model_input(self, images: Tensor) -> Tensor:
        """Images standardised with CLIP's mean/std (mmrl's data pipeline and exported files) ->
        standardised with the model's own (SigLIP: 0.5, 0.5): an exact per-channel affine map;
        the images themselves where the model uses CLIP's (every CLIP ViT: nothing is computed)."""
        pre = self.preprocess
        if pre["mean"] == CLIP_MEAN and pre["std"] == CLIP_STD:
            return images
        c_mean, c_std, mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(3, 1, 1)
                                    for v in (CLIP_MEAN, CLIP_STD, pre["mean"], pre["std"]))
        return (images * c_std + c_mean - mean) / std

    def stem(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) CLIP-standardised images (:meth:`model_input`) -> (B, n_prefix + P, d_v):
        patches, prefix tokens, position embedding, pre-norm."""
        images = self.model_input(images)
        if self.kind == "open_clip":
            v = self.module
            x = v.conv1(images).flatten(2).transpose(1, 2)                  # (B, P, d_v)
            cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            return v.ln_pre(v.patch_dropout(x))
        t = self._trunk
        if _naflex_stem(t):  # NaFlexVit's fixed-grid mode: the position table resized to the grid inside
            x, _ = t.embeds(images)
            return t.norm_pre(x)
        if self.kind == "eva":  # its _pos_embed also returns the rotary embedding (see _rope)
            x, _ = t._pos_embed(t.patch_embed(images))
            return t.norm_pre(x)
        x = t._pos_embed(t.patch_embed(images))
        return t.norm_pre(t.patch_drop(x))

    def final_norm(self, x: Tensor) -> Tensor:
        """Every norm the tower applies after its last block, per token (..., d_v) -> (..., d_v):
        ``ln_post``; a timm ViT's ``norm`` and then its ``fc_norm`` (the norm after pooling)."""
        if self.kind == "open_clip":
            return self.module.ln_post(x)
        return self._trunk.fc_norm(self._trunk.norm(x))

    @property
    def attn_pool(self) -> nn.Module | None:
        """open_clip's attentional pooler (CoCa), or None."""
        return getattr(self.module, "attn_pool", None) if self.kind == "open_clip" else None

    @property
    def rep_width(self) -> int:
        """Width of the representation features before ``proj_rep``: d_v, or the attentional
        pooler's output width (CoCa: the pooler maps d_v to d_e before its final norm)."""
        if self.attn_pool is not None:
            return int(self.module.proj.shape[0])
        return self.width

    def rep_features(self, slots: Tensor) -> Tensor:
        """The representation path before ``proj_rep``: (B, K, d_v) slots after the last block ->
        (B, rep_width): each slot through the final norm, then their mean; a tower with an
        attentional pooler pools the K slots with it instead (its queries over the slots, its
        ``ln_post``, its first query), the slots' counterpart of its class path."""
        if self.attn_pool is not None:
            return self.module.ln_post(self.attn_pool(slots))[:, 0]
        return self.final_norm(slots).mean(dim=1)

    def pool(self, x: Tensor) -> Tensor:
        """The tower's own head over its own tokens (no slots among them): final norm, pooling,
        projection. (B, n_prefix + P, d_v) -> (B, d_e)."""
        if self.kind == "open_clip":
            v = self.module
            if self.attn_pool is not None:  # CoCa: the pooler's queries over all tokens, ln_post, query 0
                return v.ln_post(v.attn_pool(x))[:, 0] @ v.proj
            # 'tok': CLS; 'avg': the mean of the patch tokens (CLS excluded, as open_clip does);
            # the norm before the pooling, or after it (CLIPA's final_ln_after_pool): both per token
            if v.pool_type == "tok":
                pooled = v.ln_post(x[:, 0])
            elif v.final_ln_after_pool:
                pooled = v.ln_post(x[:, 1:].mean(dim=1))
            else:
                pooled = v.ln_post(x[:, 1:]).mean(dim=1)
            return pooled @ v.proj
        return self.module.head(self._trunk.forward_head(self._trunk.norm(x)))

    def projection(self) -> Tensor:
        """P (d_v, d_e): the tower's frozen linear output projection (a timm ViT: its classifier
        ``head`` then open_clip's ``head.proj``, whichever are Linear; their biases are not part
        of P); the identity where the head projects nothing (SigLIP's MAP head: d_v == d_e)."""
        if self.kind == "open_clip":
            return self.module.proj
        P = None
        for lin in (getattr(self._trunk, "head", None), getattr(self.module.head, "proj", None)):
            if isinstance(lin, nn.Linear):
                P = lin.weight.t() if P is None else P @ lin.weight.t()
        if P is None:
            ref = next(self.module.parameters())
            P = torch.eye(self.width, dtype=ref.dtype, device=ref.device)
        return P

    @property
    def is_clip_layout(self) -> bool:
        """CLIP's own layout (CLS pooled after ln_post, then ``proj``): the fast path applies."""
        v = self.module
        return (self.kind == "open_clip" and v.pool_type == "tok" and not v.final_ln_after_pool
                and self.attn_pool is None)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = may attend) as the additive float mask every library's blocks take."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _naflex_stem(trunk: nn.Module) -> bool:
    """A NaFlexVit-style trunk: one ``embeds`` module turns (B, 3, H, W) images into tokens
    (patchify, projection, position table resized to the grid, prefix tokens), no ``patch_embed``."""
    return isinstance(getattr(trunk, "embeds", None), nn.Module) and not hasattr(trunk, "patch_embed")


def vision_problem(visual: nn.Module) -> str | None:
    """What keeps ``visual`` from being an image tower MMRL can adapt, or None."""
    if hasattr(visual, "conv1") and hasattr(visual, "transformer"):       # open_clip VisionTransformer
        if getattr(visual, "attn_pool", None) is not None:
            if getattr(visual, "attn_pool_contrastive", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
                return "the original CoCa attentional pooler (one pooler, its first query pooled)"
        elif getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            return f"vision pooling 'tok' or 'avg' (this tower pools {visual.pool_type!r})"
        if not isinstance(getattr(visual, "proj", None), torch.Tensor):
            return "a vision output projection proj (d_v, d_e)"
        return _blocks_problem(visual.transformer.resblocks, "vision")
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:                                                 # open_clip TimmModel
        name = type(trunk).__name__
        if hasattr(trunk, "stages") or not hasattr(trunk, "blocks"):
            return f"a vision transformer (timm {name} is a convolutional tower: the method needs tokens)"
        problem = _naflex_problem(trunk) if _naflex_stem(trunk) else _timm_vit_problem(trunk)
        if problem is not None:
            return problem
        if getattr(trunk, "attn_pool", None) is not None and getattr(trunk, "pool_include_prefix", False):
            return "a MAP head over the patch tokens only (pool_include_prefix is set)"
        if not isinstance(visual.head, nn.Sequential) or any(
                n not in ("drop", "proj") for n, _ in visual.head.named_children()):
            return "a vision head that is a linear projection or nothing (TimmModel head)"
        if not isinstance(getattr(trunk, "head", None), (nn.Linear, nn.Identity)):
            return f"a timm classifier head that is Linear or nothing (timm {name})"
        return _blocks_problem(trunk.blocks, "vision")
    if hasattr(visual, "layer1") or hasattr(visual, "stages"):
        return "a vision transformer (this is a convolutional tower: the method needs tokens)"
    return f"a vision transformer ({type(visual).__name__} has neither conv1 + transformer nor a timm trunk)"


def _timm_vit_problem(trunk: nn.Module) -> str | None:
    """What keeps a timm ViT / Eva trunk (``patch_embed`` + ``_pos_embed``) from MMRL's stem and
    rotary assumptions, or None."""
    name = type(trunk).__name__
    for part in ("patch_embed", "_pos_embed", "norm", "forward_head", "num_prefix_tokens"):
        if not hasattr(trunk, part):
            return f"a timm ViT part {part} (timm {name} has none: not adapted yet)"
    if getattr(trunk, "rope_mixed", False) or getattr(trunk, "dynamic_img_size", False):
        return f"a fixed rotary embedding and image size (timm {name}: rope_mixed / dynamic_img_size)"
    eva = len(trunk.blocks) > 0 and _block_kind(trunk.blocks[0]) == "eva"
    if getattr(trunk, "rope", None) is not None and not eva:
        return f"vision attention without rotary position terms (timm {name} has rope)"
    for part in ("pos_embed", "norm_pre") + (() if eva else ("patch_drop",)):
        if not hasattr(trunk, part):
            return f"a timm ViT part {part} (timm {name})"
    return None


def _naflex_problem(trunk: nn.Module) -> str | None:
    """What keeps a NaFlexVit trunk from its fixed-grid ViT computation, or None: images in, no
    rotary embedding (its per-grid rotary terms are not adapted), the parts the generic path calls."""
    name = type(trunk).__name__
    for part in ("norm_pre", "norm", "fc_norm", "forward_head", "num_prefix_tokens"):
        if not hasattr(trunk, part):
            return f"a timm ViT part {part} (timm {name})"
    emb = trunk.embeds
    if not getattr(emb, "is_linear", False) and not isinstance(getattr(emb, "proj", None), nn.Conv2d):
        return f"a NaFlex patch embedding by a linear or convolutional projection (timm {name})"
    if not hasattr(emb, "patch_size"):
        return f"a NaFlex patch embedding with a patch_size (timm {name})"
    if getattr(trunk, "rope", None) is not None:
        return f"vision attention without rotary position terms (timm {name} has rope)"
    return None


# --------------------------------------------------------------------------- text
@dataclass
class TextTower:
    """The text tower of a model: open_clip's text transformer, inline in ``CLIP`` (3.x keeps
    ``token_embedding``, ``transformer``, ``ln_final``... on the model) or ``model.text``."""

    module: nn.Module   # the module holding token_embedding, transformer, ln_final, ...
    pool_type: str      # 'argmax' (CLIP: EOT = largest id), 'eos', 'last' or 'first'
    eos_id: int | None

    @property
    def block_modules(self) -> Sequence[nn.Module]:
        return self.module.transformer.resblocks

    @property
    def blocks(self) -> list[BlockParts]:
        return [BlockParts(b) for b in self.block_modules]

    @property
    def width(self) -> int:  # d_t
        return int(self.module.token_embedding.embedding_dim)

    @property
    def layers(self) -> int:
        return len(self.block_modules)

    @property
    def heads(self) -> int:
        return int(self.block_modules[0].attn.num_heads)

    @property
    def context_length(self) -> int:
        """Prompt tokens per class (CoCa's position table has one more, for its class token)."""
        return int(self.module.positional_embedding.shape[0]) - (self.cls_emb is not None)

    @property
    def vocab_size(self) -> int:
        return int(self.module.token_embedding.num_embeddings)

    @property
    def embed_dim(self) -> int:
        p = getattr(self.module, "text_projection", None)
        if p is None:  # no projection (text width = joint width, e.g. SigLIP i18n)
            return self.width
        return int(p.out_features if isinstance(p, nn.Linear) else p.shape[1])

    @property
    def causal(self) -> bool:
        return getattr(self.module, "attn_mask", None) is not None

    @property
    def cls_emb(self) -> Tensor | None:
        """CoCa's class token, appended after the prompt and pooled, or None."""
        return getattr(self.module, "cls_emb", None)

    @property
    def n_prefix(self) -> int:
        """Tokens the slots go after: SOT for a causal tower; for a bidirectional tower pooled at
        the last position, none (the slots lead the sequence, the last position stays the pooled one)."""
        return 1 if self.causal or self.pool_type == "first" else 0

    @property
    def is_clip_layout(self) -> bool:
        """CLIP's own layout (causal, pooled at the largest id, projection a matrix): the fast path applies."""
        return (self.causal and self.pool_type == "argmax" and self.cls_emb is None
                and isinstance(getattr(self.module, "text_projection", None), torch.Tensor))

    def embed(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """(C, T) ids -> (tokens (C, T', d_t), the tower's own mask over them or None): boolean
        (T', T') for a plain tower, additive (C, heads, T', T') where the tower builds its own
        per-prompt mask (CoCa: padding keys hidden, its class token appended: T' = T + 1)."""
        if self.cls_emb is None:
            x = self.stem(ids)
            return x, self.mask(x.shape[1], x.device)
        x, m = self.module._embeds(ids)        # the tower's own: class token appended, its mask
        if m is not None and m.ndim == 3:
            m = m.reshape(ids.shape[0], self.heads, m.shape[-2], m.shape[-1])
        return x, m

    def extend_mask(self, own: Tensor | None, at: int, K: int) -> Tensor | None:
        """The tower's mask over its own tokens (:meth:`embed`), extended to K slots inserted at
        ``at``: the slots are attended to like any other token (in causal order over all positions
        where the tower is causal); among its own tokens the tower's entries are unchanged. Same
        kind (boolean or additive) and leading dims as ``own``."""
        if own is None:
            return None
        n_own = own.shape[-1]
        n = n_own + K
        dev = own.device
        idx = torch.cat([torch.arange(at), torch.arange(at + K, n)]).to(dev)
        later = torch.ones(n, n, dtype=torch.bool, device=dev).triu(1) if self.causal else \
            torch.zeros(n, n, dtype=torch.bool, device=dev)
        if own.dtype == torch.bool:
            full = ~later
        else:
            full = torch.zeros(n, n, dtype=own.dtype, device=dev).masked_fill(later, float("-inf"))
        full = full.expand(*own.shape[:-2], n, n).clone()
        full[..., idx[:, None], idx[None, :]] = own
        return full

    def run_block(self, blk: BlockParts, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """One block by its parts, fused attention (:func:`mmrl.models.blocks.run_block`)."""
        from mmrl.models.blocks import run_block

        return run_block(blk, x, attn_mask=attn_mask)

    def stem(self, ids: Tensor) -> Tensor:
        """(C, T) ids -> (C, T, d_t) token + position embeddings."""
        T = ids.shape[1]
        return self.module.token_embedding(ids) + self.module.positional_embedding[:T]

    def mask(self, n: int, device: torch.device | None = None) -> Tensor | None:
        """Boolean (n, n) mask (True = may attend) over n positions, None for a bidirectional tower."""
        if not self.causal:
            return None
        return torch.ones(n, n, dtype=torch.bool, device=device).tril_()

    def pooled_index(self, ids: Tensor) -> Tensor:
        """(C,) the pooled position of each prompt among the tower's own tokens (argmax: the
        largest id, CLIP's EOT; eos: the first ``eos_id``; last; first)."""
        C, T = ids.shape
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        return torch.full((C,), T - 1 if self.pool_type == "last" else 0, dtype=torch.long, device=ids.device)

    def head(self, pooled: Tensor) -> Tensor:
        """Pooled states (C, d_t) -> (C, d_e): ln_final, then the projection (matrix or Linear)."""
        x = self.module.ln_final(pooled)
        p = getattr(self.module, "text_projection", None)
        if p is None:
            return x
        return p(x) if isinstance(p, nn.Linear) else x @ p

    def pool(self, x: Tensor, ids: Tensor) -> Tensor:
        """The tower's own pooling and head over its own tokens: (C, T, d_t) -> (C, d_e)
        (CoCa: its appended class token, the last one)."""
        if self.cls_emb is not None:
            return self.head(x[:, -1])
        return self.head(x[torch.arange(x.shape[0], device=x.device), self.pooled_index(ids)])


def _text_source(model: nn.Module) -> tuple[nn.Module | None, str, int | None]:
    """(module holding the text parts, pool type, eos id): ``model.text`` (CustomTextCLIP) or the model."""
    text = getattr(model, "text", None)
    if text is not None:
        return text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", None)
    return model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)


def _is_hf_text(src: nn.Module | None) -> bool:
    """open_clip's HFTextEncoder, by its parts: an HF ``transformer`` with a ``config``, a ``pooler``, a ``proj``."""
    return (src is not None and not hasattr(src, "token_embedding") and all(
        hasattr(src, n) for n in ("transformer", "config", "pooler", "proj")))


def text_problem(model: nn.Module) -> str | None:
    """What keeps the text tower of ``model`` from being one MMRL can adapt, or None."""
    src, pool_type, eos_id = _text_source(model)
    if _is_hf_text(src):
        return hf_text_problem(src)
    if hasattr(src, "transformer") and not hasattr(src, "token_embedding"):
        return "an open_clip text transformer or a Hugging Face encoder (transformer without token_embedding)"
    for part in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if getattr(src, part, None) is None:
            return f"a text tower part {part}"
    if getattr(src, "cls_emb", None) is not None and not hasattr(src, "_embeds"):
        return "a text tower that builds its class token's mask itself (_embeds, open_clip's CoCa tower)"
    if getattr(src, "use_pad_mask", False):
        return "a text tower without a padding mask (use_pad_mask)"
    if pool_type not in ("argmax", "eos", "last", "first"):
        return f"text pooling argmax, eos, last or first (this tower pools {pool_type!r})"
    if pool_type == "eos" and eos_id is None:
        return "an eos_id for 'eos' text pooling"
    return _blocks_problem(src.transformer.resblocks, "text")


# --------------------------------------------------------------------------- Hugging Face text
# open_clip's HFTextEncoder (``model.text``: ``transformer``, ``pooler``, ``proj``, ``config``) around
# a Hugging Face encoder. Two layer layouts are recognised by their parts, and each is checked
# numerically against the layer's own forward at load (check_block_math):
#   'post_ln' (BERT / RoBERTa / XLM-R): x = LN1(x + o(attn(x))); x = LN2(x + fc2(act(fc1(x))))
#   'pre_ln'  (M2M100 / NLLB encoder): x = x + o(attn(LN1(x))); x = x + fc2(act(fc1(LN2(x)))),
#             the encoder's final ``layer_norm`` after the last layer
_HF_PARTS = {
    "post_ln": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
                "fc1": "intermediate.dense", "act": "intermediate.intermediate_act_fn",
                "fc2": "output.dense", "ln2": "output.LayerNorm"},
    "pre_ln": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
               "o": "self_attn.out_proj", "ln1": "self_attn_layer_norm", "fc1": "fc1",
               "act": "activation_fn", "fc2": "fc2", "ln2": "final_layer_norm"},
}
_HF_POOLERS = {"MeanPooler": "mean", "ClsPooler": "cls", "ClsLastHiddenStatePooler": "cls"}


def _get(m: nn.Module, dotted: str) -> object:
    for name in dotted.split("."):
        m = getattr(m, name, None)
        if m is None:
            return None
    return m


def _hf_layer_kind(layer: nn.Module) -> str | None:
    for kind, names in _HF_PARTS.items():
        if all(callable(_get(layer, n)) for n in names.values()):
            return kind
    return None


class HFLayer:
    """One Hugging Face encoder layer: its parts under one set of names (``q k v o ln1 fc1 act fc2
    ln2``, ``post_ln``), and its own forward with an additive mask (C, 1, N, N)."""

    __slots__ = ("blk", "kind", "num_heads")

    def __init__(self, blk: nn.Module, num_heads: int):
        self.blk, self.kind, self.num_heads = blk, "hf_" + str(_hf_layer_kind(blk)), num_heads

    @property
    def post_ln(self) -> bool:
        return self.kind == "hf_post_ln"

    def part(self, name: str) -> nn.Module:
        return _get(self.blk, _HF_PARTS[self.kind[3:]][name])

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The layer's own forward (transformers 4.x returns a tuple, 5.x a tensor)."""
        out = self.blk(x, attention_mask=attn_mask)
        return out[0] if isinstance(out, (tuple, list)) else out

    def by_parts(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The layer's math written out from its parts (softmax attention, the norms where the
        layout puts them): the standard its own forward is checked against at load."""
        p = self.part
        H = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (H, -1)).transpose(1, 2)

        def attn(h: Tensor) -> Tensor:
            q, k, v = heads(p("q")(h)), heads(p("k")(h)), heads(p("v")(h))
            s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
            if attn_mask is not None:
                s = s + attn_mask.to(s.dtype)
            return p("o")((s.softmax(-1) @ v).transpose(1, 2).flatten(2))

        def ffn(h: Tensor) -> Tensor:
            return p("fc2")(p("act")(p("fc1")(h)))

        if self.post_ln:
            x = p("ln1")(x + attn(x))
            return p("ln2")(x + ffn(x))
        x = x + attn(p("ln1")(x))
        return x + ffn(p("ln2")(x))


def _hf_encoder(text: nn.Module) -> tuple[nn.Module | None, Sequence[nn.Module] | None]:
    """(the module holding the layers, the layers) of an HFTextEncoder's transformer."""
    t = getattr(text, "transformer", None)
    enc = getattr(t, "encoder", None)
    if enc is not None and isinstance(getattr(enc, "layer", None), nn.ModuleList):
        return enc, enc.layer                                   # BERT-style model
    if isinstance(getattr(t, "layers", None), nn.ModuleList):
        return t, t.layers                                      # an encoder (M2M100Encoder)
    return None, None


@dataclass
class HFTextTower:
    """open_clip's ``HFTextEncoder`` (``model.text``): a bidirectional Hugging Face encoder,
    slots after its first token, pooled by its own pooler over its own tokens, its own ``proj``."""

    module: nn.Module   # the HFTextEncoder

    causal = False
    cls_emb = None
    n_prefix = 1        # the slots go after the first token (<s> / the language code)
    is_clip_layout = False

    @property
    def _t(self) -> nn.Module:
        return self.module.transformer

    @property
    def _cfg(self):
        return self.module.config

    @property
    def layout(self) -> str:
        """'post_ln' (BERT / RoBERTa / XLM-R) or 'pre_ln' (M2M100 / NLLB)."""
        return _hf_layer_kind(_hf_encoder(self.module)[1][0])

    @property
    def pool_type(self) -> str:
        return _HF_POOLERS[type(self.module.pooler).__name__]

    @property
    def hf_pooler(self) -> nn.Module | None:
        """The encoder's own pooler (BERT's tanh dense on the first token) where the tower uses it."""
        pl = self.module.pooler
        if type(pl).__name__ == "ClsPooler" and getattr(pl, "use_pooler_output", False):
            return getattr(self._t, "pooler", None)
        return None

    @property
    def block_modules(self) -> Sequence[nn.Module]:
        return _hf_encoder(self.module)[1]

    @property
    def blocks(self) -> list[HFLayer]:
        return [HFLayer(b, self.heads) for b in self.block_modules]

    @property
    def width(self) -> int:
        return int(self.embeddings_weight.shape[1])

    @property
    def embeddings_weight(self) -> Tensor:
        t = self._t
        emb = t.embeddings.word_embeddings if hasattr(t, "embeddings") else t.embed_tokens
        return emb.weight

    @property
    def layers(self) -> int:
        return len(self.block_modules)

    @property
    def heads(self) -> int:
        c = self._cfg
        return int(getattr(c, "num_attention_heads", None) or getattr(c, "encoder_attention_heads"))

    @property
    def pad_id(self) -> int:
        return int(self._cfg.pad_token_id)

    @property
    def context_length(self) -> int:
        """Prompt tokens per class: open_clip's 77 (its HF tokenizers pad to it), fewer where the
        encoder's learned position table is shorter (RoBERTa: positions start after the pad id)."""
        t = self._t
        if hasattr(t, "embeddings") and hasattr(t.embeddings, "position_embeddings"):
            return min(77, int(t.embeddings.position_embeddings.num_embeddings) - self.pad_id - 1)
        return 77

    @property
    def vocab_size(self) -> int:
        return int(self.embeddings_weight.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.module.output_dim)

    def own_key_mask(self, ids: Tensor) -> Tensor:
        """(C, T) boolean: the keys the tower attends to (its non-padding tokens)."""
        return ids != self.pad_id

    def embed(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(C, T) ids -> (the tower's own stem (C, T, d_t), its additive mask (C, 1, T, T): the
        padding keys hidden). The stem is the encoder's own: RoBERTa's ``embeddings`` (word +
        padding-aware learned positions + type, LayerNorm); M2M100's scaled ``embed_tokens`` +
        padding-aware sinusoidal ``embed_positions``."""
        t = self._t
        if hasattr(t, "embeddings"):
            x = t.embeddings(input_ids=ids)
        else:
            x = t.embed_tokens(ids)
            if not hasattr(t.embed_tokens, "embed_scale") and hasattr(t, "embed_scale"):  # transformers 4.x
                x = x * t.embed_scale
            x = x + t.embed_positions(ids, x).to(x.device)
        keys = self.own_key_mask(ids)
        return x, self._mask(keys, x.dtype)

    @staticmethod
    def _mask(keys: Tensor, dtype: torch.dtype) -> Tensor:
        """(C, N) attended keys -> the additive (C, 1, N, N) mask, the same for every query."""
        C, n = keys.shape
        return _additive(keys[:, None, None, :].expand(C, 1, n, n), dtype)

    def extend_mask(self, own: Tensor | None, at: int, K: int) -> Tensor | None:
        """The tower's key mask extended to K slots at ``at``: every query (slots too) attends to
        the slots and the non-padding tokens, never to padding (C, 1, N + K, N + K)."""
        keys = own[:, 0, 0] == 0                       # (C, N): the attended keys (a key mask: rows alike)
        keys = torch.cat([keys[:, :at], keys.new_ones(keys.shape[0], K), keys[:, at:]], dim=1)
        return self._mask(keys, own.dtype)

    def run_block(self, blk: HFLayer, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        return blk.forward(x, attn_mask)

    def final_norm(self, x: Tensor) -> Tensor:
        """The encoder's norm after its last layer (M2M100's ``layer_norm``), per token; none for BERT-style."""
        ln = getattr(self._t, "layer_norm", None) if not hasattr(self._t, "embeddings") else None
        return x if ln is None else ln(x)

    def head(self, pooled: Tensor) -> Tensor:
        """The tower's own projection ``proj`` (Linear, MLP or identity)."""
        return self.module.proj(pooled)

    def pool(self, x: Tensor, ids: Tensor) -> Tensor:
        """The tower's own pooler over its own tokens (C, T, d_t) -> (C, d_e): the final norm, then
        the mean over the non-padding tokens, or the first token (through the encoder's own
        pooler where the tower reads its ``pooler_output``), then ``proj``."""
        x = self.final_norm(x)
        if self.pool_type == "mean":
            m = self.own_key_mask(ids).to(x.dtype).unsqueeze(-1)
            return self.head((x * m).sum(1) / m.sum(1))
        pl = self.hf_pooler
        return self.head(x[:, 0] if pl is None else pl(x))


def hf_text_problem(text: nn.Module) -> str | None:
    """What keeps an HFTextEncoder from being a text tower MMRL can adapt, or None (parts, not class)."""
    name = getattr(getattr(text, "config", None), "_name_or_path", "") or type(getattr(text, "transformer", text)).__name__
    if type(getattr(text, "pooler", None)).__name__ not in _HF_POOLERS:
        return f"a Hugging Face text pooler mean_pooler or cls_pooler ({name} pools by {type(text.pooler).__name__})"
    if not callable(getattr(text, "proj", None)):
        return f"a Hugging Face text projection proj ({name})"
    cfg = text.config
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return f"a Hugging Face text encoder, not a decoder ({name})"
    if getattr(cfg, "position_embedding_type", "absolute") not in ("absolute", None):
        return f"absolute text positions ({name} has position_embedding_type={cfg.position_embedding_type!r})"
    if getattr(cfg, "pad_token_id", None) is None:
        return f"a pad_token_id in the Hugging Face config ({name})"
    enc, layers = _hf_encoder(text)
    t = text.transformer
    if layers is None or len(layers) == 0:
        return f"a Hugging Face encoder with a list of layers (encoder.layer or layers; {name})"
    if hasattr(t, "embeddings"):
        for part in ("word_embeddings", "position_embeddings", "LayerNorm"):
            if not isinstance(getattr(t.embeddings, part, None), nn.Module):
                return f"a Hugging Face text embedding part embeddings.{part} ({name})"
    else:
        for part in ("embed_tokens", "embed_positions", "layer_norm"):
            if not isinstance(getattr(t, part, None), nn.Module):
                return f"a Hugging Face text encoder part {part} ({name})"
        if not _identity(getattr(t, "layernorm_embedding", None)):
            return f"a Hugging Face text encoder without layernorm_embedding ({name})"
    for i, layer in enumerate(layers):
        kind = _hf_layer_kind(layer)
        if kind is None:
            return (f"a Hugging Face text layer with the parts of BERT/RoBERTa (attention.self.query...) "
                    f"or M2M100 (self_attn.q_proj...) (layer {i}: {type(layer).__name__}, {name})")
        if (kind == "pre_ln") == hasattr(t, "embeddings"):
            return f"pre-LN layers in an encoder with a final layer_norm, post-LN ones in a BERT-style model ({name})"
    return None


# --------------------------------------------------------------------------- both
@dataclass
class Towers:
    """Both towers of a model, and whether CLIP's fast path (docs/performance.md) applies."""

    vision: VisionTower
    text: TextTower | HFTextTower

    @property
    def clip_layout(self) -> bool:
        return self.vision.is_clip_layout and self.text.is_clip_layout


def towers_problem(model: nn.Module) -> str | None:
    """One line on what keeps ``model`` from MMRL (the missing part), or None."""
    visual = getattr(model, "visual", None)
    if visual is None:
        return "an image tower (visual)"
    return vision_problem(visual) or text_problem(model)


def refusal(problem: str) -> str:
    """A problem of :func:`towers_problem` as the sentence users read: ``MMRL needs <part>``
    (block problems already say which block and what MMRL needs)."""
    return problem if problem.startswith(("vision block", "text block")) else f"MMRL needs {problem}"


def towers_of(model: nn.Module, name: str = "model") -> Towers:
    """The adapters of both towers of ``model``.

    Raises:
        TowerError: one line naming ``name`` and the missing part.
    """
    problem = towers_problem(model)
    if problem is not None:
        raise TowerError(f"backbone {name!r}: {refusal(problem)}")
    visual = model.visual
    if hasattr(visual, "conv1"):
        kind = "open_clip"
    else:
        kind = "eva" if _block_kind(visual.trunk.blocks[0]) == "eva" else "timm"
    src, pool_type, eos_id = _text_source(model)
    text = HFTextTower(src) if _is_hf_text(src) else TextTower(src, pool_type, eos_id)
    return Towers(VisionTower(visual, kind), text)


def model_image_size(model: nn.Module) -> int:
    """The input size of a method model's image tower (any family): ``model.clip`` read through its adapter."""
    return towers_of(model.clip).vision.image_size


def image_resizing(clip: nn.Module) -> dict:
    """``{"resolution", "interpolation", "resize_mode"}`` of a backbone's image tower: the keyword
    arguments of :func:`mmrl.data.build_transform` (and ``preprocessing_spec``) that feed it
    images as its weights were trained (SigLIP, CLIPA: squash; CLIPA, MobileCLIP: bilinear)."""
    v = towers_of(clip).vision
    return {"resolution": v.image_size, "interpolation": v.preprocess["interpolation"],
            "resize_mode": v.preprocess["resize_mode"]}


def model_device(model: nn.Module) -> torch.device:
    """The device of a method model's frozen backbone (any family; CustomTextCLIP has no
    ``positional_embedding`` of its own)."""
    return next(model.clip.parameters()).device


def check_block_math(blk: BlockParts, n_tokens: int = 5) -> str | None:
    """Run ``blk`` by its parts (:func:`mmrl.models.blocks.run_block`) and by its own forward on
    a few random tokens: a block whose parts look right but compute otherwise (a post-norm block
    under pre-norm names) is caught here. None when they agree to float rounding."""
    from mmrl.models.blocks import run_block

    if blk.kind == "eva":  # always run by its own forward
        return None
    if (blk.kind or "").startswith("hf_"):  # a Hugging Face layer: its own forward against its parts' math
        w = blk.part("q").weight
        if w.device.type == "meta":
            return None
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x = torch.randn(2, n_tokens, w.shape[1], dtype=w.dtype, device=w.device)
            m = torch.zeros(2, 1, n_tokens, n_tokens, dtype=w.dtype, device=w.device)
            m[0, ..., -1] = torch.finfo(w.dtype).min  # a padding key
            got, want = blk.by_parts(x, m), blk.forward(x, m)
        if not torch.allclose(got, want, rtol=0, atol=float(1e-4 * (1 + want.abs().max()))):
            layout = "x = LN(x + attn(x)), LN(x + ffn(x))" if blk.post_ln else "x + attn(LN(x)), x + ffn(LN(x))"
            return f"a Hugging Face layer computing {layout} (its forward computes otherwise)"
        return None
    w = blk.qkv_weight
    if w.device.type == "meta":
        return None
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(2, n_tokens, w.shape[1], dtype=w.dtype, device=w.device)
        got, want = run_block(blk, x), blk.forward(x)
    tol = 1e-4 * (1 + want.abs().max())
    if not torch.allclose(got, want, rtol=0, atol=float(tol)):
        return "a pre-LN block x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x))) (its forward computes otherwise)"
    return None


__all__ = ["BlockParts", "VisionTower", "TextTower", "HFTextTower", "HFLayer", "hf_text_problem", "Towers", "TowerError", "towers_of", "towers_problem", "refusal", "model_image_size", "image_resizing", "model_device",
           "block_problem", "attention_layout_problem", "parts", "check_block_math"]
