"""Turn an authors' released checkpoint into a run directory that ``mmrl eval`` evaluates."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

from mmrl.config import Override, RunConfig, resolve_config
from mmrl.engine import rundir as rd
from mmrl.engine.checkpoint import save_adapter
from mmrl.engine.lock import RunDirLock
from mmrl.engine.runtime import check_method_fits, load_backbone_checked
from mmrl.models import build_method
from mmrl.models.official import load_official_adapter

LOG = logging.getLogger("mmrl")


def convert_official(checkpoint: str | Path, method: str, backbone: str, dataset: str, protocol: str, *,
                     shots: int = 16, seed: int = 1, output: str | Path | None = None,
                     config_file: str | Path | None = None, overrides: Iterable[Override] = ()) -> Path:
    """Write ``RUN_DIR`` (config.yaml, adapter.safetensors, run.json with status finished)
    from an official Dassl checkpoint (``model.pth.tar-N``), read without unpickling code.

    The config is resolved as for ``mmrl train`` (preset + per-dataset values, e.g. d_r 2048
    for MMRL on EuroSAT), so the adapter's shapes are checked against the model those
    settings build on ``backbone``. Returns the run directory, written under its writer lock.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {checkpoint}")
    cfg = resolve_config(method, protocol, dataset, config_file, overrides,
                         flags={"data.shots": shots, "seed": seed, "backbone": backbone,
                                "output": str(output) if output is not None else None})
    run_dir = cfg.run_dir()
    cfg = dataclasses.replace(cfg, output=str(run_dir))
    with RunDirLock.acquire(run_dir, "mmrl convert-official", hint="choose another --output"):
        return _convert(checkpoint, cfg, run_dir)


def _convert(checkpoint: Path, cfg: RunConfig, run_dir: Path) -> Path:
    """:func:`convert_official` once the run directory's writer lock is held."""
    # shapes only: an open_clip name is built without downloading weights
    bb = load_backbone_checked(cfg.backbone, pretrained=False)
    check_method_fits(bb, cfg.method)
    model = build_method(bb, cfg.method)
    tensors = load_official_adapter(checkpoint, cfg.method.name, model.adapter_shapes())
    model.load_adapter_state_dict(tensors)  # casts to fp32, checks again
    run_dir.mkdir(parents=True, exist_ok=True)
    rd.write_config(run_dir, cfg)
    sha = save_adapter(model.adapter_state_dict(), run_dir / rd.ADAPTER_FILE,
                 metadata={"method": model.settings(), "backbone": cfg.backbone, "dataset": cfg.data.dataset,
                           "protocol": cfg.protocol, "shots": cfg.data.shots, "seed": cfg.seed,
                           "source": str(checkpoint.absolute())})
    now = rd.now_iso()
    info = rd.RunInfo(**rd.new_run_info(cfg, status="finished", started=now, finished=now,
                                        source={"official_checkpoint": str(checkpoint.absolute())}))
    info.update(trainable_parameters=model.num_trainable_parameters(), adapter_sha256=sha)
    rd.write_run_info(run_dir, info)
    LOG.info("converted %s -> %s (%s, %d adapter tensors)", checkpoint, run_dir, cfg.method.name, len(tensors))
    return run_dir
