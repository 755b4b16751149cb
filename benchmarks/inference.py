"""Inference with an adapted model: exported files (ONNX, torch.export) vs mmrl's own path.

On the real ViT-B/16 architecture (random weights: speed does not depend on them; CLIP written
as an OpenAI-format file so that a run directory can name it), an MMRL run directory with a
random adapter, and class sets shaped like DTD (47 classes, "{} texture.") and ImageNet (1000).
Measured on the CPU, fp32, ``--threads`` threads for torch and onnxruntime alike:

* **throughput**: images/s at batch 1 and 32 on a fixed random batch, each engine in a fresh
  process: ``mmrl`` = what ``mmrl eval`` runs per batch (``model.logits(images, text)`` with the
  class texts encoded once beforehand), ``torch`` = the ``.pt2`` file
  (``torch.export.load(...).module()``), ``onnx`` = the ``.onnx`` file in onnxruntime; median
  over the timed repetitions after one warm-up;
* **time to first prediction**: wall seconds from starting a process to its printed top-5 for
  one image file: ``mmrl predict RUN IMAGE --classes ...`` (loads CLIP, encodes the class
  texts) vs ``python examples/classify_exported.py FILE IMAGE`` (numpy, PIL and onnxruntime or
  torch only); best of ``--ttfp-repeats``;
* **export**: wall seconds of ``mmrl export`` and the file sizes, beside what ``mmrl predict``
  needs (the CLIP file + the adapter);
* **agreement**: max |exported - mmrl| / max |mmrl| of the logits on the fixed batch.

Usage (the documented CPU run, ~15-20 minutes on 2 shared cores)::

    python benchmarks/inference.py --threads 2 --json benchmarks/results_inference.json

Needs ``pip install -e '.[export]'`` (onnx, onnxscript, onnxruntime).

``--engines`` picks the throughput engines (``mmrl-bf16``: the frozen weights cast to bf16 once, as
``mmrl eval`` at bf16; ``*-compiled``: through ``torch.compile``; ``torch-bf16``: the
``mmrl export --precision bf16`` file); ``--rounds N`` alternates them N times in fresh processes
and reports medians with the load average before each run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "examples" / "classify_exported.py"
sys.path.insert(0, str(HERE))
from machine import cpu_name, load_text  # noqa: E402


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


# --------------------------------------------------------------------------- setup
def setup(work: Path, n_classes: list[int]) -> dict:
    """The CLIP file, the run directory, one test image, the class lists (cached in ``work``)."""
    import numpy as np
    import torch
    from PIL import Image

    from train_step import class_names

    work.mkdir(parents=True, exist_ok=True)
    clip_file = work / "ViT-B-16-random.pt"
    if not clip_file.is_file():
        import open_clip

        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
        torch.save(clip.state_dict(), clip_file)
    run = work / "run-mmrl"
    if not (run / "adapter.safetensors").is_file():
        from mmrl.config import resolve_config
        from mmrl.engine import rundir as rd
        from mmrl.engine.checkpoint import save_adapter
        from mmrl.models import build_method, load_backbone

        cfg = resolve_config("mmrl", "fewshot", "dtd", None, [], flags={"backbone": str(clip_file),
                                                                       "output": str(run)})
        torch.manual_seed(0)
        model = build_method(load_backbone(str(clip_file)), cfg.method)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a "trained" adapter: the fresh one plus noise (aligners differ per block)
            for p in model.adapter_state_dict().values():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        run.mkdir(parents=True, exist_ok=True)
        rd.write_config(run, cfg)
        save_adapter(model.adapter_state_dict(), run / rd.ADAPTER_FILE)
        rd.write_run_info(run, rd.new_run_info(cfg, status="finished"))
    image = work / "image.jpg"
    if not image.is_file():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)).save(image)
    classes = {}
    for n in n_classes:
        names, template, style = class_names(n)
        classes[n] = {"names": names, "template": template, "style": style}
    return {"clip": clip_file, "run": run, "image": image, "classes": classes}


ENGINES = {"mmrl": "mmrl eval / predict fp32 (CLIP + adapter)",
           "mmrl-bf16": "mmrl eval / predict bf16 (weights cast once)",
           "mmrl-bf16-compiled": "mmrl eval bf16, torch.compile",
           "mmrl-compiled": "mmrl eval fp32, torch.compile",
           "torch": "exported .pt2 fp32 (torch.export)", "torch-bf16": "exported .pt2 bf16",
           "onnx": "exported .onnx fp32 (onnxruntime)"}


# --------------------------------------------------------------------------- workers
def worker(cfg: dict) -> dict:
    """One engine in this process: throughput at each batch size, logits of the fixed batch."""
    import torch

    torch.set_num_threads(cfg["threads"])
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(max(cfg["batches"] + [4]), 3, 224, 224, generator=g)
    if cfg["engine"].startswith("mmrl"):
        from mmrl.engine import load_run
        from mmrl.engine import precision as amp

        # mmrl / mmrl-bf16 (the frozen weights cast once, as `mmrl eval` at bf16) / *-compiled
        prec = "bf16" if "bf16" in cfg["engine"] else "fp32"
        dev = torch.device("cpu")
        model, _ = load_run(cfg["run"], device="cpu")
        amp.cast_frozen(model, prec)
        model.set_classes(cfg["names"], cfg["template"])
        with torch.no_grad():
            text = amp.encode_text(model, device=dev, precision=prec)
        if cfg["engine"].endswith("compiled"):
            graphs = {}

            def run(x):  # one compiled graph per batch size (the padding is for a test set's last batch)
                with torch.no_grad():
                    if x.shape[0] not in graphs:
                        graphs[x.shape[0]] = amp.compiled_logits(model, text, device=dev, precision=prec)
                    return graphs[x.shape[0]](x).fused
        else:
            def run(x):
                with torch.no_grad():
                    return amp.logits(model, x, text, device=dev, precision=prec).fused
    elif cfg["engine"].startswith("torch"):
        module = torch.export.load(cfg["file"]).module()  # a file this benchmark exported itself: trusted

        def run(x):
            with torch.no_grad():
                return module(x)
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg["threads"]
        opts.inter_op_num_threads = 1
        # no busy-waiting threads (as OMP_WAIT_POLICY=PASSIVE for torch): fair on a shared machine
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(cfg["file"], opts, providers=["CPUExecutionProvider"])

        def run(x):
            return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    t0 = time.perf_counter()
    out: dict = {"logits": run(batch[:4]).tolist()}
    out["first_call_s"] = time.perf_counter() - t0  # compiled engines: the compile of batch 4
    for b in cfg["batches"]:
        x = batch[:b].contiguous()
        t0 = time.perf_counter()
        run(x)  # warm-up (compiled engines: compiles this batch size)
        out[f"warmup_s_b{b}"] = time.perf_counter() - t0
        walls: list[float] = []
        cpus: list[float] = []
        while len(walls) < cfg["min_reps"] or (sum(walls) < cfg["budget_s"] and len(walls) < 1000):
            t0, c0 = time.perf_counter(), time.process_time()
            run(x)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[f"img_per_s_b{b}"] = b / statistics.median(walls)
        # images per CPU-second of this process (all its threads): steadier on a shared machine
        out[f"img_per_cpu_s_b{b}"] = b / statistics.median(cpus)
        out[f"reps_b{b}"] = len(walls)
    return out


def _spawn_worker(cfg: dict, threads: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                          text=True, env=_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {cfg['engine']} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _timed(cmd: list[str], threads: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {proc.stderr[-3000:]}")
    return wall


def _rel(a, b) -> float:
    import torch

    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--classes", type=int, nargs="+", default=[47, 1000], help="class-set sizes")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="throughput batch sizes")
    ap.add_argument("--throughput-classes", type=int, default=47,
                    help="class-set size of the throughput runs (the image tower dominates)")
    ap.add_argument("--budget-s", type=float, default=20.0, help="timed seconds per engine and batch size")
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--ttfp-repeats", type=int, default=2, help="time-to-first-prediction runs (best is kept)")
    ap.add_argument("--work", default="/tmp/mmrl-bench-inference", help="folder for the CLIP file, run, exports")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES),
                    help="throughput engines, alternating in fresh processes")
    ap.add_argument("--rounds", type=int, default=1, help="throughput rounds (medians are reported)")
    ap.add_argument("--skip-ttfp", action="store_true", help="no time-to-first-prediction runs")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    work = Path(args.work)
    t0 = time.perf_counter()
    s = setup(work, sorted(set(args.classes) | {args.throughput_classes}))
    print(f"setup {time.perf_counter() - t0:.1f}s: {s['run']}", flush=True)
    res: dict = {"threads": args.threads, "torch": torch.__version__, "loadavg_start": load_text(),
                 "cpu": cpu_name(), "sizes_mb": {}, "export_s": {}, "ttfp_s": {}, "throughput": {},
                 "agreement": {}}
    try:
        import onnxruntime

        res["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        sys.exit("needs onnxruntime (pip install -e '.[export]')")
    res["sizes_mb"]["clip_file"] = s["clip"].stat().st_size / 2**20
    res["sizes_mb"]["adapter"] = (s["run"] / "adapter.safetensors").stat().st_size / 2**20
    files: dict = {}
    for n, c in s["classes"].items():
        names = ",".join(c["names"])
        for fmt, suffix, prec in (("onnx", "onnx", "fp32"), ("torch", "pt2", "fp32"), ("torch-bf16", "pt2", "bf16")):
            f = work / f"mmrl-{n}-{prec}.{suffix}"
            cmd = [sys.executable, "-m", "mmrl", "export", str(s["run"]), "-o", str(f), "--classes", names,
                   "--template", c["template"], "--logits", "fused", "--precision", prec]
            res["export_s"][f"{fmt}-{n}"] = _timed(cmd, args.threads)
            res["sizes_mb"][f"{fmt}-{n}"] = f.stat().st_size / 2**20
            files[(fmt, n)] = f
            print(f"export {fmt} {n} classes: {res['export_s'][f'{fmt}-{n}']:.1f}s, "
                  f"{res['sizes_mb'][f'{fmt}-{n}']:.1f} MiB", flush=True)
    for n, c in ({} if args.skip_ttfp else s["classes"]).items():
        cmds = {"mmrl predict": [sys.executable, "-m", "mmrl", "predict", str(s["run"]), str(s["image"]),
                                 "--classes", ",".join(c["names"]), "--template", c["template"], "--logits",
                                 "fused", "--device", "cpu"],
                "onnx": [sys.executable, str(EXAMPLE), str(files[("onnx", n)]), str(s["image"])],
                "torch": [sys.executable, str(EXAMPLE), str(files[("torch", n)]), str(s["image"]), "--trust-pt2"],
                "torch-bf16": [sys.executable, str(EXAMPLE), str(files[("torch-bf16", n)]), str(s["image"]),
                               "--trust-pt2"]}
        for name, cmd in cmds.items():
            walls = [_timed(cmd, args.threads) for _ in range(args.ttfp_repeats)]
            res["ttfp_s"][f"{name}-{n}"] = min(walls)
            print(f"first prediction {name} {n} classes: {min(walls):.2f}s ({walls})", flush=True)
    n = args.throughput_classes
    c = s["classes"][n]
    base = {"threads": args.threads, "batches": args.batches, "budget_s": args.budget_s, "min_reps": args.min_reps,
            "run": str(s["run"]), "names": c["names"], "template": c["template"]}
    outs: dict = {}
    for rnd in range(args.rounds):  # the engines alternate, each run a fresh process
        for engine in args.engines:
            cfg = dict(base, engine=engine, file=str(files.get((engine, n), "")))
            load = load_text()
            o = _spawn_worker(cfg, args.threads)
            o["loadavg_before"] = load
            outs.setdefault(engine, []).append(o)
            print(f"throughput {engine} (round {rnd + 1}, load {load}): " + ", ".join(
                f"batch {b} {o[f'img_per_s_b{b}']:.2f} img/s ({o[f'img_per_cpu_s_b{b}']:.2f} per CPU-s)"
                for b in args.batches) + f", first call {o['first_call_s']:.1f} s", flush=True)
    for engine, runs in outs.items():  # medians over the rounds
        res["throughput"][engine] = {k: statistics.median(r[k] for r in runs) for k in runs[0]
                                     if k not in ("logits", "loadavg_before")}
        res["throughput"][engine]["loads"] = [r["loadavg_before"] for r in runs]
    ref = outs["mmrl"][0]["logits"] if "mmrl" in outs else None
    for engine, runs in outs.items():
        if ref is not None and engine != "mmrl":
            res["agreement"][engine] = _rel(runs[0]["logits"], ref)
    res["loadavg_end"] = load_text()
    print(table(res, args))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def table(res: dict, args) -> str:
    b = args.batches
    engines = list(res["throughput"])
    rows = ["| engine | " + " | ".join(f"img/s batch {x}" for x in b) + " | "
            + " | ".join(f"img per CPU-s batch {x}" for x in b) + " | "
            + " | ".join(f"first prediction s ({n} classes)" for n in args.classes) + " | file MiB |",
            "|---" * (2 + 2 * len(b) + len(args.classes)) + "|"]
    for engine in engines:
        label = ENGINES[engine]
        tp = res["throughput"][engine]
        ttfp = [res["ttfp_s"].get(f"{'mmrl predict' if engine == 'mmrl' else engine}-{n}") for n in args.classes]
        size = (res["sizes_mb"]["clip_file"] + res["sizes_mb"]["adapter"] if engine.startswith("mmrl")
                else res["sizes_mb"][f"{engine}-{args.classes[0]}"])
        rows.append(f"| {label} | " + " | ".join(f"{tp[f'img_per_s_b{x}']:.2f}" for x in b) + " | "
                    + " | ".join(f"{tp[f'img_per_cpu_s_b{x}']:.2f}" for x in b) + " | "
                    + " | ".join("-" if t is None else f"{t:.2f}" for t in ttfp) + f" | {size:.0f} |")
    rows.append("")
    rows.append("load average before each run: " + "; ".join(f"{e} {res['throughput'][e]['loads']}" for e in engines))
    rows.append("")
    rows.append("export s: " + ", ".join(f"{k} {v:.1f}" for k, v in res["export_s"].items())
                + "; agreement (max rel. logit difference vs mmrl): "
                + ", ".join(f"{k} {v:.1e}" for k, v in res["agreement"].items()))
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
