"""Running a model over a test list: the chosen logits of every image (sharded over torchrun ranks by
whole batches, so the result equals one process's bit for bit), their accuracy summary and the
predictions file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from mmrl import data
from mmrl.engine import distributed as ddp_util
from mmrl.engine import precision as amp
from mmrl.engine.runtime import Progress, use_tty_progress
from mmrl.fileio import dumps_json, open_atomic
from mmrl.models.towers import image_resizing, model_device


@torch.no_grad()
def run_inference(model: nn.Module, items: Sequence, classnames: list[str], template: str, kind: str, *,
                  batch_size: int = 250, precision: str = "fp32", num_workers: int | None = 0,
                  skip_bad: bool = False,
                  progress: bool | None = None, desc: str = "eval", dist_info: ddp_util.DistInfo | None = None,
                  compile: bool | None = False) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Logits of ``kind`` for every item: ``(logits (N, C) fp32 CPU, labels (N,), item indices)``.

    Items dropped as unreadable (``skip_bad``) are absent from the returned indices.
    ``num_workers`` None = the machine's default (:func:`mmrl.data.default_num_workers`).
    With ``dist_info`` of several ranks (every rank must call this), each rank computes a
    contiguous share of the evaluation batches (the same batches as one process) and the
    results are gathered on every rank in item order. ``compile``: the image tower through
    ``torch.compile`` on a CPU (:func:`mmrl.engine.precision.compiled_logits`); None = at bf16 when there
    are at least :data:`mmrl.engine.precision.COMPILE_MIN_IMAGES` items.
    """
    info = dist_info or ddp_util.DistInfo()

    device = model_device(model)
    precision = amp.inference_precision(model, precision, device)  # auto: bf16 on a CPU with native bf16
    was_training = model.training
    model.eval()
    try:
        model.set_classes(classnames, template)
        text = amp.encode_text(model, device=device, precision=precision)
        ds = data.ImageDataset(items, data.build_transform(False, **image_resizing(model.clip)), seed=0,
                               skip_bad=skip_bad)
        kept = {id(d): i for i, d in enumerate(items)}
        index_map = [kept[id(d)] for d in ds.items]
        if info.enabled:
            starts = range(0, len(ds), batch_size)
            mine = [list(range(starts[b], min(starts[b] + batch_size, len(ds))))
                    for b in ddp_util.shard_indices(len(starts), info)]
            loader = DataLoader(ds, batch_sampler=mine, **data.worker_options(num_workers),
                                pin_memory=device.type == "cuda")
        else:
            loader = DataLoader(ds, batch_size=batch_size, shuffle=False, **data.worker_options(num_workers),
                                pin_memory=device.type == "cuda")
        if amp.use_compile(compile, device, len(ds), precision):
            run = amp.compiled_logits(model, text, device=device, precision=precision)
        else:
            def run(images: torch.Tensor):
                return amp.logits(model, images, text, device=device, precision=precision)
        out_logits, out_labels, out_idx = [], [], []
        it = Progress(loader, total=len(loader), desc=desc, tty=use_tty_progress(progress) and info.is_main)
        for images, labels, idx in it:
            images = images.to(device, non_blocking=True)
            lg = run(images)
            chosen = lg.of(kind)
            out_logits.append(chosen.float().cpu())
            out_labels.append(labels)
            out_idx.extend(index_map[i] for i in idx.tolist())
    finally:
        model.train(was_training)
        if hasattr(model, "clip"):
            model.clip.eval()
    if out_logits:
        result = torch.cat(out_logits), torch.cat(out_labels), out_idx
    else:
        result = torch.zeros(0, len(classnames)), torch.zeros(0, dtype=torch.long), []
    if info.enabled:  # shards are contiguous runs of batches in rank order: concatenation = item order
        parts = ddp_util.all_gather_objects(result, info)
        result = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                  [i for p in parts for i in p[2]])
    return result


def summarize(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict[str, Any]:
    """Accuracy (percent), macro accuracy over the classes present, per-class accuracy."""
    pred = logits.argmax(dim=-1)
    correct = (pred == labels)
    per_class = []
    for y, name in enumerate(classnames):
        m = labels == y
        n = int(m.sum())
        per_class.append({"label": y, "classname": name, "n": n,
                          "accuracy": 100.0 * float(correct[m].float().mean()) if n else None})
    present = [c["accuracy"] for c in per_class if c["accuracy"] is not None]
    n = int(labels.numel())
    return {"accuracy": 100.0 * float(correct.float().mean()) if n else 0.0,
            "macro_accuracy": sum(present) / len(present) if present else 0.0,
            "correct": int(correct.sum()), "n": n, "n_classes": len(classnames), "per_class": per_class}


def write_predictions(path: str | Path, items: Sequence, idx: list[int], logits: torch.Tensor,
                      labels: torch.Tensor, classnames: list[str], kind: str) -> None:
    """One JSON object per image: image (relpath), label, classname, prediction,
    predicted_classname, correct, logits_kind, logits (the decision's logits)."""
    pred = logits.argmax(dim=-1).tolist()
    with open_atomic(path, "w") as f:  # a full disk: WriteFailedError naming the file, no .tmp left
        for row, i in enumerate(idx):
            d = items[i]
            y = int(labels[row])
            f.write(dumps_json({"image": d.relpath, "label": y, "classname": classnames[y],
                                "prediction": pred[row], "predicted_classname": classnames[pred[row]],
                                "correct": pred[row] == y, "logits_kind": kind,
                                "logits": logits[row].tolist()}) + "\n")
