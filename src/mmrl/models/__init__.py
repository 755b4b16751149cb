"""Backbones (frozen CLIP ViTs) and the methods built on them.

``backbone`` loads CLIPs; ``mmrl`` is the method (fast path), ``reference`` the same method
computed straightforwardly (for tests and benchmarks), ``blocks`` and ``aligners`` its parts,
``zeroshot`` the baseline, ``frozen`` a trained model frozen for export, ``official`` and
``safe_load`` read the authors' checkpoints without executing them.
"""
from __future__ import annotations

from torch import nn

from mmrl.models.backbone import Backbone, load_backbone
from mmrl import methods
from mmrl.methods import MethodConfig, MMRLConfig, MMRLPlusConfig, method_config
from mmrl.models.mmrl import MMRL, ImageFeatures, Logits, LossOutput, MMRLPlus
from mmrl.models.zeroshot import ZeroShotCLIP


def build_method(backbone: Backbone, cfg: MethodConfig | None) -> nn.Module:
    """The model of the method ``cfg.name`` (its registered class) on ``backbone``; ``cfg=None`` ->
    zero-shot CLIP. The one builder that train, load, convert and describe use."""
    if cfg is None:
        return ZeroShotCLIP(backbone)
    cfg.validate(backbone.vision_layers, backbone.text_layers)  # ValueError naming the key
    return methods.get(cfg.name).model_class()(backbone, cfg)


__all__ = ["Backbone", "load_backbone", "MMRL", "MMRLPlus", "ImageFeatures", "Logits", "LossOutput",
           "MethodConfig", "MMRLConfig", "MMRLPlusConfig", "method_config", "ZeroShotCLIP", "build_method"]
