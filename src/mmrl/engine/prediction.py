"""`mmrl predict`: class probabilities of image files under a run's model, with the classes and logits
decoupled inference chooses (:mod:`mmrl.engine.decoupled`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmrl import data
from mmrl.config import RunConfig
from mmrl.engine import precision as amp
from mmrl.engine.decoupled import check_class_list, resolve_class_set
from mmrl.models.towers import image_resizing, model_device
from mmrl.engine.rundir import load_run


def predict(run_dir_or_model: str | Path | nn.Module, images: Sequence[str | Path], *,
            classes: Sequence[str] | None = None, dataset: str | None = None, root: str | Path | None = None,
            subsample: str = "all", top_k: int = 5, logits: str = "auto", cfg: RunConfig | None = None,
            template: str | None = None, device: str | None = None, skip_bad: bool = False,
            precision: str | None = None) -> list[dict[str, Any]]:
    """Class probabilities (softmax of the chosen logits) for image files.

    Classes come from ``classes`` (at least 2 distinct names), from ``dataset`` (its
    ``subsample`` classes), or, with neither, from the run itself (see :func:`resolve_class_set`).
    With ``logits='auto'``: fused when the classes are the run's training classes, else class
    (MMRL++ uses a dataset's target beta as `mmrl eval` does). Returns one ``{"image",
    "prediction", "top": [{"class", "probability"}], "logits"}`` per image, in order; an image
    that cannot be read raises BadImageError, or with ``skip_bad`` gives ``{"image", "error"}``
    and the others are still predicted. ``precision``: auto / fp32 / bf16 / fp16, default the run's
    ``eval.precision`` (auto for a model without a config: bf16 on a CPU with native bf16).
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected a number >= 1")
    if classes is not None:
        check_class_list(classes)
    run_dir = None
    if isinstance(run_dir_or_model, (str, Path)):
        run_dir = Path(run_dir_or_model)
        model, cfg = load_run(run_dir, device=device)
    else:
        model = run_dir_or_model
    device_ = model_device(model)
    requested = precision or (cfg.eval.precision if cfg is not None else "auto")
    if run_dir is not None:  # loaded here: the frozen weights in bf16 once (CPU)
        amp.cast_frozen(model, amp.eval_precision(requested, device_, amp.tower_width(model))[0])
    precision = amp.inference_precision(model, requested, device_)
    cs = resolve_class_set(model, cfg, run_dir, classes=classes, dataset=dataset, root=root, subsample=subsample,
                           logits=logits, template=template)
    classnames, kind = cs.classnames, cs.kind
    transform = data.build_transform(False, **image_resizing(model.clip))
    model.eval()
    out = []
    with torch.no_grad(), model.using(cs.settings):
        model.set_classes(classnames, cs.template)
        text = amp.encode_text(model, device=device_, precision=precision)
        for path in images:
            try:
                img = data.load_image(str(path))
            except data.BadImageError as e:
                if not skip_bad:
                    raise
                out.append({"image": str(path), "error": str(e)})
                continue
            x = transform(img).unsqueeze(0).to(device_)
            lg = amp.logits(model, x, text, device=device_, precision=precision)
            chosen = lg.of(kind)[0].float().cpu()
            prob = chosen.softmax(-1)
            k = min(top_k, len(classnames))
            p, i = prob.topk(k)
            out.append({"image": str(path), "prediction": classnames[int(i[0])], "logits": kind,
                        "top": [{"class": classnames[int(j)], "probability": float(q)} for q, j in zip(p, i)]})
    return out
