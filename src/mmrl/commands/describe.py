"""`mmrl describe`: build a method on a backbone and print its settings and parameter counts.

For an open_clip model name nothing is downloaded: the architecture is built with
random weights (parameter counts and shapes do not depend on the weights).
"""
from __future__ import annotations

import argparse

from mmrl import methods
from mmrl.fileio import dumps_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=[*methods.names(), "clip"], default="mmrl",
                   help="method to build (clip: zero-shot CLIP)")
    p.add_argument("--backbone", default="ViT-B-16", help="backbone spec (open_clip name[:tag], file, toy-clip)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting, e.g. method.rep_dim=2048 (repeatable)")
    p.add_argument("--classes", type=int, default=None, metavar="N",
                   help="also count the FLOPs per training step and per evaluated image, and the peak memory of a "
                        "step, with N classes (one step on random images and random weights; see "
                        "docs/performance.md)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch size for --classes (default 4)")
    p.add_argument("--json", action="store_true", help="print JSON")


def method_settings(method: str, overrides: list[str]):
    """The settings of ``method`` with ``method.key=value`` (or ``key=value``) items applied, typed
    and checked as any config key is (:func:`mmrl.config.set_key`)."""
    from mmrl.config import RunConfig, parse_override, set_key

    cfg = RunConfig()
    set_key(cfg, "method.name", method, "--method")
    for item in overrides:
        key, value = parse_override(item)
        key = key if key.startswith("method.") else f"method.{key}"
        set_key(cfg, key, value, f"--set {key}")
    cfg.method.validate()
    return cfg.method


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import check_method_fits, load_backbone_checked
    from mmrl.models import ZeroShotCLIP, build_method

    backbone = load_backbone_checked(args.backbone, pretrained=False)
    info: dict = {"backbone": backbone.describe()}
    if args.method == "clip":
        model = ZeroShotCLIP(backbone)
        info["method"] = {"name": "clip"}
        info["trainable_parameters"] = 0
    else:
        cfg = method_settings(args.method, args.overrides)
        check_method_fits(backbone, cfg)
        model = build_method(backbone, cfg)
        info["method"] = model.settings()
        info["trainable_parameters"] = model.num_trainable_parameters()
        info["adapter_tensors"] = {k: list(v) for k, v in model.adapter_shapes().items()}
    info["frozen_parameters"] = sum(p.numel() for p in model.clip.parameters())
    if args.classes is not None:
        from mmrl.config import ConfigError

        if args.method == "clip":
            raise ConfigError("--classes needs a method to train (zero-shot CLIP has no training step)")
        if args.classes < 2 or args.batch_size < 1:
            raise ConfigError(f"--classes {args.classes} --batch-size {args.batch_size}: expected at least 2 classes "
                              "and a batch of at least 1")
        import torch

        from mmrl.engine.cost import step_profile

        names = [f"class number {i}" for i in range(args.classes)]  # a few tokens, as most class names
        info["step"] = step_profile(model, names, "a photo of a {}.", batch_size=args.batch_size,
                                    device=torch.device("cpu"))
    if args.json:
        print(dumps_json(info, indent=2))
    else:
        print(f"backbone: {args.backbone}  " + ", ".join(f"{k}={v}" for k, v in info["backbone"].items() if k != "spec"))
        print("method:   " + ", ".join(f"{k}={v}" for k, v in info["method"].items()))
        print(f"trainable parameters: {info['trainable_parameters']:,}   frozen CLIP parameters: "
              f"{info['frozen_parameters']:,}")
        if "step" in info:
            st = info["step"]
            print(f"one training step, {st['classes']} classes, batch {st['batch_size']}: "
                  f"{st['flops']['train_step'] / 1e9:,.1f} GFLOP; evaluation: {st['flops']['per_eval_image'] / 1e9:,.2f} "
                  f"GFLOP per image (FlopCounterMode, one step on random images)")
            m = st["memory_mb"]
            print(f"peak memory of a step: about {m['step_peak']:,.0f} MB = weights {m['weights']:,.0f} + saved "
                  f"activations {m['saved_activations']:,.0f} + gradients and AdamW {m['gradients_and_adamw']:,.1f} "
                  "(arithmetic over that step; the framework's own memory, a few hundred MB, not included)")
    return 0
