"""Reduced precision on the CPU: whether this CPU computes bf16 natively, the frozen towers'
weights cast to bf16 once, and the loss / logits heads kept in fp32.

Why casting once: under ``torch.autocast`` every matmul casts its fp32 weight to bf16 again at
every call (autocast caches casts of trainable leaves only, and CLIP's weights are frozen), so
a bf16 step of ViT-B/16 rereads and rewrites ~150 M weights per forward and per backward. With
the frozen weights stored in bf16 the casts are no-ops (measured on ViT-B/16: ~7% of a training
step and 440 MB of peak memory); autocast still casts the (small) trainable tensors and the fp32
inputs. Trainable tensors, their gradients and the optimiser
state stay fp32; the features leaving the towers are upcast, and the logits, the cross-entropies
and the regularisers are computed from them in fp32 (:func:`loss`, :func:`logits`).

Only the CPU path casts: GPU runs keep today's autocast of fp32 weights (``precision`` auto
there is bf16/fp16 as before).
"""
from __future__ import annotations

import copy
import functools
import logging
import os
from typing import Any

import torch
from torch import nn

from mmrl.engine.runtime import autocast, load_backbone_checked
from mmrl.models.mmrl import upcast

# a machine-wide override of what `auto` picks on the CPU: 0 = fp32, 1 = bf16 (the CPU is not
# asked); the test suite sets 0 so that its numbers do not depend on the machine's CPU
ENV_CPU_BF16 = "MMRL_CPU_BF16"
_CAST = {"bf16": torch.bfloat16}
# `auto` on a CPU with native bf16 picks bf16 for image towers at least this wide. A tower's
# matmuls are what bf16 speeds up; a narrow one is overhead-bound (many small ops, where the
# casts cost more than bf16 saves). Measured (docs/performance.md#bf16-on-the-cpu): ViT-B/16
# (width 768) trains 2.2-2.3x and evaluates 2.8-3.5x faster per CPU-second in bf16; the demo's toy-clip
# (width 128) runs ~1.2x SLOWER (91 and 95 vs 74 and 81 CPU-s for the whole demo, alternating runs).
MIN_BF16_WIDTH = 512


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16), and why we think so.

    The instruction sets are read from ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``), else
    from PyTorch's own CPU probe (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``,
    private: absent in some versions). oneDNN, which runs PyTorch's CPU matmuls and convolutions,
    uses them whenever they exist; without them it emulates bf16 with fp32 instructions, slower
    than fp32 itself. ``torch.backends.cpu.get_cpu_capability()`` (e.g. ``AVX512``) is recorded:
    it says which vector kernels PyTorch's elementwise ops use, not whether bf16 is native.
    """
    cap = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    found = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    if not flags:  # not Linux: ask torch's cpuinfo-based probe
        probe = getattr(torch, "cpu", None)
        for name, flag in (("_is_avx512_bf16_supported", "avx512_bf16"), ("_is_amx_tile_supported", "amx_bf16")):
            try:
                if getattr(probe, name)():
                    found.append(flag)
            except (AttributeError, RuntimeError):
                pass
    if found:
        return True, f"CPU with native bf16 ({', '.join(found)}; torch CPU capability {cap})"
    return False, f"CPU without native bf16 (no avx512_bf16 / amx_bf16; torch CPU capability {cap})"


def tower_width(model_or_backbone: Any) -> int | None:
    """The image tower's width (d_v) of a Backbone or a model holding ``clip`` (None: unknown)."""
    width = getattr(model_or_backbone, "vision_width", None)
    if width is None:
        transformer = getattr(getattr(getattr(model_or_backbone, "clip", None), "visual", None), "transformer", None)
        width = getattr(transformer, "width", None)
    return int(width) if width is not None else None


