"""The tiny CLIP of the toy world: construction, checkpoint I/O, preprocessing.

The model is a standard open_clip ViT CLIP with QuickGELU, sized so that the
OpenAI-format loader (`mmrl.models.backbone.clip_from_openai_state_dict`)
rebuilds exactly the same network from the tensor shapes alone: attention
heads are width // 64 in both towers, the text vocabulary is CLIP's full BPE
vocabulary (49408) so that CLIP's tokenizer works unchanged.

The checkpoint is a safetensors file whose keys are those of
`CLIP.state_dict()` (equal to OpenAI's), stored in float16.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file, save

from mmrl.fileio import write_bytes_atomic
from mmrl.models.backbone import clip_from_openai_state_dict

CHECKPOINT_PATH = Path(__file__).with_name("tiny_clip.safetensors")
METRICS_PATH = CHECKPOINT_PATH.with_suffix(".json")

# CLIP's normalisation constants (the project's data layer uses them too).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB_SIZE = 49408


@dataclass(frozen=True)
class TinyClipConfig:
    """Architecture of the tiny CLIP (heads = width // 64 in both towers).

    Defaults are the committed checkpoint: a vision tower of width 128 (2
    heads; one 64-wide head learnt shape clearly worse) and a text tower of
    width 64 (1 head; its token embedding, 49408 x width, is most of the file).
    """
    embed_dim: int = 64
    vision_width: int = 128
    vision_layers: int = 6
    patch_size: int = 8
    image_size: int = 32
    text_width: int = 64
    text_layers: int = 6
    context_length: int = 16

    def __post_init__(self) -> None:
        for name in ("vision_width", "text_width"):
            width = getattr(self, name)
            if width % 64:
                raise ValueError(f"TinyClipConfig.{name}={width}: must be a multiple of 64, the OpenAI "
                                 "loader infers heads = width // 64")
        if self.image_size % self.patch_size:
            raise ValueError(f"TinyClipConfig.image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")


def build_tiny_clip(cfg: TinyClipConfig) -> CLIP:
    """A freshly initialised tiny CLIP (float32, train mode)."""
    vision = CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width, patch_size=cfg.patch_size,
                           image_size=cfg.image_size, head_width=64)
    text = CLIPTextCfg(context_length=cfg.context_length, vocab_size=VOCAB_SIZE, width=cfg.text_width,
                       heads=cfg.text_width // 64, layers=cfg.text_layers)
    return CLIP(cfg.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)



def save_checkpoint(model: CLIP, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> None:
    """Write the OpenAI-format state dict as safetensors, atomically (the project's one writer)."""
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(save(state, metadata={"format": "pt"}), path)


def load_state_dict(path: str | os.PathLike = CHECKPOINT_PATH) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiny CLIP checkpoint {path} not found: run `mmrl toyworld pretrain`")
    return load_file(str(path))


def load_tiny_clip(path: str | os.PathLike = CHECKPOINT_PATH) -> CLIP:
    """The pretrained tiny CLIP, rebuilt the way any OpenAI checkpoint is (float32, eval mode)."""
    state = load_state_dict(path)
    return clip_from_openai_state_dict(state, str(path)).eval()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> normalised float tensor (N, 3, H, W), as CLIP's preprocessing."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std
