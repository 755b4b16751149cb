"""The GPU path, checked in one command: precision, the CLI on CUDA, torchrun, speed.

Run on a machine with an NVIDIA GPU (the prepared command, with how to carry the
environment there, is in docs/performance.md)::

    python benchmarks/gpu_check.py --json gpu_check.json

Sections, each printed as it goes and recorded in one JSON file (exit status 1 if any check
fails, 0 otherwise; on a machine without CUDA it says so and exits 0):

1. ``precision`` -- MMRL and MMRL++ on the ViT-B/16 architecture (random weights) at 47 and
   1000 classes train a few steps in fp32, bf16 and fp16 (+ GradScaler) through the
   engine's own ``train_step``. Checks: every loss finite; the first step's loss (same
   weights, same batch) within :data:`LOSS_UNITS` unit roundoffs of the float64 loss.
   Records step time and peak memory per method, classes and precision, and how far the
   later steps' losses drift from fp32's (informative).
2. ``fastref`` -- on a tiny CLIP: the fast path under bf16 and fp16 autocast is as accurate
   as the reference path, both judged against the float64 reference (tests/precision.py);
   in fp32 the two paths agree to 1e-4 (the CPU tests' bound).
3. ``cli`` -- ``mmrl train`` (DataLoader workers, pinned memory, auto precision) and
   ``mmrl eval --predictions`` end to end on a tiny dataset, on ``cuda``.
4. ``ddp`` -- ``torchrun --nproc_per_node 1`` and 2 processes sharing the one GPU: NCCL is
   tried (it refuses two ranks on one device on the NCCL versions we know; recorded, not a
   failure), then gloo on CUDA tensors (``MMRL_DIST_BACKEND=gloo``). Each is compared with
   one plain process: per-step losses and the final evaluation.
5. ``speed`` -- ``benchmarks/train_step.py --device cuda --precision bf16``: fast vs
   reference step time, peak memory and evaluation images/s, for as many class counts as the
   time left allows (:func:`plan`).

``--smoke`` runs sections 1-4 at toy sizes on any device (the CPU included), to check this
script itself before a GPU is available; tests/test_benchmarks_gpu_check.py does that.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("precision", "fastref", "cli", "ddp", "speed")
METHODS = ("mmrl", "mmrl++")  # the published methods (mmrl.methods registers them first)
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEMA_VERSION = 1

# The first-step loss (same weights, same batch as the float64 run) may differ from the
# float64 loss by at most LOSS_UNITS unit roundoffs of the precision that ran it. The loss is
# a mean of cross-entropies of logits 100 * cos(image, text); the cosines carry the rounding
# of 12 blocks of both towers (on the tiny CPU model the bf16 loss error was 0.5-5 unit
# roundoffs, tests/precision.py's measurements), and the logit scale of 100 turns an absolute
# cosine error into 100 times that in the logits. 16 units leaves a factor ~3 over the worst
# tiny-model case; a wrong cast (an fp16 overflow, a bf16 accumulation over thousands of
# terms) moves the loss by far more. fp32 is judged at TF32's unit: cuDNN convolutions (the
# patch embedding) use TF32 by default on Ampere and later.
LOSS_UNITS = 16
UNIT = {"fp32": 2.0 ** -11, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
# fp32 GPU runs of one process vs torchrun: the same sums in another order (a batch split over
# ranks, DDP's bucketed reduction); on the CPU the measured per-step difference is 1.5e-6
# (tests/test_engine_distributed.py bounds it by 1e-5). GPU kernels (TF32 convolutions, atomics in
# some backward kernels) add rounding of ~2**-11 relative to single values, averaged over
# the batch; 1e-3 still separates rounding from a wrong gradient (a doubled or halved
# gradient moves the second step's loss by >1e-2 at the learning rates used).
DDP_LOSS_REL = 1e-3
# Estimated seconds per section at full size on one GPU (first call includes CUDA start-up),
# and per configuration of the speed benchmark (a fresh process: import, model, warm-up).
ESTIMATE_S = {"precision": 60.0, "fastref": 15.0, "cli": 40.0, "ddp": 90.0}
SPEED_CONFIG_S = 15.0
SPEED_CLASSES = (47, 1000, 397)   # in the order they are dropped last-first when time is short
SAFETY_S = 30.0


# --------------------------------------------------------------------------- plan
def plan(budget_s: float, sections: tuple[str, ...] = SECTIONS, *, smoke: bool = False) -> dict:
    """How the time budget is spent: the fixed sections first, then the speed benchmark gets
    the rest, as whole class counts (each costs ``2 methods x 2 paths`` configurations).

    Returns ``{"budget_s", "fixed_s", "speed_classes", "speed_s", "skipped": {section: why}}``.
    """
    fixed = sum(ESTIMATE_S[s] for s in sections if s in ESTIMATE_S)
    skipped: dict[str, str] = {}
    speed_classes: list[int] = []
    speed_s = 0.0
    if "speed" in sections:
        if smoke:
            skipped["speed"] = "--smoke: the speed benchmark needs ViT-B/16 on a GPU"
        else:
            left = budget_s - fixed - SAFETY_S
            per_class = len(METHODS) * 2 * SPEED_CONFIG_S
            n = max(0, min(len(SPEED_CLASSES), int(left // per_class)))
            speed_classes = sorted(SPEED_CLASSES[:n])
            speed_s = n * per_class
            if n == 0:
                skipped["speed"] = (f"budget: {budget_s:.0f} s - {fixed:.0f} s for the other sections - "
                                    f"{SAFETY_S:.0f} s margin leaves less than the {per_class:.0f} s one class count needs")
    return {"budget_s": budget_s, "fixed_s": fixed, "speed_classes": speed_classes, "speed_s": speed_s,
            "skipped": skipped}


# --------------------------------------------------------------------------- results
@dataclass
class Section:
    """One section's checks (hard: a failed one fails the run) and its measurements."""
    name: str
    status: str = "ok"
    seconds: float = 0.0
    checks: list[dict] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def check(self, name: str, ok: bool, value: Any = None, bound: Any = None, why: str = "") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "value": value, "bound": bound, "why": why})
        say(f"  [{'ok' if ok else 'FAIL'}] {name}" + ("" if value is None else f": {_fmt(value)}")
            + ("" if bound is None else f" (bound {_fmt(bound)})"))
        if not ok:
            self.status = "failed"
        return bool(ok)

    def as_dict(self) -> dict:
        return {"status": self.status, "seconds": round(self.seconds, 2), "checks": self.checks,
                "results": self.results, "error": self.error}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def say(msg: str) -> None:
    print(msg, flush=True)


