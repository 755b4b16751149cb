"""The zero-shot CLIP baseline: a frozen backbone with the dataset's hand-written template, evaluated
and recorded like a run (``OUTPUT/eval/*.json`` and a ``run.json`` of method ``zeroshot``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmrl import __version__
from mmrl.config import RunConfig, canonical_dataset, dataset_slug, with_overrides
from mmrl.engine import distributed as ddp_util
from mmrl.engine.checkpoint import write_json_atomic
from mmrl.engine.decoupled import eval_splits
from mmrl.engine.evaluator import EvalRequest, evaluate_model, writable_outputs
from mmrl.engine.rundir import EVAL_DIR, RunInfo, eval_result_path, read_run_info, write_run_info
from mmrl.engine.runtime import load_backbone_checked, resolve_device
from mmrl.models import ZeroShotCLIP

LOG = logging.getLogger("mmrl")


# The settings a zero-shot evaluation reads from a config (the others do not apply: there is no training).
ZEROSHOT_SETTINGS = ("data.shots", "data.seed", "seed", "data.cache_dir", "data.num_workers", "data.skip_bad_images",
                     "eval.batch_size", "eval.precision", "device")


def zeroshot_config(request: EvalRequest, backbone: str = "ViT-B-16", settings: dict[str, Any] | None = None,
                    output: str | Path | None = None) -> RunConfig:
    """The config of a zero-shot evaluation: the keys' defaults (config.py) with ``backbone``, the
    request's dataset, root and template, and ``settings`` (dotted keys of :data:`ZEROSHOT_SETTINGS`;
    None values are ignored), checked like any config. ``data.shots`` / the seed only decide which
    classes are base and novel (the labels present in the few-shot train split)."""
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = sorted(set(settings) - set(ZEROSHOT_SETTINGS))
    if unknown:
        raise ValueError(f"zero-shot settings {unknown}: expected keys among {', '.join(ZEROSHOT_SETTINGS)}")
    cfg = RunConfig()
    base = {"backbone": backbone, "data.dataset": canonical_dataset(request.dataset), "data.root": request.root,
            "data.template": request.template,
            "output": str(output) if output is not None else str(Path("runs") / "zeroshot" / dataset_slug(backbone))}
    return with_overrides(cfg, flags={**base, **settings})


def zeroshot(request: EvalRequest, *, backbone: str = "ViT-B-16", output: str | Path | None = None,
             settings: dict[str, Any] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """CLIP zero-shot baseline with the dataset's single hand-written template (or the request's).

    Writes ``OUTPUT/eval/<Dataset>-<subsample>.json`` (same format as :func:`evaluate`) and
    ``OUTPUT/run.json`` (method ``zeroshot``); OUTPUT defaults to ``runs/zeroshot/<backbone>``.
    How it runs (batch, precision, workers, device, the shots and seed that decide base and novel
    classes) is a config (:func:`zeroshot_config`). OUTPUT is locked like a run directory while
    written and proven writable before the work.
    """
    cfg = zeroshot_config(request, backbone, settings, output)
    out_dir = Path(cfg.output)
    with writable_outputs(out_dir, out_dir / EVAL_DIR, request.predictions, "mmrl zeroshot", ddp_util.DistInfo(),
                          hint="write elsewhere with --output DIR"):
        return _zeroshot(cfg, request, out_dir, progress)


def _zeroshot(cfg: RunConfig, request: EvalRequest, out_dir: Path, progress: bool | None) -> dict[str, Any]:
    dataset, subsample = cfg.data.dataset, request.subsample
    splits = eval_splits(None, dataset, cfg.data.root, subsample, shots=cfg.data.shots, seed=cfg.data_seed,
                         split_file=request.split_file, cache_dir=cfg.data.cache_dir, template=cfg.data.template)
    bb = load_backbone_checked(cfg.backbone, device=resolve_device(cfg.device))
    model = ZeroShotCLIP(bb)
    res = evaluate_model(model, None, dataset, subsample, "class", splits=splits, batch_size=cfg.eval.batch_size,
                         precision=cfg.eval.precision, num_workers=cfg.data.num_workers,
                         skip_bad=cfg.data.skip_bad_images, predictions=request.predictions, progress=progress)
    res.update({"method": "zeroshot", "backbone": cfg.backbone, "shots": cfg.data.shots, "seed": cfg.data_seed,
                "version": __version__})
    path = eval_result_path(out_dir, splits.name, subsample)
    write_json_atomic(res, path)
    res["path"] = str(path)
    if read_run_info(out_dir) is None:
        write_run_info(out_dir, RunInfo(version=__version__, method="zeroshot", dataset=None, protocol=None,
                                        shots=None, seed=None, backbone=cfg.backbone, status="finished",
                                        trainable_parameters=0))
    LOG.info("zero-shot %s %s: accuracy %.2f%% (n=%d)", splits.name, subsample, res["accuracy"], res["n"])
    return res
