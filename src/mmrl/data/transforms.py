"""Train / test image preprocessing (docs/protocols.md#image-preprocessing)."""
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
    if not train:
        return transform_from_spec(preprocessing_spec(resolution))
    head = [T.RandomResizedCrop(resolution, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip()]
    return T.Compose([*head, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def preprocessing_spec(resolution: int) -> dict:
    """The test-time preprocessing as data (what an exported model's file records):

    ``{"resize": R, "interpolation": "bicubic", "crop": R, "mean": [3], "std": [3]}`` --
    RGB image, resize so that its SHORTER side is ``resize`` pixels (bicubic; the longer side
    ``int(resize * long / short)``), centre crop ``crop`` x ``crop``, scale to [0, 1], then
    ``(x - mean) / std`` per channel; result (3, crop, crop) float32, channels first.
    """
    return {"resize": int(resolution), "interpolation": "bicubic", "crop": int(resolution),
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


def transform_from_spec(spec: dict) -> T.Compose:
    """PIL RGB image -> (3, crop, crop) float tensor, from a :func:`preprocessing_spec` dict."""
    try:
        interp = InterpolationMode(spec["interpolation"])
        resize, crop = int(spec["resize"]), int(spec["crop"])
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
    except (KeyError, TypeError, ValueError) as e:
        from mmrl.errors import clip, shown  # the spec may come from an exported file of someone else

        raise ValueError(f"preprocessing {shown(spec)}: expected keys resize, interpolation, crop, mean, std "
                         f"({type(e).__name__}: {clip(str(e))})") from e
    return T.Compose([T.Resize(resize, interpolation=interp), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(mean, std)])