def choose_precision(precision: str, device: torch.device, width: int | None = None) -> tuple[str, str]:
    """``(precision, why)``: ``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs; on the CPU
    bf16 where it is native (:func:`native_cpu_bf16`) and the image tower is at least
    :data:`MIN_BF16_WIDTH` wide (``width``; None = not known, taken as wide), fp32 elsewhere;
    ``MMRL_CPU_BF16=0|1`` overrides the CPU's answer. An explicit precision is kept as it is."""
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16", "auto: GPU with bf16") if ok else ("fp16", "auto: GPU without bf16")
    env = os.environ.get(ENV_CPU_BF16, "").strip()
    if env in ("0", "1"):
        return ("bf16" if env == "1" else "fp32"), f"auto: {ENV_CPU_BF16}={env}"
    native, why = native_cpu_bf16()
    if native and width is not None and width < MIN_BF16_WIDTH:
        return "fp32", (f"auto: {why}, but an image tower of width {width} < {MIN_BF16_WIDTH} is overhead-bound: "
                        "fp32 is faster")
    return ("bf16" if native else "fp32"), f"auto: {why}"


def cast_frozen(model: nn.Module, precision: str) -> torch.dtype | None:
    """Store the frozen weights and floating buffers of a model on the CPU in ``precision``'s dtype
    (bf16), once; trainable tensors are left fp32. Returns the dtype, or None when nothing was
    cast (fp32, or a model on a GPU). Call it before ``set_classes`` (the class caches are then
    computed in bf16 as autocast would compute them) or again after it."""
    dtype = _CAST.get(precision)
    device = next(model.parameters()).device
    if dtype is None or device.type != "cpu":
        return None
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(dtype)
        for m in model.modules():
            for name, b in m.named_buffers(recurse=False):
                if b is not None and b.is_floating_point():
                    setattr(m, name, b.to(dtype))
    return dtype


def frozen_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the frozen weights (bf16 after :func:`cast_frozen`, else fp32)."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            return p.dtype
    return torch.float32


def inference_precision(model: nn.Module, precision: str, device: torch.device) -> str:
    """The precision an evaluation of ``model`` can run at: ``precision`` (auto resolved as
    :func:`eval_precision` does), refused when the model's weights were cast to a lower precision
    (fp32 numbers from bf16 weights would be bf16 numbers labelled fp32)."""
    if precision == "auto":
        precision = eval_precision("auto", device, tower_width(model))[0]
    held = frozen_dtype(model)
    if held == torch.bfloat16 and precision != "bf16":
        raise ValueError(f"precision {precision}: this model's frozen weights are stored in bf16 (cast for a "
                         "bf16 run); evaluate it at bf16, or load it again for another precision")
    return precision


def eval_precision(precision: str, device: torch.device, width: int | None = None) -> tuple[str, str]:
    """``eval.precision``: ``auto`` is bf16 on a CPU with native bf16 and fp32 elsewhere (a GPU evaluates
    fast in fp32 and keeps the authors' numbers); explicit values are kept."""
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        return "fp32", "auto: fp32 on a GPU"
    return choose_precision("auto", device, width)


def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device, precision: str,
         **loss_kw: Any):
    """``model.loss(images, labels, **loss_kw)`` under autocast; the method computes its loss head in
    fp32 itself (MMRL.loss upcasts the towers' features)."""
    with autocast(device, precision):
        return model.loss(images, labels, **loss_kw)


def encode_text(model: nn.Module, *, device: torch.device, precision: str) -> torch.Tensor:
    """The class text features under autocast, upcast to fp32."""
    with autocast(device, precision):
        return upcast(model.encode_text())


def logits(model: nn.Module, images: torch.Tensor, text: torch.Tensor, *, device: torch.device, precision: str):
    """``model.logits(images, text)`` under autocast, as fp32 (MMRL computes its cosine logits in fp32
    itself; zero-shot CLIP's come out of autocast and are upcast here)."""
    with autocast(device, precision):
        out = model.logits(images, text)
    return type(out)(*(upcast(t) for t in out))


