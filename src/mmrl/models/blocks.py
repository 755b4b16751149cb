"""Pre-LN residual attention blocks, computed with fused attention, whole or in part.

The fast path of :mod:`mmrl.models.mmrl` (and the generic path of other tower families) runs
a block's weights through these functions instead of the block's own ``forward``: the same
math (pre-LN attention, then pre-LN MLP, optional LayerScale), with
``F.scaled_dot_product_attention`` and the option to compute only the rows that are read.
A block is an open_clip or timm block or its :class:`~mmrl.models.towers.BlockParts` view
(the parts are read through the view: :mod:`mmrl.models.towers` is the only module that
knows the libraries' names). Shapes: B batch, N tokens, D width; heads split D into
(heads, D / heads).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrl.models.towers import BlockParts, parts

Block = nn.Module | BlockParts


def run_block(blk: Block, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """One CLIP residual attention block with ``F.scaled_dot_product_attention``.

    Same math as open_clip's ``ResidualAttentionBlock.forward`` (pre-LN attention, then
    pre-LN MLP, optional LayerScale), but fused attention kernels.

    Args:
        blk: a pre-LN attention block (open_clip, timm) or its parts.
        x: (B, N, D) tokens.
        attn_mask: optional (N, N) bool (True = may attend) or additive float mask.
    Returns:
        (B, N, D)
    """
    blk = parts(blk)
    q, k, v = qkv(blk, blk.norm1(x))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    return finish_block(blk, x, o)


def qkv(blk: Block, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, D) normed tokens -> q, k, v each (B, heads, N, D / heads)."""
    return project(blk, h, 0, 3).unbind(0)  # unbind: one gradient buffer, not three zero-filled


def project(blk: Block, h: Tensor, first: int, count: int) -> Tensor:
    """``count`` of the q/k/v projections (0 = q, 1 = k, 2 = v) starting at ``first``:
    (B, N, D) normed tokens -> (count, B, heads, N, D / heads)."""
    B, N, D = h.shape
    H = parts(blk).num_heads
    out = in_proj(blk, h, first, count)
    return out.view(B, N, count, H, D // H).permute(2, 0, 3, 1, 4)


def in_proj(blk: Block, h: Tensor, first: int = 0, count: int = 3) -> Tensor:
    """Normed tokens (..., D) -> ``count`` of q, k, v side by side (..., count * D)."""
    blk = parts(blk)
    D = h.shape[-1]
    rows = slice(first * D, (first + count) * D)
    bias = blk.qkv_bias
    return F.linear(h, blk.qkv_weight[rows], None if bias is None else bias[rows])


def run_block_rows(blk: Block, x: Tensor, n_out: int) -> Tensor:
    """A block whose output is read only at the first ``n_out`` tokens (the last block:
    CLS and the slots). Keys and values come from all N tokens; queries, out_proj and the
    MLP run for the first ``n_out`` tokens alone -- exact, since everything after the
    attention is per token. (B, N, D) -> (B, n_out, D)."""
    blk = parts(blk)
    h = blk.norm1(x)
    q = project(blk, h[:, :n_out], 0, 1)[0]
    k, v = project(blk, h, 1, 2).unbind(0)
    return finish_block(blk, x[:, :n_out], F.scaled_dot_product_attention(q, k, v))


def finish_block(blk: Block, x: Tensor, o: Tensor) -> Tensor:
    """Attention output (B, heads, N, hd) -> residual + out_proj, then the MLP half."""
    B, H, N, hd = o.shape
    return finish_tokens(blk, x, o.transpose(1, 2).reshape(B, N, H * hd))


def finish_tokens(blk: Block, x: Tensor, o: Tensor) -> Tensor:
    """Tokens x (..., D) and their attention output with heads merged (..., D) -> block output."""
    blk = parts(blk)
    x = x + blk.ls1(blk.out_proj(o))
    return x + blk.ls2(blk.mlp(blk.norm2(x)))


def run_adapted_vision_blocks(blocks, x: Tensor, slot: Callable[[int], Tensor],
                              refresh: Callable[[Tensor, Tensor], Tensor], n_out: int) -> Tensor:
    """Image blocks J..L of the fast path: the K slots inserted after CLS before block J and
    refreshed before every later block; the last block runs for the first ``n_out`` tokens only.

    Slots are refreshed with slice_scatter (its backward is one masked copy instead of
    zero-filled buffers for each slice of a cat).

    Args:
        blocks: the blocks J..L (modules or :class:`BlockParts`).
        x: (B, 1 + P, d_v) tokens entering block J.
        slot: ``slot(i)`` -> (K, d_v), the vision aligner's output for the i-th of these blocks
            (0 = block J); image-independent.
        refresh: ``refresh(slots (B, K, d_v), new (B, K, d_v)) -> (B, K, d_v)``.
        n_out: tokens read after the last block (1 + K for both heads, 1 for CLS alone).
    Returns:
        (B, n_out, d_v)
    """
    B = x.shape[0]
    new = slot(0).to(x.dtype)
    K = new.shape[0]
    x = torch.cat([x[:, :1], new.expand(B, -1, -1), x[:, 1:]], dim=1)
    for i, blk in enumerate(blocks):
        if i > 0:
            new = slot(i).to(x.dtype).expand(B, -1, -1)
            x = x.slice_scatter(refresh(x[:, 1:1 + K], new), dim=1, start=1, end=1 + K)
        x = run_block(blk, x) if i < len(blocks) - 1 else run_block_rows(blk, x, n_out)
    return x
