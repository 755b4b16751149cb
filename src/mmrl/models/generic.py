"""MMRL / MMRL++ on any tower family the adapters accept: the exact, unabridged computation.

CLIP ViTs take the fast path of :mod:`mmrl.models.mmrl` (shared text prefix, packed words,
last blocks cut to the rows read); its tricks rest on CLIP's causal text tower pooled at EOT
and on CLS pooling. Every other family (docs/method.md, "Other tower families") runs here:
every token of every prompt through every block, fused attention by the blocks' parts
(:mod:`mmrl.models.blocks`), the towers' own stems, pooling and heads
(:mod:`mmrl.models.towers`). The rule, per tower:

* the K slots go after the tower's ``n_prefix`` leading tokens before block J (no position
  embedding, no pre-norm), are refreshed before every later block, and are attended to like
  any other token (a causal text tower's mask is extended over them as in docs/method.md);
* class path = the tower's own pooling and head over its own tokens only (the slots taken out
  again after the last block; a pooled position counted from the start thus moves with them);
* representation path = the slots after the tower's final norm, averaged, times ``proj_rep``.

``mask_slot_keys=True`` hides the slots' keys from every other token (each slot still sees
itself): the special case of docs/method.md where the class path equals the frozen tower.
Shapes: B images, C prompts, T text positions, K slots, P patch tokens.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mmrl.models.blocks import run_block
from mmrl.models.towers import HFTextTower, TextTower, VisionTower

Slot = Callable[[int], Tensor]              # i -> (K, d): the aligner's output for the i-th block from J
Refresh = Callable[[Tensor, Tensor], Tensor]  # (slots (B, K, d), new (B, K, d)) -> (B, K, d)


def insert_slots(x: Tensor, new: Tensor, at: int) -> Tensor:
    """``[x_<at, new_1..new_K, x_>=at]``: x (B, N, d), new (K, d) -> (B, N + K, d)."""
    new = new.to(x.dtype).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :at], new, x[:, at:]], dim=1)


def slot_mask(base: Tensor | None, n: int, at: int, K: int, hide_slots: bool,
              device: torch.device) -> Tensor | None:
    """The attention mask over a sequence with K slots at ``at``: the tower's own mask extended
    over the slots (``base``: boolean (n, n), True = may attend, or additive (..., n, n); None:
    everything), and with ``hide_slots`` no token but the slot itself may attend to a slot."""
    if not hide_slots:
        return base
    m = torch.ones(n, n, dtype=torch.bool, device=device) if base is None else base.clone()
    idx = torch.arange(at, at + K, device=device)
    if m.dtype == torch.bool:
        m[..., :, at:at + K] = False
        m[..., idx, idx] = True
    else:
        m[..., :, at:at + K] = float("-inf")
        m[..., idx, idx] = 0.0
    return m


def run_adapted(blocks, x: Tensor, J0: int, at: int, slot: Slot, refresh: Refresh,
                mask_of: Callable[[int], Tensor | None], mask_slot_keys: bool,
                run: Callable[..., Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Blocks 1..L of one tower with the slots from block J on. ``mask_of(K)`` is the tower's
    mask over its tokens with K slots at ``at`` (K = 0: its own). x (B, N, d) the stem's tokens.
    ``run(blk, x, attn_mask, n_slots)`` runs one block (default: fused attention by its parts).

    Returns:
        (own tokens (B, N, d) after the last block, slots (B, K, d) after the last block)
    """
    if run is None:
        def run(blk, x, attn_mask, n_slots):
            return run_block(blk, x, attn_mask=attn_mask)
    m = mask_of(0)
    for blk in blocks[:J0]:
        x = run(blk, x, m, 0)
    new = slot(0)
    K = new.shape[0]
    x = insert_slots(x, new, at)
    m = slot_mask(mask_of(K), x.shape[1], at, K, mask_slot_keys, x.device)
    for i, blk in enumerate(blocks[J0:]):
        if i > 0:
            fresh = slot(i).to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :at], refresh(x[:, at:at + K], fresh), x[:, at + K:]], dim=1)
        x = run(blk, x, m, K)
    return torch.cat([x[:, :at], x[:, at + K:]], dim=1), x[:, at:at + K]


# --------------------------------------------------------------------------- text
def text_features(tower: TextTower | HFTextTower, ids: Tensor, J0: int | None = None, slot: Slot | None = None,
                  refresh: Refresh | None = None, mask_slot_keys: bool = False) -> Tensor:
    """Text features (C, d_e) of prompts ``ids`` (C, T); without ``slot`` the frozen tower's own."""
    x, own_mask = tower.embed(ids)
    if slot is None:
        for blk in tower.blocks:
            x = tower.run_block(blk, x, own_mask)
        return tower.pool(x, ids)
    at = tower.n_prefix
    mask_of = lambda K: tower.extend_mask(own_mask, at, K) if K else own_mask  # noqa: E731
    own, _ = run_adapted(tower.blocks, x, J0, at, slot, refresh, mask_of, mask_slot_keys,
                         run=lambda blk, x, m, k: tower.run_block(blk, x, m))
    return tower.pool(own, ids)


# --------------------------------------------------------------------------- vision
def image_features(tower: VisionTower, images: Tensor, J0: int, slot: Slot, refresh: Refresh,
                   rep_projection: Tensor | None, teacher: bool = False,
                   mask_slot_keys: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(f_c, f_r, f_t), each (B, d_e) unnormalised: the class path, the representation path
    (None when ``rep_projection`` is None) and, with ``teacher``, the frozen tower's own
    features of the same images (blocks 1..J-1 shared, run once)."""
    blocks = tower.blocks
    with torch.no_grad():  # blocks 1..J-1 are frozen and shared by teacher and student
        x = tower.stem(images)
        for blk in blocks[:J0]:
            x = tower.run_block(blk, x)
        f_t = None
        if teacher:
            t = x
            for blk in blocks[J0:]:
                t = tower.run_block(blk, t)
            f_t = tower.pool(t)
    own, slots = run_adapted(blocks[J0:], x, 0, tower.n_prefix, slot, refresh, lambda K: None, mask_slot_keys,
                             run=lambda blk, x, m, k: tower.run_block(blk, x, m, k))
    f_c = tower.pool(own)
    f_r = None if rep_projection is None else tower.rep_features(slots) @ rep_projection
    return f_c, f_r, f_t


__all__ = ["text_features", "image_features", "insert_slots", "slot_mask", "run_adapted"]
