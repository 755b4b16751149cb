"""`mmrl demo`: zero-shot CLIP vs MMRL vs MMRL++, base-to-novel, on the synthetic world.

Everything runs through the normal pipeline: the tasks are written to disk as
``dataset.json`` folders (read by ``mmrl.data`` like any benchmark with a split file),
the tiny CLIP is the packaged ``toy-clip`` backbone (an OpenAI-format state dict loaded
by the normal loader), and each method is trained and evaluated by ``mmrl.engine`` with
the ``base2novel`` preset plus the toy overrides of ``presets/toy.yaml`` (the token
blocks are the upper half of the 6-block towers and K, d_r scale down; see
docs/toyworld.md). Novel classes are evaluated with class-only logits as the protocol
says; the fused logits on novel classes are computed as well, to show what decoupled
inference changes.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmrl.toyworld.tasks import TASKS
from mmrl.vocab import harmonic_mean

LOG = logging.getLogger("mmrl")
TOY_PRESET = Path(__file__).resolve().parent.parent / "presets" / "toy.yaml"
METHODS = ("mmrl", "mmrl++")


def default_out() -> Path:
    from mmrl.data import default_cache_dir

    return Path(default_cache_dir()) / "demo"


@dataclass
class DemoConfig:
    out: Path = field(default_factory=default_out)   # tasks and runs go here
    seed: int = 1                                    # run seed (few-shot subset, init, data order)
    task_seed: int = 0                               # seed the task images are rendered with
    tasks: tuple[str, ...] = tuple(TASKS)
    methods: tuple[str, ...] = METHODS
    backbone: str = "toy-clip"                       # the packaged tiny CLIP (or another small CLIP file)
    threads: int | None = None                       # torch CPU threads (None: leave as is)
    overrides: tuple[str, ...] = ()                  # extra `key=value` config overrides


def toy_overrides(method: str) -> list[str]:
    """The toy preset (presets/toy.yaml) as `key=value` overrides for ``method``."""
    with open(TOY_PRESET, encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    flat: dict[str, object] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and k != "target_beta":
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + k] = v

    walk("", preset.get("common", {}))
    walk("", preset.get(method, {}))
    return [f"{k}={json.dumps(v)}" for k, v in flat.items()]


def ensure_tasks(cfg: DemoConfig) -> dict[str, Path]:
    """Write the task folders that are missing (a finished folder has its dataset.json)."""
    from mmrl.toyworld.tasks import write_task

    folders = {}
    for name in cfg.tasks:
        folder = cfg.out / "tasks" / name
        if not (folder / "dataset.json").is_file():
            LOG.info("writing toy task %s -> %s", name, folder)
            write_task(TASKS[name], cfg.out / "tasks", seed=cfg.task_seed)
        folders[name] = folder
    return folders


hm = harmonic_mean  # the name this module's callers use


def run_demo(cfg: DemoConfig, progress: str | bool | None = None) -> dict:
    """Run the whole demo; returns {"rows": [...], "average": {...}, "seconds": ...}."""
    import torch

    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(cfg, progress)
    finally:  # the thread count is process-wide: give the caller back its own
        torch.set_num_threads(threads_before)


def _run_demo(cfg: DemoConfig, progress: str | bool | None) -> dict:
    from mmrl.config import resolve_config
    from mmrl.engine import evaluate, train, zeroshot

    t0 = time.time()
    folders = ensure_tasks(cfg)
    rows = []
    for name, folder in folders.items():
        dataset = f"folder:{folder}"
        for sub in ("base", "new"):
            zs = zeroshot(dataset, None, sub, backbone=cfg.backbone, shots=16, seed=cfg.seed, precision="fp32",
                          device="cpu", output=cfg.out / "runs" / "zeroshot" / name, progress=progress)
            if sub == "base":
                zs_base = zs["accuracy"]
            else:
                zs_novel = zs["accuracy"]
        rows.append({"dataset": name, "method": "CLIP", "base": zs_base, "novel": zs_novel,
                     "hm": hm(zs_base, zs_novel), "novel_fused": None, "chance_novel": 100 / zs["n_classes"]})
        for method in cfg.methods:
            run_dir = cfg.out / "runs" / method / name / f"seed_{cfg.seed}"
            run_cfg = resolve_config(method, "base2novel", dataset,
                                     overrides=[*toy_overrides(method), f"backbone={cfg.backbone}", f"seed={cfg.seed}",
                                                "device=cpu", f"output={run_dir}", *cfg.overrides])
            res = train(run_cfg, progress=progress)
            fused = evaluate(run_dir, dataset, None, "new", logits="fused", output_dir=run_dir / "eval-fused",
                             progress=progress)
            rows.append({"dataset": name, "method": "MMRL" if method == "mmrl" else "MMRL++",
                         "base": res["base"], "novel": res["novel"], "hm": res["hm"],
                         "novel_fused": fused["accuracy"], "chance_novel": 100 / fused["n_classes"]})
    average = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        b = sum(r["base"] for r in mine) / len(mine)
        n = sum(r["novel"] for r in mine) / len(mine)
        fused = [r["novel_fused"] for r in mine if r["novel_fused"] is not None]
        average[m] = {"base": b, "novel": n, "hm": hm(b, n),
                      "novel_fused": sum(fused) / len(fused) if fused else None}
    return {"rows": rows, "average": average, "seed": cfg.seed, "seconds": round(time.time() - t0, 1),
            "out": str(cfg.out)}


def format_table(result: dict) -> str:
    """The Base / Novel / HM table per dataset and the average (HM of the averages)."""
    lines = ["| dataset | method | Base | Novel | HM | Novel (fused logits) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: "—" if v is None else f"{v:.1f}"
    for r in result["rows"]:
        lines.append(f"| {r['dataset']} | {r['method']} | {fmt(r['base'])} | {fmt(r['novel'])} | {fmt(r['hm'])} "
                     f"| {fmt(r['novel_fused'])} |")
    for m, a in result["average"].items():
        lines.append(f"| **average** | {m} | {fmt(a['base'])} | {fmt(a['novel'])} | {fmt(a['hm'])} "
                     f"| {fmt(a['novel_fused'])} |")
    return "\n".join(lines)