def check_schema(result: dict) -> list[str]:
    """Problems with a result file's structure (empty: it has the documented schema)."""
    problems = []
    for key, typ in (("schema", int), ("ok", bool), ("cuda", bool), ("machine", dict), ("plan", dict),
                     ("sections", dict), ("seconds", (int, float))):
        if not isinstance(result.get(key), typ):
            problems.append(f"{key}: expected {getattr(typ, '__name__', typ)}")
    for name, sec in (result.get("sections") or {}).items():
        if name not in SECTIONS:
            problems.append(f"sections.{name}: unknown section")
            continue
        if sec.get("status") not in ("ok", "failed", "skipped"):
            problems.append(f"sections.{name}.status: expected ok, failed or skipped")
        for i, c in enumerate(sec.get("checks", [])):
            if not isinstance(c.get("name"), str) or not isinstance(c.get("ok"), bool):
                problems.append(f"sections.{name}.checks[{i}]: expected name (str) and ok (bool)")
    if isinstance(result.get("sections"), dict) and result.get("ok") is not None:
        failed = any(s.get("status") == "failed" for s in result["sections"].values())
        if result["ok"] == failed:
            problems.append("ok: disagrees with the sections' statuses")
    return problems


# --------------------------------------------------------------------------- helpers
def _import_repo_modules() -> None:
    """The check reuses the tests' tiny-model builders and precision judgement, and the speed
    benchmark's class names: put tests/ and benchmarks/ on the path."""
    for d in (REPO / "tests", REPO / "benchmarks", REPO / "src"):
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


@contextlib.contextmanager
def _float64_default():
    """float64 as the default dtype inside the block (masks built inside the model follow it)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _backbone(smoke: bool, device):
    """ViT-B/16 with random weights (speed and rounding do not depend on the weights), or the
    tests' tiny CLIP under --smoke."""
    from mmrl.models import load_backbone

    if not smoke:
        return load_backbone("ViT-B-16", pretrained=False, device=device)
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    from mmrl.models.backbone import Backbone, _frozen

    torch.manual_seed(0)
    clip = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=4, width=64, patch_size=8, image_size=32, head_width=32),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=4),
                quick_gelu=True)
    return Backbone(_frozen(clip).to(device), SimpleTokenizer(context_length=77), "tiny")


