"""The run directory: what a run writes, and how a finished run is loaded back.

::

    RUN_DIR/
      config.yaml             fully resolved RunConfig (commented; `mmrl train --config` accepts it)
      run.json                {"version", "method", "dataset", "protocol", "shots", "seed", "backbone",
                               "ablation" ({key: value} of the keys an ablation varies; only then),
                               "status": running|finished|failed|interrupted, "timings",
                               "trainable_parameters", "template" (the prompt template trained with), ...}
      split.json              the exact split used (split-file format: train = the few-shot subset)
      train.log               human-readable log (logger "mmrl")
      metrics.jsonl           one JSON object per optimiser step
      checkpoint.safetensors  training state after the last completed epoch (removed when finished)
      adapter.safetensors     final adapter weights (trainable tensors only)
      results.json            the protocol's results (e.g. base/novel/hm)
      eval/<Dataset>-<subsample>.json           one evaluation (key "accuracy", percent)
      eval/<Dataset>-<subsample>-<kind>.json    one with logits chosen explicitly (mmrl eval --logits)
      eval/<Dataset>-<subsample>.predictions.jsonl  optional per-image predictions
      .lock                   while a command writes here: its writer lock (mmrl.engine.lock.RunDirLock)
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import torch

from mmrl.config import ConfigError, RunConfig, dump_config, load_config
from mmrl.engine.checkpoint import file_sha256, load_adapter, write_json_atomic, write_text_atomic
from mmrl.engine.runcheck import adapter_settings, disagreements
from mmrl.vocab import (  # noqa: F401 (the file names are part of this module's interface)
    ADAPTER_FILE, CHECKPOINT_FILE, CONFIG_FILE, EVAL_DIR, LOG_FILE, METRICS_FILE, RESULTS_FILE, RUN_FILE, SPLIT_FILE,
    eval_file_name,
)
from mmrl.errors import CorruptFileError, clip
from mmrl.fileio import JSONFileError, read_json


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def eval_result_path(run_dir: str | Path, dataset: str, subsample: str) -> Path:
    """``RUN_DIR/eval/<Dataset>-<subsample>.json`` (dataset = canonical name, file-name safe)."""
    return Path(run_dir) / EVAL_DIR / eval_file_name(dataset, subsample)


def read_run_info(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        return None
    try:
        info = read_json(p)
    except JSONFileError as e:
        raise CorruptFileError(f"{e}; the run's status file is damaged: delete it to let "
                               "`mmrl train` treat the folder as a run to resume or replace") from None
    if not isinstance(info, dict):
        raise CorruptFileError(f"{p}: expected a JSON object, found {type(info).__name__}")
    return info


def write_run_info(run_dir: str | Path, info: dict) -> None:
    write_json_atomic(info, Path(run_dir) / RUN_FILE)


def new_run_info(cfg: RunConfig, status: str = "running", **extra: Any) -> dict:
    from mmrl import __version__

    info = {"version": __version__, "method": cfg.method.name, "dataset": cfg.data.dataset,
            "protocol": cfg.protocol, "shots": cfg.data.shots, "seed": cfg.seed, "backbone": cfg.backbone,
            "status": status, "timings": {}, "trainable_parameters": None}
    if cfg.vary:  # an ablation's grid point (mmrl reproduce --vary): the values it varies
        info["ablation"] = cfg.ablation()
    info.update(extra)
    return info


def write_config(run_dir: str | Path, cfg: RunConfig) -> None:
    from mmrl import __version__

    header = (f"Resolved configuration of this run (mmrl {__version__}).\n"
              "Rerun: mmrl train --resume RUN_DIR, or pass this file to --config.")
    write_text_atomic(dump_config(cfg, header), Path(run_dir) / CONFIG_FILE)


def training_classnames(run_dir: str | Path) -> list[str] | None:
    """Class names of the run's training split (from split.json), or None."""
    p = Path(run_dir) / SPLIT_FILE
    if not p.is_file():
        return None
    split = read_json(p)  # a damaged file: JSONFileError naming it
    train = split.get("train", []) if isinstance(split, dict) else []
    try:
        names: dict[int, str] = {int(y): c for _, y, c in train}
    except (TypeError, ValueError):
        raise CorruptFileError(f"{p}: expected the split format (\"train\": [[path, label, classname], ...])") from None
    return [names[y] for y in sorted(names)] if names else None


def training_template(run_dir: str | Path) -> str | None:
    """The prompt template the run was trained with (run.json "template"), or None for runs
    that did not record it (written by mmrl train since this field exists)."""
    t = (read_run_info(run_dir) or {}).get("template")
    return t if isinstance(t, str) else None


def check_run_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/config.yaml``; FileNotFoundError saying what a run directory is when it is absent."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        what = "does not exist" if not run_dir.exists() else f"is not a run directory (no {CONFIG_FILE})"
        raise FileNotFoundError(f"{run_dir} {what}; give the folder of a run trained with `mmrl train` "
                                "or converted with `mmrl convert-official`")
    return cfg_path


