"""The fast path of MMRL / MMRL++ computes the same numbers as the reference path.

The fast path (shared image blocks 1..J-1 with the frozen teacher, cached and cut text
states, the class-independent text prefix run once, trimmed last blocks, ...) is a
re-ordering of the reference computation, never an approximation. On a tiny CLIP we
compare every loss term, every kind of logits and the gradient of every trainable tensor,
for both methods, two insertion blocks J and several class counts whose prompts have very
different lengths.
"""
from __future__ import annotations

import copy

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from open_clip.tokenizer import SimpleTokenizer  # noqa: E402

from mmrl.models.backbone import Backbone, _frozen  # noqa: E402
from mmrl.models import reference as reference_path  # noqa: E402
from mmrl.models import MMRL, build_method, method_config  # noqa: E402
from precision import UNIT_ROUNDOFF, amp_outputs, error_ratios, float64_truth, ratio_failures, rel_err  # noqa: E402

# fp32: both paths compute the same sums in a different order (SDPA vs MultiheadAttention,
# one batched prefix vs C copies, cut vs padded sequences, row subsets in the last block),
# so results differ by accumulation-order rounding: ~1e-7 relative per op, grown by a few
# orders of magnitude through 4 blocks, softmax and backward. 1e-4 is far above that and
# far below any real bug (a dropped token or a wrong mask moves results by >1e-2).
FP32_TOL = 1e-4
# float64: the same rounding at ~1e-16 per op; 1e-10 leaves the same margin.
FP64_TOL = 1e-10

WORDS = ["banded", "striped", "honeycombed", "crystalline", "sea", "lake", "abbey",
         "airplane cabin", "art school", "indoor", "outdoor", "ball", "pit", "bamboo",
         "forest", "golden retriever", "Pembroke Welsh Corgi", "x"]


def classnames(n: int, seed: int) -> list[str]:
    """n distinct names of 1 to ~12 words (prompts of very different lengths)."""
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
        n_words = 1 + int(torch.randint(0, 12, (1,), generator=g)) if i % 3 else 1
        idx = torch.randint(0, len(WORDS), (n_words,), generator=g).tolist()
        names.append("_".join(WORDS[j] for j in idx) + f"_{i}")
    return names


@pytest.fixture(scope="module")
def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    clip = CLIP(embed_dim=32,
                vision_cfg=CLIPVisionCfg(layers=4, width=64, patch_size=8, image_size=32, head_width=32),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=4),
                quick_gelu=True)
    return _frozen(clip)


@pytest.fixture(scope="module")
def tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=77)


def make_model(clip, tokenizer, method: str, J: int, dtype: torch.dtype, seed: int = 1) -> MMRL:
    """MMRL(++) with K=3 and every trainable tensor perturbed (LoRA B != 0, blocks differ)."""
    clip = copy.deepcopy(clip).to(dtype)
    torch.manual_seed(seed)
    plus = {"beta": 0.6, "proj_lora_rank": 4, "aligner_lora_rank": 2} if method == "mmrl++" else {}
    model = build_method(Backbone(clip, tokenizer, "tiny"),
                         method_config(method, n_rep_tokens=3, rep_dim=16, first_rep_block=J, reg_weight=2.0,
                                       **plus)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * p.abs().mean().clamp_min(0.05) * torch.randn_like(p))
    return model