# --------------------------------------------------------------------------- 1. precision
def section_precision(sec: Section, device, smoke: bool, steps: int) -> None:
    import torch

    from mmrl.engine.trainer import train_step
    from mmrl.models import build_method, method_config
    from train_step import class_names

    backbone = _backbone(smoke, device)
    method_kw = dict(n_rep_tokens=3, rep_dim=16, first_rep_block=2) if smoke else {}
    class_counts = (5,) if smoke else (47, 1000)
    size = backbone.image_size
    table = []
    for n_classes in class_counts:
        names, template, _ = class_names(n_classes)
        g = torch.Generator().manual_seed(n_classes)
        images = [torch.randn(4, 3, size, size, generator=g).to(device) for _ in range(steps)]
        labels = [torch.randint(0, n_classes, (4,), generator=g).to(device) for _ in range(steps)]
        for method in METHODS:
            torch.manual_seed(0)
            plus = {"proj_lora_rank": 4} if smoke and method == "mmrl++" else {}
            model = build_method(backbone, method_config(method, **method_kw, **plus)).to(device)
            start = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
            with _float64_default():  # the ground truth of the first step's loss
                m64 = copy.deepcopy(model).double()
                m64.set_classes(names, template)
                with torch.no_grad():
                    truth = float(m64.loss(images[0].double(), labels[0]).total)
                del m64
            model.set_classes(names, template)
            losses: dict[str, list[float]] = {}
            for precision in PRECISIONS:
                with torch.no_grad():
                    for k, p in model.named_parameters():
                        if p.requires_grad:
                            p.copy_(start[k])
                params = [p for p in model.parameters() if p.requires_grad]
                opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=5e-4)
                scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
                walls, vals = [], []
                for i in range(steps):
                    if i == 1:
                        _reset_peak(device)  # the peak of the steps after the first (allocator warm)
                    _sync(device)
                    t0 = time.perf_counter()
                    out = train_step(model, opt, scaler, images[i], labels[i], device=device, precision=precision,
                                     step=i + 1, where=f"gpu_check step {i + 1}")
                    vals.append(float(out.total.detach()))
                    _sync(device)
                    walls.append(time.perf_counter() - t0)
                losses[precision] = vals
                key = f"{method} {n_classes} classes {precision}"
                err = abs(vals[0] - truth) / abs(truth)
                sec.check(f"{key}: losses finite", all(math.isfinite(v) for v in vals), vals[-1])
                sec.check(f"{key}: step-1 loss vs float64 (relative)", err <= LOSS_UNITS * UNIT[precision], err,
                          LOSS_UNITS * UNIT[precision], f"{LOSS_UNITS} unit roundoffs of {precision}")
                row = {"method": method, "classes": n_classes, "precision": precision,
                       "step_s": statistics.median(walls[1:]) if steps > 1 else walls[0],
                       "first_step_s": walls[0], "peak_mb": _peak_mb(device), "losses": vals,
                       "loss_float64_step1": truth, "step1_rel_err": err}
                if precision != "fp32":
                    row["max_rel_drift_vs_fp32"] = max(abs(a - b) / abs(b) for a, b in zip(vals, losses["fp32"]))
                table.append(row)
                peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f} MB"
                say(f"    {key}: step {row['step_s'] * 1e3:.1f} ms, peak {peak}")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    sec.results["steps"] = steps
    sec.results["table"] = table