def load_run(run_dir: str | Path, device: str | torch.device | None = None):
    """Load a finished (or converted) run: ``(model, cfg)``.

    The backbone named in the run's config is loaded, the method built from
    ``cfg.method`` and the weights of ``adapter.safetensors`` loaded into it. The model is
    in eval mode on ``device`` (None = the auto choice: CUDA when available).
    """
    from mmrl.engine.runtime import load_backbone_checked, resolve_device
    from mmrl.models import MMRL

    run_dir = Path(run_dir)
    cfg_path = check_run_dir(run_dir)
    cfg = load_config(cfg_path)
    adapter_path = run_dir / ADAPTER_FILE
    info = read_run_info(run_dir) or {}
    if not adapter_path.is_file():
        raise FileNotFoundError(no_adapter_message(run_dir, info))
    check_consistent(run_dir, cfg, info)
    dev = torch.device(device) if isinstance(device, torch.device) else resolve_device(device or "auto")
    backbone = load_backbone_checked(cfg.backbone, device=dev)
    try:
        cfg.method.validate(backbone.vision_layers, backbone.text_layers)
    except ValueError as e:
        raise ConfigError(f"{cfg_path}: {e}") from e
    model = MMRL(backbone, cfg.method)
    try:
        tensors, _ = load_adapter(adapter_path)
        model.load_adapter_state_dict(tensors)
    except CorruptFileError as e:
        raise CorruptFileError(f"{e}; {adapter_recovery(run_dir)}") from e
    except ValueError as e:  # names, shapes: the file belongs to another run, or the config was edited
        raise CorruptFileError(f"{adapter_path} does not fit the run's {CONFIG_FILE} ({e}); "
                               f"{adapter_recovery(run_dir)}") from e
    # after the adapter's own checks, which name a damaged file more precisely
    check_adapter_hash(run_dir, info)
    model.eval()
    return model, cfg


def check_consistent(run_dir: Path, cfg: RunConfig, info: dict) -> None:
    """Refuse a run folder whose config.yaml, run.json and adapter file disagree (method, backbone,
    settings, identity: :func:`mmrl.engine.runcheck.disagreements`), naming what differs."""
    _refuse_inconsistent(run_dir, disagreements(cfg.to_dict(), info, adapter_settings(run_dir / ADAPTER_FILE)))


def check_adapter_hash(run_dir: Path, info: dict) -> None:
    """Refuse a run folder whose adapter file is not the one run.json recorded (its sha256)."""
    recorded = info.get("adapter_sha256")
    if isinstance(recorded, str) and file_sha256(run_dir / ADAPTER_FILE) != recorded:
        _refuse_inconsistent(run_dir, [f"{ADAPTER_FILE} is not the file run.json recorded (its sha256 differs): it "
                                       "was replaced or changed after the run wrote it"])


def _refuse_inconsistent(run_dir: Path, problems: list[str]) -> None:
    if problems:
        raise CorruptFileError(f"{run_dir}: inconsistent run folder ({'; '.join(problems)}): its files do not come "
                               f"from one run; {adapter_recovery(run_dir)}")


def no_adapter_message(run_dir: str | Path, info: dict) -> str:
    """Why a run folder has no adapter yet, and the way on: resume only where resuming helps (an
    unfinished run); a failed run first needs its cause fixed, which the message names."""
    run_dir = Path(run_dir)
    status = info.get("status")
    resume = f"mmrl train --resume {shlex.quote(str(run_dir.absolute()))}"
    head = f"{run_dir}: no {ADAPTER_FILE}"
    if status == "failed":
        return (f"{head}: its training failed ({clip(str(info.get('error') or 'no reason recorded'), 300)}); "
                f"resuming repeats that until its cause is fixed: fix it first, then run `{resume}`")
    if status in ("running", "interrupted"):
        return f"{head}: its training has not finished (run status {status}); resume it with `{resume}`"
    if status == "finished" and info.get("source"):
        return f"{head}, although run.json says the run is complete: the file was removed; {adapter_recovery(run_dir)}"
    if status == "finished":
        return (f"{head}, although run.json says the training finished: the file was removed; train it again with "
                f"`{resume}` (from the last checkpoint when one is left, else from the start with the same config)")
    return f"{head} and no run status: its training has not started; start it with `{resume}`"


def adapter_recovery(run_dir: str | Path) -> str:
    """How to go on when a run's adapter file cannot be used."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir) or {}
    if info.get("source"):
        return "convert the official checkpoint again with `mmrl convert-official` into this folder or another one"
    return (f"train the run again: delete {run_dir / ADAPTER_FILE} and run "
            f"`mmrl train --resume {shlex.quote(str(run_dir.absolute()))}` "
            "(it resumes from the last checkpoint when one is left, else starts over with the same config)")