def run(model: MMRL, images, labels, reference: bool):
    """Every loss term, every logits kind and every trainable tensor's gradient."""
    model.zero_grad(set_to_none=True)
    out = (reference_path.loss(model, images, labels) if reference else model.loss(images, labels))
    out.total.backward()
    values = {"total": out.total, "ce_class": out.ce_class, "ce_rep": out.ce_rep,
              "reg_image": out.reg_image, "reg_text": out.reg_text,
              "logits.class": out.logits.class_, "logits.rep": out.logits.rep,
              "logits.fused": out.logits.fused}
    values = {k: v.detach().clone() for k, v in values.items()}
    # reg = 1 - mean cos with cos close to 1 (the student starts at the teacher): its rounding
    # error is that of the cosine (~1e-7 absolute in fp32), so compare the cosines themselves;
    # a relative error of reg would divide by reg (~1e-3) and measure only the cancellation.
    for k in ("reg_image", "reg_text"):
        values["1 - " + k] = 1 - values.pop(k)
    grads = {f"grad {n}": p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():  # the evaluation entry point: text once, then images
        text = reference_path.encode_text(model) if reference else model.encode_text()
        ev = (reference_path.logits(model, images, text) if reference else model.logits(images, text))
    values.update({"eval.text": text, "eval.class": ev.class_, "eval.rep": ev.rep, "eval.fused": ev.fused})
    return values, grads


def check_paths(model: MMRL, names: list[str], dtype: torch.dtype, tol: float, batch: int = 3) -> None:
    template = "a photo of a {}." if len(names) % 2 else "{} texture."
    model.set_classes(names, template)
    g = torch.Generator().manual_seed(len(names))
    images = torch.randn(batch, 3, 32, 32, generator=g).to(dtype)
    labels = torch.randint(0, len(names), (batch,), generator=g)
    fast, fast_g = run(model, images, labels, reference=False)
    ref, ref_g = run(model, images, labels, reference=True)
    assert set(fast_g) == set(ref_g) and len(ref_g) > 0
    if len(names) > 1:  # the gradients under test are real (with one class both CEs are 0)
        assert all(g_ref.abs().max() > 0 for g_ref in ref_g.values())
    errors = {k: rel_err(fast[k], ref[k]) for k in ref}
    errors.update({k: rel_err(fast_g[k], ref_g[k]) for k in ref_g})
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"fast path differs from reference (rel. error > {tol}): {bad}"


@pytest.mark.parametrize("n_classes", [1, 7, 33])
@pytest.mark.parametrize("J", [2, 4])
@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_fast_path_matches_reference_fp32(tiny_clip, tokenizer, method, J, n_classes):
    torch.set_num_threads(1)
    model = make_model(tiny_clip, tokenizer, method, J, torch.float32)
    check_paths(model, classnames(n_classes, seed=n_classes), torch.float32, FP32_TOL)


@pytest.mark.parametrize("J", [2, 4])
@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_fast_path_matches_reference_fp64(tiny_clip, tokenizer, method, J):
    torch.set_num_threads(1)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # masks built inside the model follow the default dtype
    try:
        model = make_model(tiny_clip, tokenizer, method, J, torch.float64)
        check_paths(model, classnames(9, seed=3), torch.float64, FP64_TOL)
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("J", [2, 4])
@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_fast_path_under_bf16_autocast(tiny_clip, tokenizer, method, J):
    """Under bf16 autocast (the GPU default) the fast path is as accurate as the reference.

    Both paths run under CPU bf16 autocast and are compared with the float64 reference
    computation of the same model (the ground truth): the fast path's error must be at most
    a small multiple of the reference path's error (the bounds and their reasons are in
    tests/precision.py). Comparing the two bf16 results with each other under a fixed bound
    would measure only the CPU kernels' rounding."""
    torch.set_num_threads(1)
    model = make_model(tiny_clip, tokenizer, method, J, torch.float32)
    names = classnames(9, seed=3)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 4, 8])

    truth = float64_truth(model, names, images, labels,
                          lambda m, x, y: amp_outputs(m, x, y, reference=True, dtype=None))
    model.set_classes(names, "a photo of a {}.")
    fast = amp_outputs(model, images, labels, reference=False, dtype=torch.bfloat16)
    ref = amp_outputs(model, images, labels, reference=True, dtype=torch.bfloat16)

    assert len(truth) >= 8
    ratios = error_ratios(fast, ref, truth, UNIT_ROUNDOFF[torch.bfloat16])
    assert not ratio_failures(ratios), (ratio_failures(ratios), ratios)
    # the check has teeth: a path with every error 5x the reference's (a precision loss) fails it
    worse = {k: truth[k] + 5 * (ref[k] - truth[k]) for k in truth}
    assert ratio_failures(error_ratios(worse, ref, truth, UNIT_ROUNDOFF[torch.bfloat16]))


@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_full_context_prompt(tiny_clip, tokenizer, method):
    """A class name that fills the whole context (EOT at position 76, the last one): the
    fast text features still equal the reference, and so do loss and gradients."""
    torch.set_num_threads(1)
    model = make_model(tiny_clip, tokenizer, method, 2, torch.float32)
    names = ["abbey", " ".join(["striped"] * 100), "golden retriever"]
    model.set_classes(names, "a photo of a {}.")
    assert model.eot.tolist()[1] == 76 and max(model.eot.tolist()[::2]) < 10
    with torch.no_grad():
        fast = model.encode_text()
        ref = reference_path.encode_text(model)
    assert rel_err(fast, ref) < FP32_TOL
    check_paths(model, names, torch.float32, FP32_TOL)


def test_packed_words_cover_every_prompt_once(tiny_clip, tokenizer):
    """The packed text cache holds exactly the words and EOT of each prompt (positions
    1..EOT), in class order, and each EOT row points at that class's EOT state."""
    model = make_model(tiny_clip, tokenizer, "mmrl", 2, torch.float32)
    names = classnames(33, seed=33)
    model.set_classes(names, "a photo of a {}.")
    eot = model.eot.tolist()
    assert model.text_words.shape[0] == sum(eot) and len(set(eot)) > 3
    expected = torch.cat([model.text_hidden_J[c, 1:e + 1] for c, e in enumerate(eot)])
    assert torch.equal(model.text_words, expected)
    assert torch.equal(model.text_words[model.text_eot_row], model.text_hidden_J[torch.arange(33), model.eot])


def test_class_set_change_refreshes_caches(tiny_clip, tokenizer):
    """After set_classes with a new class set, the cached states belong to the new set."""
    torch.set_num_threads(1)
    model = make_model(tiny_clip, tokenizer, "mmrl", 2, torch.float32)
    model.set_classes(classnames(5, seed=0), "a photo of a {}.")
    with torch.no_grad():
        model.encode_text()
    check_paths(model, classnames(4, seed=1), torch.float32, FP32_TOL)
