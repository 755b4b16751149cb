"""Classify images with a file written by `mmrl export` -- without mmrl, CLIP or the class texts.

Needs numpy, Pillow and either onnxruntime (for .onnx files) or torch (for .pt2 files)::

    python classify_exported.py pets.onnx cat.jpg dog.jpg --top-k 3
    python classify_exported.py pets.pt2 cat.jpg --trust-pt2     # only for a .pt2 you trust

The file's metadata says everything needed: class names, logit kind, input size and the
preprocessing (`resize_mode` "shortest": shorter side resized to `resize`, then a centre crop
`crop` x `crop`; "squash": the whole image resized to `resize` x `resize`; with the file's
`interpolation`, bicubic or bilinear; RGB scaled to [0, 1], then `(x - mean) / std` per channel). The functions
below reproduce torchvision's `Resize` / `CenterCrop` / `ToTensor` / `Normalize` on PIL
images, so the batch equals the one `mmrl eval` builds.

Copy this file into your application and keep `load` and `preprocess`; only `.pt2` loading
uses torch. The format is the file's suffix, never its content: an ONNX file is plain data, safe
from anyone; a `.pt2` file is opened with `torch.export.load`, which may unpickle parts of it and
so run any code its author put there -- it is opened only with `--trust-pt2` (`trust_pt2=True`).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image


def load(path: str, trust_pt2: bool = False):
    """-> (run, metadata): run(batch (N, 3, S, S) float32 ndarray) -> logits (N, C) float32 ndarray.

    ``*.pt2``: torch.export, only with ``trust_pt2`` (it may run the file's code); anything else: ONNX.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.lower().endswith(".pt2"):  # torch.export archive
        if not trust_pt2:
            raise ValueError(f"{path}: a .pt2 file may run code of its author when loaded (torch.export.load "
                             "unpickles); trust_pt2=True (--trust-pt2) only for a file you trust, or use an .onnx file")
        import torch

        extra = {"mmrl.json": ""}
        module = torch.export.load(path, extra_files=extra).module()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(batch)).numpy()
        return run, json.loads(extra["mmrl.json"])
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise ValueError(f"{path}: not an ONNX model ({type(e).__name__}); a file not named *.pt2 is read "
                         "only as ONNX") from e
    meta = json.loads(session.get_modelmeta().custom_metadata_map["mmrl"])

    def run_onnx(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {meta["input"]["name"]: batch})[0]
    return run_onnx, meta


def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """PIL image -> (3, crop, crop) float32, as metadata["preprocessing"] says."""
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    if spec["interpolation"] not in filters or spec.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise SystemExit(f"unsupported preprocessing {spec}")
    img = image.convert("RGB")
    w, h = img.size
    size = spec["resize"]
    if spec.get("resize_mode", "shortest") == "squash":   # the whole image, aspect ratio not kept
        new_w, new_h = size, size
    else:                                                # the shorter side to `size`
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), filters[spec["interpolation"]])
    c = spec["crop"]
    top, left = int(round((new_h - c) / 2.0)), int(round((new_w - c) / 2.0))
    img = img.crop((left, top, left + c, top + c))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(spec["mean"], dtype=np.float32)) / np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="file written by mmrl export (.onnx or .pt2)")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--trust-pt2", action="store_true",
                   help="allow a .pt2 file: loading it may run any code its author put in it")
    args = p.parse_args()
    try:
        run, meta = load(args.model, trust_pt2=args.trust_pt2)
    except (ValueError, OSError) as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    batch = np.stack([preprocess(Image.open(f), meta["preprocessing"]) for f in args.images])
    logits = run(batch)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    for f, pr in zip(args.images, prob):
        print(f"{f}:")
        for i in np.argsort(-pr)[: args.top_k]:
            print(f"  {100 * pr[i]:6.2f}%  {meta['classes'][i]}")


if __name__ == "__main__":
    main()
