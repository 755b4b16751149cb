"""Zero-shot classification with a plain open_clip CLIP (no adaptation).

Used by pretraining (to track progress), by the task report and by the tests.
Features are L2-normalised; the class is the prompt with the highest cosine.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from open_clip.model import CLIP
from PIL import Image
from open_clip.tokenizer import SimpleTokenizer

from mmrl.fileio import read_json
from mmrl.toyworld.model import to_tensor


@torch.no_grad()
def text_features(model: CLIP, tokenizer: SimpleTokenizer, prompts: list[str]) -> torch.Tensor:
    """(C, D) normalised features of the prompts."""
    tokens = tokenizer(prompts)
    return torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)


@torch.no_grad()
def image_features(model: CLIP, images: np.ndarray, batch_size: int = 500) -> torch.Tensor:
    """(N, D) normalised features of uint8 images (N, H, W, 3)."""
    feats = [model.encode_image(to_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.nn.functional.normalize(torch.cat(feats), dim=-1)


def predict(model: CLIP, tokenizer: SimpleTokenizer, prompts: list[str], images: np.ndarray) -> np.ndarray:
    """(N,) index of the best-matching prompt for each image."""
    was_training = model.training
    model.eval()
    try:
        sims = image_features(model, images) @ text_features(model, tokenizer, prompts).T
    finally:
        model.train(was_training)
    return sims.argmax(dim=1).numpy()


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float(100.0 * np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")


def evaluate_task_folder(model: CLIP, task_dir: str | os.PathLike, split: str = "test") -> dict:
    """Zero-shot accuracy (%) on a written task folder (dataset.json + split file + PNGs).

    "all": every class competes; "base" / "novel": the protocol's halves
    (sorted labels, first ceil(n/2) base), each classified among its own
    classes only, as in base-to-novel evaluation. Chance levels alongside.
    """
    root = Path(task_dir)
    meta = read_json(root / "dataset.json")
    entries = read_json(root / meta["split_file"])[split]
    names = {int(label): name for _, label, name in entries}
    labels_sorted = sorted(names)
    n_base = (len(labels_sorted) + 1) // 2
    halves = {"all": labels_sorted, "base": labels_sorted[:n_base], "novel": labels_sorted[n_base:]}
    images = np.stack([np.asarray(Image.open(root / meta["image_dir"] / rel).convert("RGB")) for rel, _, _ in entries])
    labels = np.array([int(label) for _, label, _ in entries])
    tokenizer = SimpleTokenizer(context_length=model.context_length)
    result: dict = {"name": meta["name"], "template": meta["template"], "classes": len(labels_sorted)}
    for half, classes in halves.items():
        keep = np.isin(labels, classes)
        prompts = [meta["template"].format(names[c].replace("_", " ")) for c in classes]
        pred = predict(model, tokenizer, prompts, images[keep])
        result[half] = accuracy(np.array(classes)[pred], labels[keep])
        result[f"{half}_chance"] = 100.0 / len(classes)
    return result
