"""Training-step time of every tower family: mmrl's path vs the written-out reference.

For each family of the test zoo (``tests/towers_zoo.py``: tiny random models of each open_clip /
timm tower layout, built in-process, no download) and each method, one training step (loss,
backward) of the model's own path (``model.loss``: the CLIP fast path for ``clip``, the exact
generic path for every other family) and of ``mmrl.models.reference.loss`` (docs/method.md as
code, the standard both are tested against). Batch 4 images, 4 classes, fp32, one thread;
median wall seconds and process CPU seconds per step over ``--steps`` steps after one warm-up.

The models are tiny (width 32, 3 blocks, 16 px images): the numbers compare the paths' overhead
on each layout, not the speed of a real backbone (benchmarks/train_step.py measures ViT-B/16)::

    python benchmarks/towers_step.py --steps 20 --json benchmarks/results_towers_step.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo of tiny towers

from towers_zoo import FAMILIES, IMAGE, tiny_backbone  # noqa: E402

from mmrl.models import build_method, method_config, reference  # noqa: E402

CLASSES = ["cat", "dog house", "golden retriever", "a very long class name with words"]


def build(family: str, method: str):
    bb = tiny_backbone(family)
    torch.manual_seed(1)
    plus = {"beta": 0.6, "proj_lora_rank": 4, "aligner_lora_rank": 2} if method == "mmrl++" else {}
    model = build_method(bb, method_config(method, n_rep_tokens=3, rep_dim=8, first_rep_block=2, **plus))
    model.set_classes(CLASSES, "a photo of a {}.")
    return model


def time_steps(model, loss_fn, steps: int) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, IMAGE, IMAGE), torch.tensor([0, 1, 2, 3])
    params = [p for p in model.parameters() if p.requires_grad]
    wall, cpu = [], []
    for i in range(steps + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        out = loss_fn(model, x, y)
        torch.autograd.grad(out.total, params, allow_unused=True)
        if i:  # the first step warms up
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--methods", nargs="+", default=["mmrl", "mmrl++"])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'family':10} {'method':7} {'path':8} {'ours ms':>8} {'ref ms':>8} {'ref/ours':>8}")
    for family in args.families:
        for method in args.methods:
            model = build(family, method)
            path = "fast" if model.towers.clip_layout else "generic"
            ours = time_steps(model, lambda m, x, y: m.loss(x, y), args.steps)
            ref = time_steps(model, reference.loss, args.steps)
            rows.append({"family": family, "method": method, "path": path, "ours": ours, "reference": ref})
            print(f"{family:10} {method:7} {path:8} {1e3 * ours['wall_s']:8.1f} {1e3 * ref['wall_s']:8.1f} "
                  f"{ref['wall_s'] / ours['wall_s']:8.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