def match_eval_precision(model: nn.Module, cfg) -> None:
    """Before a run's end-of-training evaluation: a model whose frozen weights were cast to bf16 for
    training but is evaluated at another ``eval.precision`` gets its backbone's weights back
    (loaded again: the cast lost their low bits). Nothing to do in the common case (both auto)."""
    device = next(model.parameters()).device
    if frozen_dtype(model) == torch.float32 or \
            eval_precision(cfg.eval.precision, device, tower_width(model))[0] == "bf16":
        return
    fresh = load_backbone_checked(cfg.backbone, device=device).clip
    with torch.no_grad():
        weights = dict(fresh.named_parameters())
        for name, p in model.clip.named_parameters():
            if not p.requires_grad:
                p.data = weights[name].data
        for name, b in fresh.named_buffers():
            owner, _, leaf = name.rpartition(".")
            setattr(model.clip.get_submodule(owner) if owner else model.clip, leaf, b)
    # the model's class caches are recomputed by set_classes at the evaluation


class Bf16Module(nn.Module):
    """A copy of an images -> logits module computing in bf16 throughout (weights and buffers cast),
    float32 in and out: what ``mmrl export --precision bf16`` traces (no autocast in the graph, so
    the exported file holds bf16 weights, half the bytes, and runs bf16 kernels)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(module).to(torch.bfloat16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(torch.bfloat16)).float()


def compiled_logits(model: nn.Module, text: torch.Tensor, *, device: torch.device, precision: str):
    """``images -> logits(model, images, text)`` through ``torch.compile`` (inductor), for evaluation.

    The graph is compiled for the first batch's size (the first call compiles: about a minute for
    ViT-B/16 on 2 cores); a smaller batch (the last one) is padded with zero images to that size
    and the padding's rows dropped, so one graph serves the whole test set without a recompile
    (each image's logits depend on that image alone). Where compiling fails (no C++ compiler, an
    unsupported op) the eager path runs instead, with a warning.
    """
    def eager(images: torch.Tensor):
        return logits(model, images, text, device=device, precision=precision)

    graph = torch.compile(eager, dynamic=False)
    state: dict[str, Any] = {"size": None, "failed": False}

    def run(images: torch.Tensor):
        if state["failed"]:
            return eager(images)
        n = images.shape[0]
        size = state["size"] = state["size"] or n
        if n > size:
            parts = [run(c) for c in images.split(size)]
            return type(parts[0])(*(torch.cat(p) for p in zip(*parts)))
        padded = images if n == size else torch.cat([images, images.new_zeros(size - n, *images.shape[1:])])
        try:
            out = graph(padded)
        except Exception as e:  # inductor's errors have many types: any of them means "run eagerly"
            logging.getLogger("mmrl").warning("torch.compile failed (%s: %s); evaluating without it",
                                              type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            state["failed"] = True
            return eager(images)
        return type(out)(*(t[:n] for t in out))
    return run


# eval.compile null: compile a bf16 evaluation on a CPU when the test list has at least this many
# images. Measured on ViT-B/16, 2 cores (docs/performance.md#bf16-on-the-cpu): compiled bf16 runs
# 14.0 instead of 10.1 images per second (1.39x), i.e. saves 0.027 s per image, and compiling costs
# 31 s with inductor's on-disk cache warm, 84 s cold: it pays from ~1100 (warm) / ~3100 (cold)
# images on; 4000 pays even cold (ImageNet, SUN397, Food101, EuroSAT; not DTD's 1692). In fp32
# compiling gained only 1.16x, under the 1.2x worth its minute: auto leaves fp32 eager.
COMPILE_MIN_IMAGES = 4000


def use_compile(compile: bool | None, device: torch.device, n_images: int, precision: str) -> bool:
    """Whether an evaluation of ``n_images`` compiles (``eval.compile``; CPU only, where it was
    measured; null: bf16 and at least :data:`COMPILE_MIN_IMAGES` images)."""
    if device.type != "cpu":
        return False
    if compile is None:
        return precision == "bf16" and n_images >= COMPILE_MIN_IMAGES
    return bool(compile)
