"""Train / test image preprocessing (docs/protocols.md#image-preprocessing)."""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from mmrl.errors import clip, shown

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


RESIZE_MODES = ("shortest", "squash")      # open_clip's modes of its pretrained weights
INTERPOLATIONS = ("bicubic", "bilinear")


def build_transform(train: bool, resolution: int, interpolation: str = "bicubic",
                    resize_mode: str = "shortest") -> T.Compose:
    """PIL RGB image -> float tensor (3, resolution, resolution), CLIP-normalised.

    Train: RandomResizedCrop(resolution, scale (0.5, 1)) + horizontal flip. Test: resize of the
    short side to `resolution`, then a centre crop (``resize_mode="shortest"``, CLIP's), or of
    the whole image to `resolution` x `resolution` (``"squash"``: SigLIP's, CLIPA's). The
    interpolation and resize mode are the backbone's own (:func:`mmrl.models.towers.image_resizing`;
    bicubic and shortest for every CLIP ViT, the protocol's). `resolution` is the backbone's
    input size (224 for ViT-B/16). The random ops draw from torch's global RNG; `ImageDataset`
    seeds it per sample inside a forked RNG state.
    """
    if not isinstance(resolution, int) or resolution <= 0:
        raise ValueError(f"resolution={resolution!r}; expected a positive int (the backbone's input size)")
    if not train:
        return transform_from_spec(preprocessing_spec(resolution, interpolation, resize_mode))
    head = [T.RandomResizedCrop(resolution, scale=(0.5, 1.0), interpolation=_interpolation(interpolation)),
            T.RandomHorizontalFlip()]
    return T.Compose([*head, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def _interpolation(name: str) -> InterpolationMode:
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation {name!r}; expected one of {', '.join(INTERPOLATIONS)}")
    return InterpolationMode(name)


def preprocessing_spec(resolution: int, interpolation: str = "bicubic", resize_mode: str = "shortest") -> dict:
    """The test-time preprocessing as data (what an exported model's file records):

    ``{"resize": R, "interpolation": I, "crop": R, "resize_mode": M, "mean": [3], "std": [3]}`` --
    RGB image; M ``shortest``: resize so that its SHORTER side is ``resize`` pixels (the longer
    side ``int(resize * long / short)``), then centre crop ``crop`` x ``crop``; M ``squash``:
    resize the whole image to ``resize`` x ``resize`` (aspect ratio not kept); interpolation I
    (``bicubic`` / ``bilinear``); scale to [0, 1], then ``(x - mean) / std`` per channel
    (always CLIP's: a model with other statistics maps them inside itself); result
    (3, crop, crop) float32, channels first. Files written before ``resize_mode`` existed mean
    ``shortest``.
    """
    return {"resize": int(resolution), "interpolation": interpolation, "crop": int(resolution),
            "resize_mode": resize_mode, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


def transform_from_spec(spec: dict) -> T.Compose:
    """PIL RGB image -> (3, crop, crop) float tensor, from a :func:`preprocessing_spec` dict."""
    try:
        interp = _interpolation(spec["interpolation"])
        resize, crop = int(spec["resize"]), int(spec["crop"])
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
        mode = spec.get("resize_mode", "shortest")
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        # the spec may come from an exported file of someone else
        raise ValueError(f"preprocessing {shown(spec)}: expected keys resize, interpolation, crop, mean, std "
                         f"[, resize_mode] ({type(e).__name__}: {clip(str(e))})") from e
    size = (resize, resize) if mode == "squash" else resize
    return T.Compose([T.Resize(size, interpolation=interp), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(mean, std)])
