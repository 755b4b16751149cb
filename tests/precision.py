"""Judging a reduced-precision computation against a float64 ground truth.

Shared by the bf16 fast-path test (tests/test_models_fast_path.py, CPU autocast) and the GPU check
(benchmarks/gpu_check.py, CUDA autocast). A reduced-precision result is compared with the
float64 truth, and so is the reference path under the same precision: what is bounded is
the RATIO of the two errors, which does not depend on the CPU's or GPU's kernels (both paths
run on the same ones), unlike any fixed bound on one reduced-precision result.
"""
from __future__ import annotations

import copy
import math

import torch

from mmrl.models import reference as reference_path

# unit roundoff (half the gap between 1 and the next number) of each autocast dtype
UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}

# Both paths run the same operations under the same autocast policy (the same matmuls in
# reduced precision, the same reductions in fp32) in a different order and on different row
# subsets, so their errors against the float64 truth are draws from one distribution. Over
# the 8-40 tensors compared (losses, logits, every gradient) the geometric mean of the
# per-tensor ratio fast error / reference error concentrates near 1: measured 0.54-1.58 over
# 30 bf16 cases on the CPU (both methods, J = 2 and 4, 6 seeds each). 3 is twice the largest;
# a step the fast path ran at lower precision than the reference (a lost fp32 upcast, a
# reduced-precision accumulation), or a wrong computation, multiplies the errors of every
# tensor downstream of it far beyond that.
MEAN_RATIO_BOUND = 3.0
# One tensor's ratio is a single draw and spreads wider (measured up to 3.7 with the floor
# below): 10 only catches a tensor an order of magnitude less accurate than the reference's.
TENSOR_RATIO_BOUND = 10.0


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius), computed in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def amp_outputs(model, images: torch.Tensor, labels: torch.Tensor, *, reference: bool,
                dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The loss, the fused logits and every trainable gradient of one training-loss call (the
    fast path, or with ``reference`` :mod:`mmrl.models.reference`),
    under autocast to ``dtype`` on the images' device (None: no autocast), as float64."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = reference_path.loss(model, images, labels) if reference else model.loss(images, labels)
    out.total.backward()
    values = {"total": out.total.detach(), "logits.fused": out.logits.fused.detach()}
    values.update({f"grad {n}": p.grad for n, p in model.named_parameters() if p.requires_grad})
    return {k: v.detach().double() for k, v in values.items()}


def float64_truth(model, names: list[str], images: torch.Tensor, labels: torch.Tensor, outputs) -> dict:
    """The ground truth: ``outputs(model64, images, labels)`` of a float64 copy of ``model`` set to
    ``names``, with float64 as the default dtype meanwhile (masks built inside the model follow it)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model64 = copy.deepcopy(model).double()
        model64.set_classes(names, "a photo of a {}.")
        return outputs(model64, images.double(), labels)
    finally:
        torch.set_default_dtype(default)


def error_ratios(fast: dict, ref: dict, truth: dict, unit: float) -> dict[str, float]:
    """Per tensor: max(fast error, unit) / max(reference error, unit), errors against ``truth``.

    No reduced-precision result can be expected closer to the truth than its unit roundoff,
    so smaller errors count as ``unit``: a reference error below it is luck, not a standard."""
    assert set(fast) == set(ref) == set(truth), "the paths returned different tensors"
    return {k: max(rel_err(fast[k], truth[k]), unit) / max(rel_err(ref[k], truth[k]), unit) for k in truth}


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def ratio_failures(ratios: dict[str, float]) -> list[str]:
    """Why the fast path is less accurate than the reference allows (empty: it is not)."""
    bad = []
    mean = geometric_mean(ratios.values())
    if not mean <= MEAN_RATIO_BOUND:
        bad.append(f"geometric mean of error ratios {mean:.2f} > {MEAN_RATIO_BOUND}")
    bad += [f"{k}: error ratio {r:.2f} > {TENSOR_RATIO_BOUND}" for k, r in ratios.items() if not r <= TENSOR_RATIO_BOUND]
    return bad
