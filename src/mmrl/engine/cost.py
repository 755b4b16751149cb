"""What a run costs: the ``cost`` block of run.json and results.json.

:class:`CostMeter` is fed at the trainer's phase boundaries (set-up, class-text encoding,
training steps, each evaluation) and turns what it saw into one JSON block::

    {"device": {...}, "precision", "world_size",
     "wall_s": {"backbone_load", "setup" (text_encoding included), "text_encoding", "train",
                "eval": {NAME: s}, "total" (since the trainer began), "process" (since the process began)},
     "steps", "images_seen", "images_evaluated", "images_per_s", "median_step_s",
     "peak_rss_mb", "cuda_memory_mb": {"cuda:0": {"max_allocated", "max_reserved"}},
     "parameters": {"trainable", "frozen"},
     "flops": {"train_step", "per_eval_image", "per_eval_batch", "how"}, "device_hours",
     "ranks": [one block per rank]}          # under torchrun only; the top level is then the sum

FLOPs are counted, not estimated: :func:`count_flops` runs ONE real step under
``torch.utils.flop_counter.FlopCounterMode``, which adds up the FLOPs of every matmul,
convolution and attention kernel dispatched (forward and backward; element-wise work is not
counted, as in every FLOP table of the literature). ``train` and ``images_per_s`` cover every
attempt of a resumed run (run.json keeps the training time of earlier attempts); the other
phases are this attempt's.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Iterator

import torch

from mmrl.engine.runtime import autocast

FLOPS_HOW = ("torch.utils.flop_counter.FlopCounterMode over one real step (forward + backward of matmuls, "
             "convolutions and attention; optimiser and element-wise work not counted)")


def _cpu_attention_formulas() -> dict[Any, Any]:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU's flash kernel, which
    scaled_dot_product_attention picks on the CPU: without this its FLOPs would count 0. The
    same formulas as the CUDA kernels' (the backward recomputes the scores: 5 matmuls)."""
    from torch.utils import flop_counter as fc  # here: it imports triton (~0.1 s), wanted only to count FLOPs

    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(q, k, v))
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *args, out_shape=None, **kwargs: fc.sdpa_backward_flop_count(g, q, k, v))
    return out


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``(fn(), FLOPs fn dispatched)``, counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode  # as above: only when FLOPs are counted

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with counter:
        out = fn()
    return out, int(counter.get_total_flops())


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device: torch.device) -> dict[str, Any]:
    """This process's device: a GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"type": "cuda", "name": torch.cuda.get_device_name(index), "index": index}
    return {"type": device.type, "name": cpu_name(), "threads": torch.get_num_threads()}


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark in MB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, 1)


def cuda_memory_mb(device: torch.device) -> dict[str, dict[str, float]]:
    """``{"cuda:N": {"max_allocated", "max_reserved"}}`` (MB) of this process's GPU; {} off CUDA."""
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {f"cuda:{index}": {"max_allocated": round(torch.cuda.max_memory_allocated(index) / 2**20, 1),
                              "max_reserved": round(torch.cuda.max_memory_reserved(index) / 2**20, 1)}}


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and frozen parameters (each tensor once, however many modules share it)."""
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in seen.values()) - trainable}


def process_seconds() -> float | None:
    """Seconds since this process started (Python's start-up and imports included: what a sweep
    waits for per run), from /proc on Linux; None elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


