"""Training and evaluation engine: plain functions that the CLI wraps.

``train(cfg)``, ``evaluate(run_dir_or_model, EvalRequest(dataset, ...))``, ``zeroshot(...)``,
``predict(...)``, ``load_run(run_dir)``, ``convert_official(...)``; the config side is
``mmrl.config.resolve_config``. Names are imported lazily so that light submodules
(``mmrl.sweep``) do not pull in torch; reports are ``mmrl.report``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunConfig": "mmrl.config", "resolve_config": "mmrl.config",
    "train": "mmrl.engine.trainer", "NonFiniteLossError": "mmrl.engine.trainer",
    "evaluate": "mmrl.engine.evaluator", "EvalRequest": "mmrl.engine.evaluator",
    "zeroshot": "mmrl.engine.baseline", "predict": "mmrl.engine.prediction",
    "load_run": "mmrl.engine.rundir", "convert_official": "mmrl.engine.convert",
    "lr_at_epoch": "mmrl.engine.schedule", "epoch_batches": "mmrl.engine.schedule",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmrl.engine' has no attribute {name!r}")
