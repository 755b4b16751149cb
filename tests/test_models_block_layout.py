"""Attention blocks are recognised by their parts, not their class, so that open_clip 3.x
(``nn.MultiheadAttention``) and 4.x (its own ``Attention`` module, always batch-first) both
work; every part that would change the math is refused with a line naming block and part."""
from __future__ import annotations

import pytest
import torch
from open_clip.transformer import Attention, CustomResidualAttentionBlock, LayerScale, ResidualAttentionBlock
from torch import nn

from mmrl.models.backbone import attention_layout_problem, block_layout_problem, check_vit_clip, load_backbone
from mmrl.models.blocks import run_block
from mmrl.models.reference import causal_mask, run_block_reference


def test_installed_open_clip_blocks_are_accepted():
    assert block_layout_problem(ResidualAttentionBlock(64, 4)) is None
    assert block_layout_problem(ResidualAttentionBlock(64, 4, ls_init_value=0.1)) is None
    assert block_layout_problem(CustomResidualAttentionBlock(64, 4)) is None  # plain options: same math
    assert attention_layout_problem(nn.MultiheadAttention(64, 4, batch_first=True)) is None
    assert attention_layout_problem(nn.MultiheadAttention(64, 4)) is None


@pytest.mark.parametrize("make, part", [
    (lambda: nn.MultiheadAttention(64, 4, add_bias_kv=True), "bias_k"),
    (lambda: nn.MultiheadAttention(64, 4, add_zero_attn=True), "add_zero_attn"),
    (lambda: nn.MultiheadAttention(64, 4, kdim=32, vdim=32), "fused q/k/v"),
    (lambda: Attention(64, 4, scaled_cosine=True), "logit_scale"),
    (lambda: Attention(64, 4, scale_heads=True), "head_scale"),
    (lambda: Attention(64, 4, qk_norm=True), "ln_q"),
    (lambda: Attention(64, 4, inner_norm=True), "ln_inner"),
])
def test_attention_that_changes_the_math_is_refused(make, part):
    problem = attention_layout_problem(make())
    assert problem is not None and part in problem, problem


def test_blocks_with_other_math_are_refused():
    assert "ln_attn" in block_layout_problem(CustomResidualAttentionBlock(64, 4, scale_attn=True))
    assert "cross-attention" in block_layout_problem(ResidualAttentionBlock(64, 4, is_cross_attention=True))
    blk = ResidualAttentionBlock(64, 4)
    del blk.ln_2
    assert "ln_2" in block_layout_problem(blk)


def test_refusal_names_tower_block_and_part():
    backbone = load_backbone("toy-clip")
    clip = backbone.clip
    clip.transformer.resblocks[2].attn = Attention(backbone.text_width, 1, qk_norm=True)
    with pytest.raises(ValueError, match=r"text block 2 \(ResidualAttentionBlock\) is not supported: MMRL needs "
                                         r"attention without ln_q"):
        check_vit_clip(clip, "toy-clip")


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_fast_block_equals_the_blocks_own_forward(layer_scale):
    """blocks.run_block reads in_proj_weight / out_proj / num_heads and the block's norms: it must
    equal the block's own forward (run the open_clip way by the reference path), causal or not.
    float64 so that the comparison sees the math, not kernel rounding (bound: 1e-12 relative)."""
    torch.manual_seed(0)
    blk = ResidualAttentionBlock(32, 4, ls_init_value=layer_scale).double().eval()
    if layer_scale is not None:
        assert isinstance(blk.ls_1, LayerScale)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(3, 7, 32, dtype=torch.float64)
        for mask, causal in ((None, False), (causal_mask(7).double(), True)):
            want = run_block_reference(blk, x, mask)
            got = run_block(blk, x, is_causal=causal)
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), (got - want).abs().max()


def test_a_mistyped_backbone_name_suggests_the_right_one(capsys):
    from mmrl.cli import main

    assert main(["describe", "--backbone", "toy-clp"]) != 0
    err = capsys.readouterr().err
    assert "did you mean toy-clip?" in err and "unexpected" not in err and "Traceback" not in err