class CostMeter:
    """Collects one attempt's cost measurements; :meth:`block` makes the JSON block.

    ``clock`` (seconds, monotonic) is injectable so that tests can drive it.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.t0 = clock()
        self.wall: dict[str, float] = {}
        self.evals: dict[str, float] = {}
        self.step_s: list[float] = []
        self.rank_images = 0          # images this process stepped on in this attempt
        self.images_evaluated = 0
        self.train_step_flops: int | None = None
        self.eval_image_flops: int | None = None
        self.eval_batch_flops: int | None = None
        self.sample_images: torch.Tensor | None = None  # a few training images, for the evaluation count

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase ``name`` (``eval:NAME`` = one evaluation)."""
        t = self.clock()
        try:
            yield
        finally:
            dt = self.clock() - t
            if name.startswith("eval:"):
                self.evals[name[5:]] = self.evals.get(name[5:], 0.0) + dt
            else:
                self.wall[name] = self.wall.get(name, 0.0) + dt

    def evaluation(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one evaluation ``fn`` (returning evaluate()'s results) and record its wall time under
        ``<Dataset>-<subsample>`` and its images."""
        t = self.clock()
        res = fn()
        name = f"{res.get('dataset')}-{res.get('subsample')}"
        self.evals[name] = self.evals.get(name, 0.0) + self.clock() - t
        self.images_evaluated += int(res.get("n") or 0)
        return res

    def step(self, fn: Callable[[], Any], images: torch.Tensor) -> Any:
        """Run one training step ``fn`` (which must end with its results on the CPU, so that the
        time covers the device's work); the first one of the attempt is counted by FlopCounterMode."""
        t = self.clock()
        if self.train_step_flops is None:
            out, self.train_step_flops = count_flops(fn)
            self.sample_images = images[:1].detach()
        else:
            out = fn()
        self.step_s.append(self.clock() - t)
        self.rank_images += int(images.shape[0])
        return out

    def count_eval_flops(self, model, precision: str) -> None:
        """FLOPs per evaluated image: the logits of two images minus those of one (this attempt's
        first training images; the evaluation's crop has the same size), the class texts encoded
        beforehand as the evaluation does once per class set. The difference leaves out the
        little work the logits repeat once per batch whatever its size (``per_eval_batch``)."""
        if self.sample_images is None or not hasattr(model, "logits"):
            return
        images = self.sample_images
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(images.device, precision):
                text = model.encode_text()
                one = count_flops(lambda: model.logits(images[:1], text))[1]
                two = count_flops(lambda: model.logits(images[:1].expand(2, -1, -1, -1), text))[1]
        finally:
            model.train(was_training)
            if hasattr(model, "clip"):
                model.clip.eval()
        self.eval_image_flops, self.eval_batch_flops = two - one, 2 * one - two

    def block(self, *, device: torch.device, precision: str, model: torch.nn.Module, steps: int,
              images_seen: int, train_s: float, world_size: int = 1) -> dict[str, Any]:
        """This process's cost block. ``steps``, ``images_seen`` and ``train_s`` cover all attempts."""
        wall = {k: round(v, 3) for k, v in self.wall.items()}
        wall["train"] = round(train_s, 3)
        wall["eval"] = {k: round(v, 3) for k, v in self.evals.items()}
        total = self.clock() - self.t0
        wall["total"] = round(total, 3)
        wall["process"] = process_seconds()
        # device-hours: this attempt's whole wall time plus earlier attempts' training
        earlier_train = max(train_s - self.wall.get("train", 0.0), 0.0)
        return {
            "device": describe_device(device), "precision": precision, "world_size": world_size,
            "wall_s": wall, "steps": steps, "images_seen": images_seen, "images_evaluated": self.images_evaluated,
            "images_per_s": round(images_seen / train_s, 3) if train_s > 0 else None,
            "median_step_s": round(statistics.median(self.step_s), 4) if self.step_s else None,
            "peak_rss_mb": peak_rss_mb(), "cuda_memory_mb": cuda_memory_mb(device),
            "parameters": parameter_counts(model),
            "flops": {"train_step": self.train_step_flops,
                      "per_eval_image": self.eval_image_flops, "per_eval_batch": self.eval_batch_flops,
                      "how": FLOPS_HOW},
            "device_hours": round((total + earlier_train) / 3600.0, 9),
        }


def combine_ranks(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """One block for a torchrun job: rank 0's block with the per-rank blocks under ``ranks`` and
    the quantities that add up over ranks summed (FLOPs per global step, device-hours, memory);
    wall times, steps and images (global counts) are rank 0's."""
    if len(blocks) == 1:
        return blocks[0]
    out = dict(blocks[0])
    out["ranks"] = blocks
    out["device"] = {"type": blocks[0]["device"]["type"], "count": len(blocks),
                     "names": sorted({b["device"]["name"] for b in blocks})}
    out["device_hours"] = round(sum(b["device_hours"] for b in blocks), 9)
    out["peak_rss_mb"] = round(sum(b["peak_rss_mb"] for b in blocks), 1)
    out["cuda_memory_mb"] = {k: v for b in blocks for k, v in b["cuda_memory_mb"].items()}
    flops = [b["flops"]["train_step"] for b in blocks]
    out["flops"] = dict(out["flops"], train_step=sum(flops) if None not in flops else None)
    return out



def _tensor_bytes(tensors) -> int:
    """Bytes of distinct storages (views of one tensor count once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[(st.data_ptr(), t.device.type)] = st.nbytes()
    return sum(seen.values())


def step_profile(model, classnames: list[str], template: str, *, batch_size: int, device: torch.device,
                 precision: str = "fp32") -> dict[str, Any]:
    """What one training step of ``model`` costs, from one step on random images (the weights need
    not be the trained ones: FLOPs and memory do not depend on their values).

    FLOPs per step and per evaluated image: counted by FlopCounterMode, as in a run's cost block.
    Peak memory: arithmetic on what the step holds at the end of its forward pass -- every weight,
    the tensors autograd saved for the backward pass (measured with saved_tensors_hooks) and, for
    the trainable tensors, their gradients and AdamW's two moments; the framework's own memory
    (the CPU allocator, CUDA context, kernels' workspaces) is not in it.
    """
    model.set_classes(classnames, template)
    model.train()
    if hasattr(model, "clip"):
        model.clip.eval()
    size = model.clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.arange(batch_size, device=device) % len(classnames)
    saved: list[torch.Tensor] = []

    def keep(t):
        saved.append(t)
        return t

    def step():
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), autocast(device, precision):
            out = model.loss(images, labels)
        out.total.float().backward()

    _, flops = count_flops(step)
    activations = _tensor_bytes(saved)
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        text = model.encode_text()
        one = count_flops(lambda: model.logits(images[:1], text))[1]
        two = count_flops(lambda: model.logits(images[:1].expand(2, -1, -1, -1), text))[1]
    mb = 2**20
    return {"classes": len(classnames), "batch_size": batch_size, "precision": precision,
            "flops": {"train_step": flops, "per_eval_image": two - one, "how": FLOPS_HOW.replace(
                "one real step", "one step on random images")},
            "memory_mb": {"weights": round((weights + buffers) / mb, 1), "saved_activations": round(activations / mb, 1),
                          "gradients_and_adamw": round(3 * trainable / mb, 1),
                          "step_peak": round((weights + buffers + activations + 3 * trainable) / mb, 1),
                          "how": "weights + tensors saved for the backward pass (saved_tensors_hooks) + gradients "
                                 "and AdamW moments of the trainable tensors; the framework's own memory not included"}}
