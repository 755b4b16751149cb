"""Backbones (frozen CLIP ViTs) and the methods built on them.

``backbone`` loads CLIPs; ``mmrl`` is the method (fast path), ``reference`` the same method
computed straightforwardly (for tests and benchmarks), ``blocks`` and ``aligners`` its parts,
``zeroshot`` the baseline, ``frozen`` a trained model frozen for export, ``official`` and
``safe_load`` read the authors' checkpoints without executing them.
"""
from __future__ import annotations

from torch import nn

from mmrl.models.backbone import Backbone, load_backbone
from mmrl.models.mmrl import METHODS, MMRL, ImageFeatures, Logits, LossOutput, MethodConfig
from mmrl.models.zeroshot import ZeroShotCLIP


def build_method(backbone: Backbone, cfg: MethodConfig | None) -> nn.Module:
    """``cfg=None`` -> zero-shot CLIP; else MMRL / MMRL++ per ``cfg.name``."""
    return ZeroShotCLIP(backbone) if cfg is None else MMRL(backbone, cfg)


__all__ = ["Backbone", "load_backbone", "METHODS", "MMRL", "ImageFeatures", "Logits", "LossOutput",
           "MethodConfig", "ZeroShotCLIP", "build_method"]