# --------------------------------------------------------------------------- 2. fast vs reference
def section_fastref(sec: Section, device) -> None:
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    from precision import UNIT_ROUNDOFF, amp_outputs, error_ratios, geometric_mean, ratio_failures, rel_err
    from test_models_fast_path import classnames, make_model

    backbone = _backbone(True, torch.device("cpu"))  # the tiny CLIP, built on the CPU, moved below
    tok = SimpleTokenizer(context_length=77)
    for method in METHODS:
        model = make_model(backbone.clip, tok, method, 2, torch.float32).to(device)
        names = classnames(9, seed=3)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(3, 3, 32, 32, generator=g).to(device)
        labels = torch.tensor([0, 4, 8], device=device)
        with _float64_default():
            m64 = copy.deepcopy(model).double()
            m64.set_classes(names, "a photo of a {}.")
            truth = amp_outputs(m64, images.double(), labels, reference=True, dtype=None)
        model.set_classes(names, "a photo of a {}.")
        fast32 = amp_outputs(model, images, labels, reference=False, dtype=None)
        ref32 = amp_outputs(model, images, labels, reference=True, dtype=None)
        worst = max(rel_err(fast32[k], ref32[k]) for k in ref32)
        sec.check(f"{method} fp32: fast vs reference, max relative error", worst < 1e-4, worst, 1e-4,
                  "fp32 accumulation-order rounding (tests/test_models_fast_path.py)")
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            fast = amp_outputs(model, images, labels, reference=False, dtype=dtype)
            ref = amp_outputs(model, images, labels, reference=True, dtype=dtype)
            ratios = error_ratios(fast, ref, truth, UNIT_ROUNDOFF[dtype])
            bad = ratio_failures(ratios)
            sec.check(f"{method} {name}: fast-path error / reference error vs float64 (geometric mean)",
                      not bad, geometric_mean(ratios.values()), "tests/precision.py", "; ".join(bad))
            sec.results[f"{method} {name}"] = {
                "ratio_geomean": geometric_mean(ratios.values()), "ratio_max": max(ratios.values()),
                "fast_err_max": max(rel_err(fast[k], truth[k]) for k in truth),
                "ref_err_max": max(rel_err(ref[k], truth[k]) for k in truth)}


# --------------------------------------------------------------------------- 3. CLI, 4. torchrun
def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 ranks on a shared CPU must not oversubscribe its cores
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None) -> tuple[int, str, float]:
    """Run a command; returns (exit status, the end of its output, seconds). 124 on timeout."""
    say("    $ " + " ".join(cmd))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(env), cwd=cwd)
        rc, out = p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"timed out after {timeout:.0f} s\n" + str(e.stdout or "") + str(e.stderr or "")
    secs = time.perf_counter() - t0
    say(f"      exit {rc} in {secs:.1f} s" + ("" if rc == 0 else "\n" + _tail(out, 1500)))
    return rc, _tail(out, 4000), secs


def _tail(text: str | bytes, n: int) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-n:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# 2 base classes x 4 shots (DTD, few-shot with 4 shots); global batch 3; 3 epochs without
# warm-up: every step moves the weights at the full learning rate (as tests/test_engine_distributed.py).
DDP_SETTINGS = ["--set", "optim.epochs=3", "--set", "optim.batch_size=3", "--set", "optim.warmup_epochs=0",
                "--set", "eval.batch_size=4"]


def _world(work: Path) -> dict:
    from helpers import make_benchmark_dataset, write_tiny_clip

    root = work / "data"
    if not (root / "dtd").exists():
        make_benchmark_dataset(root, "DescribableTextures", per_class=6)
    clip = write_tiny_clip(work / "tiny_clip.pt")
    return {"root": root, "clip": clip}


def _train_argv(world: dict, output: Path, device: str, extra: list[str]) -> list[str]:
    from helpers import tiny_train_argv

    return tiny_train_argv(world["clip"], world["root"], output, protocol="base2novel", shots=4,
                           extra=["--device", device] + extra)[1:]


def section_cli(sec: Section, device, work: Path, timeout: float) -> None:
    world = _world(work)
    run = work / "cli-run"
    dev = device.type
    # workers > 0 and a CUDA device: the loader pins memory (the engine's choice on CUDA)
    rc, out, s = _run([sys.executable, "-m", "mmrl", "train", *_train_argv(world, run, dev,
                                                                         ["--set", "data.num_workers=2"])], timeout)
    sec.results["train_s"] = s
    if not sec.check("mmrl train exits 0", rc == 0, rc, why=_tail(out, 300) if rc else ""):
        return
    info = _read_json(run / "run.json")
    sec.check("run.json: finished on the device", info.get("status") == "finished"
              and str(info.get("device", "")).startswith(dev), f"{info.get('status')} on {info.get('device')}")
    sec.results["precision"] = info.get("precision")
    if dev == "cuda":
        sec.check("auto precision on this GPU", info.get("precision") in ("bf16", "fp16"), info.get("precision"))
    preds = work / "cli-predictions.jsonl"
    rc, out, s = _run([sys.executable, "-m", "mmrl", "eval", str(run), "--dataset", "dtd", "--root",
                       str(world["root"]), "--subsample", "new", "--device", dev, "--predictions", str(preds),
                       "--json"], timeout)
    sec.results["eval_s"] = s
    if sec.check("mmrl eval exits 0", rc == 0, rc, why=_tail(out, 300) if rc else ""):
        rows = _read_jsonl(preds)
        sec.check("predictions written, one per test image", len(rows) > 0, len(rows))
        sec.results["eval"] = _read_json(run / "eval" / "DescribableTextures-new.json").get("accuracy")


