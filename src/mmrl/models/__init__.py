"""Backbones (frozen CLIP ViTs) and the methods built on them."""
from mmrl.models.backbone import Backbone, load_backbone
from mmrl.models.mmrl import METHODS, MMRL, ImageFeatures, Logits, LossOutput, MethodConfig, ZeroShotCLIP, build_method

__all__ = ["Backbone", "load_backbone", "METHODS", "MMRL", "ImageFeatures", "Logits", "LossOutput",
           "MethodConfig", "ZeroShotCLIP", "build_method"]
