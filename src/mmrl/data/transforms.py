"""Train / test image preprocessing (protocols.md, "Image preprocessing")."""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_transform(train: bool, resolution: int) -> T.Compose:
    """PIL RGB image -> float tensor (3, resolution, resolution), CLIP-normalised.

    Train: RandomResizedCrop(resolution, scale (0.5, 1), bicubic) + horizontal
    flip. Test: bicubic resize of the short side to `resolution`, then a
    centre crop. `resolution` is the backbone's input size (224 for ViT-B/16).
    The random ops draw from torch's global RNG; `ImageDataset` seeds it per
    sample inside a forked RNG state.
    """
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution={resolution!r}; expected a positive int (the backbone's input size)")
    if train:
        head = [T.RandomResizedCrop(resolution, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip()]
    else:
        head = [T.Resize(resolution, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(resolution)]
    return T.Compose([*head, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