def section_ddp(sec: Section, device, work: Path, timeout: float) -> None:
    world = _world(work)
    dev = device.type
    fp32 = ["--precision", "fp32"] + DDP_SETTINGS
    single = work / "ddp-single"
    rc, out, _ = _run([sys.executable, "-m", "mmrl", "train", *_train_argv(world, single, dev, fp32)], timeout)
    if not sec.check("one process: mmrl train exits 0", rc == 0, rc, why=_tail(out, 300) if rc else ""):
        return
    ref = _read_jsonl(single / "metrics.jsonl")

    def torchrun(name: str, nproc: int, env: dict | None, limit: float = timeout) -> tuple[int, str, Path]:
        output = work / f"ddp-{name}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), "-m", "mmrl", "train",
               *_train_argv(world, output, dev, fp32)]
        rc, out, s = _run(cmd, limit, env=dict(env or {}, MMRL_DIST_TIMEOUT_S="60"))
        sec.results[f"{name}_s"] = s
        return rc, out, output

    def compare(name: str, output: Path) -> None:
        got = _read_jsonl(output / "metrics.jsonl")
        steps = [r for r in ref if "loss" in r and "step" in r]
        other = [r for r in got if "loss" in r and "step" in r]
        diffs = [abs(b["loss"] - a["loss"]) / abs(a["loss"]) for a, b in zip(steps, other)]
        sec.check(f"{name}: same steps as one process", len(steps) == len(other) and len(steps) > 0,
                  f"{len(other)} vs {len(steps)}")
        worst = max(diffs, default=float("nan"))
        sec.check(f"{name}: per-step loss vs one process (max relative difference)", worst <= DDP_LOSS_REL, worst,
                  DDP_LOSS_REL, "fp32 summation order across ranks")
        ra, rb = _read_json(single / "results.json"), _read_json(output / "results.json")
        keys = ("base", "novel", "hm")
        sec.check(f"{name}: final evaluation equals one process", all(
            ra.get(k) is not None and abs(ra[k] - rb.get(k, float("nan"))) < 1e-6 for k in keys),
            {k: (ra.get(k), rb.get(k)) for k in keys})
        info = _read_json(output / "run.json")
        sec.results[name] = {"max_rel_loss_diff": worst, "world_size": info.get("world_size"),
                             "device": info.get("device"), "results": {k: rb.get(k) for k in keys}}

    rc, out, output = torchrun("torchrun-1", 1, None)
    if sec.check("torchrun --nproc_per_node 1 exits 0", rc == 0, rc, why=_tail(out, 300) if rc else ""):
        compare("torchrun-1", output)
    if dev == "cuda":
        # NCCL may refuse at once or hang in its first collective: bounded by the 60 s collective timeout
        rc, out, output = torchrun("nccl-2-on-1-gpu", 2, {"MMRL_DIST_BACKEND": "nccl"}, limit=min(timeout, 100.0))
        allowed = rc == 0
        sec.results["nccl_two_ranks_one_gpu"] = {"allowed": allowed, "exit": rc, "output_tail": _tail(out, 800)}
        say(f"    NCCL with 2 ranks on one GPU: {'allowed' if allowed else 'refused (expected)'}")
        if allowed:
            compare("nccl-2-on-1-gpu", output)
    rc, out, output = torchrun("gloo-2", 2, {"MMRL_DIST_BACKEND": "gloo"})
    if sec.check("torchrun 2 processes, gloo" + (" on CUDA tensors" if dev == "cuda" else "") + ", exits 0",
                 rc == 0, rc, why=_tail(out, 300) if rc else ""):
        compare("gloo-2", output)
        sec.check("gloo-2: run.json world_size 2", sec.results["gloo-2"]["world_size"] == 2,
                  sec.results["gloo-2"]["world_size"])


