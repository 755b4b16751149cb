"""What a backbone spec names, without loading it (torch-free): the packaged tiny CLIP's name and
file, and the depth of both towers, so a sweep can reject a grid point that the backbone cannot take
(a first token block J beyond the tower) before any run starts.

The loading itself is :func:`mmrl.models.backbone.load_backbone`; the spec forms are listed there.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mmrl.fileio import read_json, read_safetensors_header

TOY_CLIP_NAME = "toy-clip"
TOY_CLIP_FILE = Path(__file__).resolve().parent / "toyworld" / "tiny_clip.safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar", ".ckpt")

_VISION_BLOCK = "visual.transformer.resblocks."
_TEXT_BLOCK = "transformer.resblocks."


def _safetensors_keys(path: Path) -> list[str]:
    """Tensor names of a .safetensors file, read from its JSON header (8-byte length, then the header)."""
    return [k for k in read_safetensors_header(path) if k != "__metadata__"]


def _count_blocks(keys: list[str], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)})


def _open_clip_config(name: str) -> dict | None:
    """open_clip's model config (its packaged ``model_configs/<name>.json``), found without importing
    open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model_configs" / f"{name}.json"
        if path.is_file():
            return read_json(path)
    return None


def tower_depths(spec: str) -> tuple[int, int] | None:
    """(vision blocks, text blocks) of the backbone ``spec`` names, or None where that cannot be told
    without loading it (an OpenAI TorchScript or ``torch.save`` file, a hub model): the run checks
    itself when it starts.

    Read from: the packaged tiny CLIP's and any ``.safetensors`` file's tensor names (OpenAI
    format), an open_clip name's model config (``ViT-B-16``: 12 and 12).
    """
    spec = str(spec)
    path = TOY_CLIP_FILE if spec == TOY_CLIP_NAME else Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            keys = _safetensors_keys(path)
        except (OSError, ValueError):
            return None
        depths = _count_blocks(keys, _VISION_BLOCK), _count_blocks(keys, _TEXT_BLOCK)
        return depths if all(depths) else None
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in spec.partition(":")[0]:
        return None
    cfg = _open_clip_config(spec.partition(":")[0])
    try:
        return int(cfg["vision_cfg"]["layers"]), int(cfg["text_cfg"]["layers"])
    except (TypeError, KeyError, ValueError):
        return None
