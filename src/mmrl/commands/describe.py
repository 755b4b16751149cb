"""`mmrl describe`: build a method on a backbone and print its settings and parameter counts.

For an open_clip model name nothing is downloaded: the architecture is built with
random weights (parameter counts and shapes do not depend on the weights).
"""
from __future__ import annotations

import argparse
import dataclasses

from mmrl.fileio import dumps_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["mmrl", "mmrl++", "clip"], default="mmrl", help="method to build")
    p.add_argument("--backbone", default="ViT-B-16", help="backbone spec (open_clip name[:tag], file, toy-clip)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting, e.g. method.rep_dim=2048 (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")


def apply_method_overrides(cfg, overrides: list[str]):
    """`method.key=value` (or `key=value`) with YAML-parsed values, type-checked against the dataclass."""
    from mmrl.config import parse_yaml
    from mmrl.errors import clip, shown

    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {shown(item)}: expected KEY=VALUE")
        name = key.removeprefix("method.")
        if name not in fields:
            import difflib
            close = difflib.get_close_matches(name, fields, n=3)
            raise ValueError(f"--set {clip(key)}: unknown method key; closest: {['method.' + c for c in close]}")
        value = parse_yaml(raw, f"--set {clip(key)}")
        want = type(getattr(cfg, name))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise ValueError(f"--set {clip(key)}={clip(raw)}: expected {want.__name__}")
        cfg = dataclasses.replace(cfg, **{name: value})
    return cfg


def main(args: argparse.Namespace) -> int:
    from mmrl.engine.runtime import load_backbone_checked
    from mmrl.models import MMRL, MethodConfig, ZeroShotCLIP

    backbone = load_backbone_checked(args.backbone, pretrained=False)
    info: dict = {"backbone": backbone.describe()}
    if args.method == "clip":
        model = ZeroShotCLIP(backbone)
        info["method"] = {"name": "clip"}
        info["trainable_parameters"] = 0
    else:
        cfg = apply_method_overrides(MethodConfig(name=args.method), args.overrides)
        model = MMRL(backbone, cfg)
        info["method"] = model.settings()
        info["trainable_parameters"] = model.num_trainable_parameters()
        info["adapter_tensors"] = {k: list(v) for k, v in model.adapter_shapes().items()}
    info["frozen_parameters"] = sum(p.numel() for p in model.clip.parameters())
    if args.json:
        print(dumps_json(info, indent=2))
    else:
        print(f"backbone: {args.backbone}  " + ", ".join(f"{k}={v}" for k, v in info["backbone"].items() if k != "spec"))
        print("method:   " + ", ".join(f"{k}={v}" for k, v in info["method"].items()))
        print(f"trainable parameters: {info['trainable_parameters']:,}   frozen CLIP parameters: "
              f"{info['frozen_parameters']:,}")
    return 0
