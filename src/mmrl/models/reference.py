"""MMRL / MMRL++ computed the straightforward way: ``docs/method.md`` as code.

Each function takes a :class:`~mmrl.models.mmrl.MMRL` (its parameters and cached prompts) and
computes what the spec says, line by line, with open_clip's own blocks
(their own ``forward``) and nothing skipped: the text tower runs the full 77 + K positions
of every class through every block, the image tower runs every token through every block,
and the frozen teacher is a separate full CLIP image pass -- what the authors' code does.

It is the standard the fast path (the model's own methods) is tested against
(tests/test_models_fast_path.py, tests/test_models_mmrl.py, benchmarks/gpu_check.py) and the baseline of
benchmarks/train_step.py; training and evaluation never use it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mmrl.models.mmrl import MMRL, ImageFeatures, Logits, LossOutput


def run_block_reference(blk: nn.Module, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """One block through open_clip's own forward: (B, N, D) -> (B, N, D). open_clip 3.x's
    ``nn.MultiheadAttention`` blocks may be sequence-first; 4.x's blocks are always batch-first."""
    if not getattr(blk.attn, "batch_first", True):
        return blk(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return blk(x, attn_mask=attn_mask)


def causal_mask(n: int, device=None) -> Tensor:
    """CLIP's additive (n, n) causal mask: -inf above the diagonal."""
    return torch.full((n, n), float("-inf"), device=device).triu_(1)


def insert_tokens(x: Tensor, new: Tensor) -> Tensor:
    """``[x_0, new_1..new_K, x_1, ...]``: the K tokens right after CLS / SOT. x (B, N, D), new (K, D)."""
    return torch.cat([x[:, :1], new.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)


def refresh_tokens(model: MMRL, x: Tensor, new: Tensor) -> Tensor:
    """Before block i > J: slots 1..K replaced by ``new`` (MMRL) or blended in (MMRL++ PRC)."""
    K = model.K
    new = new.to(x.dtype).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :1], model.refresh_slots(x[:, 1:1 + K], new), x[:, 1 + K:]], dim=1)


def encode_text(model: MMRL) -> Tensor:
    """Text features t (C, d_e) of the classes of ``model.set_classes``, unnormalised.

    Spec, text tower: the prompt's 77 tokens through blocks 1..J-1 with CLIP's causal mask;
    before block J insert F_t^J(R) after SOT (77 + K positions, causal mask over all of them);
    before each later block refresh the slots; ln_final at EOT + K, then text_projection.
    """
    clip, R, J0 = model.clip, model.rep_tokens, model.J0
    blocks = clip.transformer.resblocks
    x = clip.token_embedding(model.text_tokens) + clip.positional_embedding
    mask = causal_mask(x.shape[1], x.device)
    for blk in blocks[:J0]:
        x = run_block_reference(blk, x, mask)
    x = insert_tokens(x, model.text_aligner.map(0, R))
    mask = causal_mask(x.shape[1], x.device)
    for i, blk in enumerate(blocks[J0:]):
        if i > 0:
            x = refresh_tokens(model, x, model.text_aligner.map(i, R))
        x = run_block_reference(blk, x, mask)
    eot = model.eot + model.K
    return clip.ln_final(x[torch.arange(x.shape[0], device=x.device), eot]) @ clip.text_projection


def encode_image(model: MMRL, images: Tensor, teacher: bool = False) -> ImageFeatures:
    """Image features of a batch (B, 3, H, W): f_c, f_r (each (B, d_e), unnormalised) and, with
    ``teacher=True``, frozen CLIP's f_c_zs of the same images (a separate full pass).

    Spec, vision tower: stem; blocks 1..J-1 unchanged; before block J insert F_v^J(R) after CLS
    (no positional embedding, no mask); refresh the slots before each later block; f_c =
    ln_post(CLS) @ proj; f_r = mean over the K slots of ln_post(slot) @ proj_rep.
    """
    visual, R, J0, K = model.clip.visual, model.rep_tokens, model.J0, model.K
    blocks = visual.transformer.resblocks
    x = model._vision_stem(images)
    for blk in blocks[:J0]:
        x = run_block_reference(blk, x)
    x = insert_tokens(x, model.vision_aligner.map(0, R))
    for i, blk in enumerate(blocks[J0:]):
        if i > 0:
            x = refresh_tokens(model, x, model.vision_aligner.map(i, R))
        x = run_block_reference(blk, x)
    f_c = visual.ln_post(x[:, 0]) @ visual.proj
    f_r = visual.ln_post(x[:, 1:1 + K]).mean(dim=1) @ model.rep_projection()
    f_t = None
    if teacher:
        with torch.no_grad():
            f_t = model.clip.encode_image(images)
    return ImageFeatures(f_c, f_r, f_t)


def logits(model: MMRL, images: Tensor, text: Tensor | None = None) -> Logits:
    """The three logits (B, C), text features recomputed the reference way unless given."""
    return model.logits_from_features(encode_image(model, images), encode_text(model) if text is None else text)


def loss(model: MMRL, images: Tensor, labels: Tensor, **kw) -> LossOutput:
    """The training loss from reference features (the formula itself is the model's one,
    :meth:`MMRL.loss_from_features`); ``kw`` as :meth:`MMRL.loss`."""
    return model.loss_from_features(encode_image(model, images, teacher=True), encode_text(model), labels, **kw)


__all__ = ["encode_text", "encode_image", "logits", "loss", "run_block_reference", "causal_mask"]
