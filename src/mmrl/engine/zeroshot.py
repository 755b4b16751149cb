"""The zero-shot CLIP baseline: a frozen backbone with the dataset's hand-written template, evaluated
and recorded like a run (``OUTPUT/eval/*.json`` and a ``run.json`` of method ``zeroshot``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmrl import __version__
from mmrl.config import canonical_dataset, dataset_slug
from mmrl.engine import distributed as ddp_util
from mmrl.engine.checkpoint import write_json_atomic
from mmrl.engine.decoupled import eval_splits
from mmrl.engine.evaluator import evaluate_model, writable_outputs
from mmrl.engine.rundir import EVAL_DIR, eval_result_path, read_run_info, write_run_info
from mmrl.engine.runtime import load_backbone_checked, resolve_device
from mmrl.models import ZeroShotCLIP

LOG = logging.getLogger("mmrl")


def zeroshot(dataset: str, root: str | Path | None, subsample: str = "all", *, backbone: str = "ViT-B-16",
             output: str | Path | None = None, shots: int = 16, seed: int = 1, split_file: str | None = None,
             template: str | None = None, batch_size: int = 250, precision: str = "fp32",
             device: str | None = None, num_workers: int | None = 0, predictions: str | Path | None = None,
             cache_dir: str | None = None, progress: bool | None = None, skip_bad: bool = False) -> dict[str, Any]:
    """CLIP zero-shot baseline with the dataset's single hand-written template.

    Writes ``OUTPUT/eval/<Dataset>-<subsample>.json`` (same format as :func:`evaluate`) and
    ``OUTPUT/run.json`` (method ``zeroshot``); OUTPUT defaults to
    ``runs/zeroshot/<backbone>``. ``shots``/``seed`` only decide which classes are base and
    novel (the labels present in the few-shot train split). OUTPUT is locked like a run
    directory while written and proven writable before the work. ``num_workers`` None =
    :func:`mmrl.data.default_num_workers`.
    """
    dataset = canonical_dataset(dataset)
    out_dir = Path(output) if output is not None else Path("runs") / "zeroshot" / dataset_slug(backbone)
    with writable_outputs(out_dir, out_dir / EVAL_DIR, predictions, "mmrl zeroshot", ddp_util.DistInfo(),
                           hint="write elsewhere with --output DIR"):
        return _zeroshot(dataset, root, subsample, out_dir, backbone=backbone, shots=shots, seed=seed,
                         split_file=split_file, template=template, batch_size=batch_size, precision=precision,
                         device=device, num_workers=num_workers, predictions=predictions, cache_dir=cache_dir,
                         progress=progress, skip_bad=skip_bad)


def _zeroshot(dataset: str, root, subsample: str, out_dir: Path, *, backbone: str, shots: int, seed: int,
              split_file, template, batch_size: int, precision: str, device, num_workers, predictions, cache_dir,
              progress, skip_bad: bool) -> dict[str, Any]:
    splits = eval_splits(None, dataset, root, subsample, shots=shots, seed=seed, split_file=split_file,
                         cache_dir=cache_dir, template=template)
    bb = load_backbone_checked(backbone, device=resolve_device(device or "auto"))
    model = ZeroShotCLIP(bb)
    res = evaluate_model(model, None, dataset, subsample, "class", splits=splits, batch_size=batch_size,
                          precision=precision, num_workers=num_workers, skip_bad=skip_bad, predictions=predictions,
                          progress=progress)
    res.update({"method": "zeroshot", "backbone": backbone, "shots": shots, "seed": seed,
                "version": __version__})
    path = eval_result_path(out_dir, splits.name, subsample)
    write_json_atomic(res, path)
    res["path"] = str(path)
    if read_run_info(out_dir) is None:
        write_run_info(out_dir, {"version": __version__, "method": "zeroshot", "backbone": backbone,
                                 "status": "finished", "protocol": None, "dataset": None, "shots": None,
                                 "seed": None, "timings": {}, "trainable_parameters": 0})
    LOG.info("zero-shot %s %s: accuracy %.2f%% (n=%d)", splits.name, subsample, res["accuracy"], res["n"])
    return res
