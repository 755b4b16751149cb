"""Zero-shot CLIP: the baseline every adapted model is compared with."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrl.models.backbone import Backbone
from mmrl.models.mmrl import Logits
from mmrl.models.prompts import tokenize_classes
from mmrl.models.towers import towers_of


class ZeroShotCLIP(nn.Module):
    """Plain frozen CLIP with one hand-written template per class: the baseline.

    Same interface as :class:`MMRL` for evaluation (``set_classes``, ``encode_text``,
    ``logits``); all three logit kinds are CLIP's logits at the fixed scale 100.
    """

    def __init__(self, backbone: Backbone, logit_scale: float = 100.0):
        super().__init__()
        self.clip = backbone.clip
        self.vision = towers_of(backbone.clip, backbone.spec).vision  # its own mean/std (model_input)
        self.tokenizer = backbone.tokenizer
        self.logit_scale = logit_scale
        self.classnames: list[str] = []

    def set_classes(self, classnames: list[str], template: str) -> None:
        device = next(self.clip.parameters()).device
        tokens = tokenize_classes(self.tokenizer, classnames, template).to(device)
        with torch.no_grad():
            text = self.clip.encode_text(tokens)
        self.classnames = list(classnames)
        self.register_buffer("text_features", text, persistent=False)

    def encode_text(self) -> Tensor:
        return self.text_features

    def evaluation_settings(self, trained_on: str | None, target_settings: dict[str, float],
                            dataset: str | None) -> dict[str, float]:
        """Zero-shot CLIP has no per-dataset settings."""
        return {}

    def using(self, settings: dict[str, float]) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    def logits(self, images: Tensor, text: Tensor | None = None) -> Logits:
        text = self.text_features if text is None else text
        # images come standardised as CLIP's; a tower with its own mean/std gets them re-standardised
        f = F.normalize(self.clip.encode_image(self.vision.model_input(images)), dim=-1)
        lc = self.logit_scale * f @ F.normalize(text, dim=-1).t()
        return Logits(lc, lc, lc)