# --------------------------------------------------------------------------- 5. speed
def section_speed(sec: Section, classes: list[int], timeout: float, json_out: Path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--device", "cuda", "--precision", "bf16",
           "--classes", *map(str, classes), "--steps", "10", "--ref-steps", "5", "--eval-batches", "3",
           "--budget-s", "20", "--json", str(json_out)]
    rc, out, s = _run(cmd, timeout)
    sec.results["command"] = " ".join(cmd)
    sec.results["output_tail"] = _tail(out, 3000)
    if sec.check("train_step.py exits 0", rc == 0, rc, why=_tail(out, 300) if rc else ""):
        data = _read_json(json_out)
        sec.results["train_step"] = data
        errors = [r.get("error") for r in data.get("results", []) if isinstance(r, dict) and r.get("error")]
        sec.check("every configuration measured", not errors, len(errors), why="; ".join(e[:200] for e in errors))


# --------------------------------------------------------------------------- driver
def machine_info(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "host": socket.gethostname(),
            "cpu_count": os.cpu_count(), "device": str(device)}
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001 - informative only
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001
            pass
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the results go")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --smoke")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="wall-clock budget; the speed benchmark gets what the other sections leave")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--steps", type=int, default=None, help="training steps per precision (default 6; 3 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, any device: check this script itself")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error(f"--budget-s {args.budget_s}: expected a positive number of seconds")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps {args.steps}: expected at least 1")
    args.steps = args.steps or (3 if args.smoke else 6)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    _import_repo_modules()
    device = torch.device(args.device)
    result: dict[str, Any] = {"schema": SCHEMA_VERSION, "ok": True, "cuda": torch.cuda.is_available(),
                              "smoke": args.smoke, "argv": sys.argv[1:] if argv is None else argv,
                              "sections": {}, "seconds": 0.0}
    if device.type == "cuda" and not torch.cuda.is_available():
        say("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check. "
            "Run it on a GPU machine, or with --smoke --device cpu to check the script itself.")
        result.update(machine=machine_info(torch.device("cpu")), plan=plan(args.budget_s, tuple(args.sections),
                                                                            smoke=args.smoke), skipped="no CUDA")
        _write(args.json, result, t_start)
        return 0
    if device.type != "cuda" and not args.smoke:
        say(f"gpu_check: --device {args.device} without --smoke: the full-size check is meant for a GPU")
        return 2
    result["machine"] = machine_info(device)
    result["plan"] = the_plan = plan(args.budget_s, tuple(args.sections), smoke=args.smoke)
    say(f"gpu_check on {result['machine'].get('gpu', device)} (torch {torch.__version__}); budget "
        f"{args.budget_s:.0f} s; speed classes {the_plan['speed_classes'] or 'none'}")
    work = args.work or Path(tempfile.mkdtemp(prefix="mmrl-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    per_cmd_timeout = 240.0 if not args.smoke else 300.0

    runners: dict[str, Callable[[Section], None]] = {
        "precision": lambda s: section_precision(s, device, args.smoke, args.steps),
        "fastref": lambda s: section_fastref(s, device),
        "cli": lambda s: section_cli(s, device, work, per_cmd_timeout),
        "ddp": lambda s: section_ddp(s, device, work, per_cmd_timeout),
        "speed": lambda s: section_speed(s, the_plan["speed_classes"],
                                         max(60.0, args.budget_s - (time.perf_counter() - t_start) - 15),
                                         args.json.with_name(args.json.stem + "_train_step.json")),
    }
    for name in args.sections:
        sec = Section(name)
        if name in the_plan["skipped"]:
            sec.status, sec.error = "skipped", the_plan["skipped"][name]
            say(f"[{name}] skipped: {sec.error}")
        else:
            say(f"[{name}] ({time.perf_counter() - t_start:.0f} s so far)")
            t0 = time.perf_counter()
            try:
                runners[name](sec)
            except Exception as e:  # noqa: BLE001 - a crash of one section is its failure; go on with the next
                sec.status, sec.error = "failed", "".join(traceback.format_exception(e))[-3000:]
                say(f"  [FAIL] {name} raised:\n{sec.error}")
            sec.seconds = time.perf_counter() - t0
            say(f"[{name}] {sec.status} in {sec.seconds:.1f} s")
        result["sections"][name] = sec.as_dict()
        _write(args.json, result, t_start)  # after every section: a killed run still leaves what it did
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, s in result["sections"].items() if s["status"] == "failed"]
    result["ok"] = not failed
    _write(args.json, result, t_start)
    say(f"gpu_check: {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)} in "
        f"{time.perf_counter() - t_start:.0f} s -> {args.json}")
    return 0 if not failed else 1


def _write(path: Path, result: dict, t_start: float) -> None:
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if result["sections"]:
        result["ok"] = not any(s["status"] == "failed" for s in result["sections"].values())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
