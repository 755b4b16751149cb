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
from mmrl.models.towers import BlockParts, HFTextTower, parts


def run_block_reference(blk: nn.Module | BlockParts, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """One block through its library's own forward: (B, N, D) -> (B, N, D), an additive mask."""
    return parts(blk).forward(x, attn_mask)


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
    if not model.fast:
        return encode_text_generic(model)
    tower, R, J0 = model.towers.text, model.rep_tokens, model.J0
    blocks = tower.block_modules
    x = tower.stem(model.text_tokens)
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
    return tower.head(x[torch.arange(x.shape[0], device=x.device), eot])


def encode_image(model: MMRL, images: Tensor, teacher: bool = False) -> ImageFeatures:
    """Image features of a batch (B, 3, H, W): f_c, f_r (each (B, d_e), unnormalised) and, with
    ``teacher=True``, frozen CLIP's f_c_zs of the same images (a separate full pass).

    Spec, vision tower: stem; blocks 1..J-1 unchanged; before block J insert F_v^J(R) after CLS
    (no positional embedding, no mask); refresh the slots before each later block; f_c =
    ln_post(CLS) @ proj; f_r = mean over the K slots of ln_post(slot) @ proj_rep.
    """
    if not model.fast:
        return encode_image_generic(model, images, teacher)
    tower, R, J0, K = model.towers.vision, model.rep_tokens, model.J0, model.K
    blocks = tower.block_modules
    x = model._vision_stem(images)
    for blk in blocks[:J0]:
        x = run_block_reference(blk, x)
    x = insert_tokens(x, model.vision_aligner.map(0, R))
    for i, blk in enumerate(blocks[J0:]):
        if i > 0:
            x = refresh_tokens(model, x, model.vision_aligner.map(i, R))
        x = run_block_reference(blk, x)
    f_c = tower.final_norm(x[:, 0]) @ tower.projection()
    f_r = tower.final_norm(x[:, 1:1 + K]).mean(dim=1) @ model.rep_projection()
    f_t = None
    if teacher:
        with torch.no_grad():
            f_t = model.clip.encode_image(images)
    return ImageFeatures(f_c, f_r, f_t)


# --------------------------------------------------------------------------- other tower families
def additive(mask: Tensor | None) -> Tensor | None:
    """A boolean mask (True = may attend) as the additive float mask every library's blocks take."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


def slot_key_mask(n: int, at: int, K: int, causal: bool, hide_slots: bool, device=None) -> Tensor | None:
    """The (n, n) additive mask of a tower with K slots at positions at..at+K-1: causal over
    all n positions (a causal text tower) or none; with ``hide_slots`` the slots' keys hidden
    from every token but the slot itself (docs/method.md's special case)."""
    allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril()
    if hide_slots:
        for k in range(at, at + K):
            allowed[:, k] = False
            allowed[k, k] = True
    return additive(allowed) if causal or hide_slots else None


def _slots_in(model: MMRL, x: Tensor, at: int, new: Tensor, first: bool) -> Tensor:
    """Slots at ``at``: inserted before block J (``first``), refreshed before every later block."""
    K = model.K
    new = new.to(x.dtype).expand(x.shape[0], -1, -1)
    if first:
        return torch.cat([x[:, :at], new, x[:, at:]], dim=1)
    return torch.cat([x[:, :at], model.refresh_slots(x[:, at:at + K], new), x[:, at + K:]], dim=1)


def encode_text_generic(model: MMRL) -> Tensor:
    """The rule of docs/method.md ("Other tower families") for the text tower, written out: every
    block by its library's own forward, over every position; the pooled position is the
    tower's own one, moved by K where it is counted from the start."""
    tower, R, J0, K = model.towers.text, model.rep_tokens, model.J0, model.K
    if isinstance(tower, HFTextTower):
        return encode_text_hf(model)
    ids = model.text_tokens
    x, own = tower.embed(ids)
    at = tower.n_prefix
    if own is not None and own.ndim == 4:   # the tower's per-prompt mask (CoCa): (C * heads, n, n)
        mask = own.flatten(0, 1)
    else:
        mask = additive(own)
    for blk in tower.blocks[:J0]:
        x = run_block_reference(blk, x, mask)
    hide = getattr(model, "mask_slot_keys", False)
    for i, blk in enumerate(tower.blocks[J0:]):
        x = _slots_in(model, x, at, model.text_aligner.map(i, R), first=i == 0)
        if i == 0:
            extended = slot_key_mask(x.shape[1], at, K, tower.causal, hide, x.device)
            if own is not None and own.ndim == 4:  # among its own tokens, the tower's own mask
                n = x.shape[1]
                z = own.flatten(0, 1)                                        # (C * heads, n - K, n - K)
                z = torch.cat([z[:, :at], z.new_zeros(z.shape[0], K, z.shape[2]), z[:, at:]], dim=1)
                z = torch.cat([z[:, :, :at], z.new_zeros(z.shape[0], n, K), z[:, :, at:]], dim=2)
                is_own = torch.ones(n, dtype=torch.bool, device=x.device)
                is_own[at:at + K] = False
                base = torch.zeros(n, n, device=x.device) if extended is None else extended
                extended = torch.where(is_own[:, None] & is_own[None, :], z, base.to(z.dtype))
            mask = extended
        x = run_block_reference(blk, x, mask)
    if tower.cls_emb is not None:                       # CoCa: its class token, the last position
        return tower.head(x[:, -1])
    pos = tower.pooled_index(ids)
    if tower.pool_type in ("argmax", "eos") or (tower.pool_type == "first" and at == 0):
        pos = pos + K                                   # counted from the start: behind the slots
    elif tower.pool_type == "last":
        pos = torch.full_like(pos, x.shape[1] - 1)      # the last position stays the pooled one
    return tower.head(x[torch.arange(x.shape[0], device=x.device), pos])


def encode_text_hf(model: MMRL) -> Tensor:
    """The rule for a Hugging Face text encoder, written out apart from the generic path: every
    layer by its parts' math (softmax attention, post- or pre-LN as the layer's layout says; the
    generic path runs the layer's own forward), the key mask built per prompt here, the slots
    after the first token, then the final norm, the pooler over the tower's own non-padding
    tokens (mean, or the first token) and the tower's projection."""
    tower, R, J0, K = model.towers.text, model.rep_tokens, model.J0, model.K
    ids = model.text_tokens
    x, _ = tower.embed(ids)                                    # the encoder's own stem
    C, T = ids.shape
    hide = getattr(model, "mask_slot_keys", False)

    def mask(is_key: Tensor, slots: bool) -> Tensor:            # (C, N) attended keys -> (C, 1, N, N)
        n = is_key.shape[1]
        allowed = is_key[:, None, :].expand(C, n, n).clone()
        if slots and hide:
            for k in range(1, 1 + K):
                allowed[:, :, k] = False
                allowed[:, k, k] = True
        return torch.zeros(C, 1, n, n, dtype=x.dtype, device=x.device).masked_fill(~allowed[:, None], float("-inf"))

    own_keys = ids != tower.pad_id
    m = mask(own_keys, False)
    for blk in tower.blocks[:J0]:
        x = blk.by_parts(x, m)
    m = mask(torch.cat([own_keys[:, :1], torch.ones(C, K, dtype=torch.bool, device=ids.device), own_keys[:, 1:]], dim=1), True)
    for i, blk in enumerate(tower.blocks[J0:]):
        x = _slots_in(model, x, 1, model.text_aligner.map(i, R), first=i == 0)
        x = blk.by_parts(x, m)
    own = tower.final_norm(torch.cat([x[:, :1], x[:, 1 + K:]], dim=1))   # the slots taken out
    if tower.pool_type == "mean":
        pooled = torch.stack([own[c, own_keys[c]].mean(dim=0) for c in range(C)])
    else:
        pooled = own[:, 0] if tower.hf_pooler is None else tower.hf_pooler(own)
    return tower.head(pooled)


def encode_image_generic(model: MMRL, images: Tensor, teacher: bool = False) -> ImageFeatures:
    """The rule for the image tower, written out: slots after the tower's leading (CLS /
    register) tokens, every block by its own forward; class path = the tower's pooling and head
    over its own tokens; f_r = mean of the normed slots @ proj_rep; the teacher is the frozen
    model's own ``encode_image`` (a separate full pass)."""
    tower, R, J0, K = model.towers.vision, model.rep_tokens, model.J0, model.K
    x = tower.stem(images)
    at = tower.n_prefix
    for blk in tower.blocks[:J0]:
        x = tower.run_block(blk, x, reference=True)
    mask = slot_key_mask(x.shape[1] + K, at, K, False, getattr(model, "mask_slot_keys", False), x.device)
    mask = None if mask is None else mask == 0  # boolean (True = may attend), as the tower takes it
    for i, blk in enumerate(tower.blocks[J0:]):
        x = _slots_in(model, x, at, model.vision_aligner.map(i, R), first=i == 0)
        x = tower.run_block(blk, x, mask, K, reference=True)
    f_c = tower.pool(torch.cat([x[:, :at], x[:, at + K:]], dim=1))
    f_r = tower.rep_features(x[:, at:at + K]) @ model.rep_projection()
    f_t = None
    if teacher:
        with torch.no_grad():
            f_t = model.clip.encode_image(tower.model_input(images))
    return ImageFeatures(f_c, f_r, f_t)


def logits(model: MMRL, images: Tensor, text: Tensor | None = None) -> Logits:
    """The three logits (B, C), text features recomputed the reference way unless given."""
    return model.logits_from_features(encode_image(model, images), encode_text(model) if text is None else text)


def loss(model: MMRL, images: Tensor, labels: Tensor, **kw) -> LossOutput:
    """The training loss from reference features (the formula itself is the model's one,
    :meth:`MMRL.loss_from_features`); ``kw`` as :meth:`MMRL.loss`."""
    return model.loss_from_features(encode_image(model, images, teacher=True), encode_text(model), labels, **kw)


__all__ = ["encode_text", "encode_image", "logits", "loss", "run_block_reference", "causal_mask"]
