"""The run directory: what a run writes (:class:`RunFiles`, its one writer), and how a finished run
is loaded back (:func:`load_run`).

::

    RUN_DIR/
      config.yaml             fully resolved RunConfig (commented; `mmrl train --config` accepts it)
      run.json                {"version", "method", "dataset", "protocol", "shots", "seed", "backbone",
                               "ablation" ({key: value} of the keys an ablation varies; only then),
                               "status": running|finished|failed|interrupted, "timings",
                               "trainable_parameters", "template" (the prompt template trained with), ...}
      split.json              the exact split used (split-file format: train = the few-shot subset)
      split-other.json        a user dataset's other half of the classes as it was then (base2novel only)
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

import contextlib
import dataclasses
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from mmrl import __version__, data
from mmrl.config import RunConfig, dump_config, load_config
from mmrl.engine import distributed as ddp_util
from mmrl.engine.checkpoint import (load_adapter, save_adapter, save_checkpoint, write_json_atomic,
                                    write_text_atomic)
from mmrl.engine.runcheck import adapter_settings, disagreements
from mmrl.engine.runtime import check_method_fits, load_backbone_checked, log_to_file, resolve_device
from mmrl.engine.sinks import Sinks
from mmrl.errors import CorruptFileError, clip
from mmrl.fileio import JSONFileError, dumps_json, file_sha256, loads_json, read_json, read_json_or_none, write_failed
from mmrl.models import build_method
from mmrl.vocab import (  # noqa: F401 (the file names are part of this module's interface)
    ADAPTER_FILE, CHECKPOINT_FILE, CONFIG_FILE, EVAL_DIR, LOG_FILE, METRICS_FILE, OTHER_SPLIT_FILE, RESULTS_FILE,
    RUN_FILE, SPLIT_FILE, eval_file_name,
)


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


def write_run_info(run_dir: str | Path, info: dict | RunInfo) -> None:
    write_json_atomic(info.to_dict() if isinstance(info, RunInfo) else info, Path(run_dir) / RUN_FILE)


def new_run_info(cfg: RunConfig, status: str = "running", **extra: Any) -> dict:
    info = {"version": __version__, "method": cfg.method.name, "dataset": cfg.data.dataset,
            "protocol": cfg.protocol, "shots": cfg.data.shots, "seed": cfg.seed, "backbone": cfg.backbone,
            "status": status, "timings": {}, "trainable_parameters": None}
    if cfg.vary:  # an ablation's grid point (mmrl reproduce --vary): the values it varies
        info["ablation"] = cfg.ablation()
    info.update(extra)
    return info


_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<unset>"})()  # a key run.json does not hold yet


@dataclasses.dataclass
class RunInfo:
    """run.json of a run being trained (or converted), as one typed object instead of a dict passed around.

    The fields come in the order run.json has always listed them (:meth:`to_dict` writes the
    set ones in this order, so the file's keys and their order stay what they were); a field
    still ``_UNSET`` is not written. ``timings`` and ``cost`` are the nested dicts as they were.
    """

    version: str = _UNSET
    method: str = _UNSET
    dataset: str = _UNSET
    protocol: str = _UNSET
    shots: int = _UNSET
    seed: int = _UNSET
    backbone: str = _UNSET
    status: str = _UNSET
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    trainable_parameters: int | None = _UNSET
    ablation: dict[str, Any] = _UNSET       # an ablation's grid point: the values it varies
    started: str = _UNSET
    attempts: int = _UNSET
    world_size: int = _UNSET                # under torchrun only
    precision_reason: str = _UNSET
    shots_realised: Any = _UNSET
    noise: dict[str, Any] = _UNSET          # data.corruption_record: label noise drawn or read
    imbalance: dict[str, Any] = _UNSET      # data.corruption_record: a long-tailed profile
    device: str = _UNSET
    precision: str = _UNSET
    template: str = _UNSET
    epochs_done: int = _UNSET
    adapter_sha256: str | None = _UNSET
    cost: dict[str, Any] = _UNSET
    finished: str = _UNSET
    interrupted: str = _UNSET
    stopped: str = _UNSET
    error: str = _UNSET
    failed: str = _UNSET
    source: dict[str, Any] = _UNSET         # mmrl convert-official: the checkpoint it was converted from

    @classmethod
    def start(cls, cfg: RunConfig, **extra: Any) -> "RunInfo":
        """A run's record as it starts (status "running")."""
        return cls(**new_run_info(cfg, status="running", **extra))

    def has(self, name: str) -> bool:
        return getattr(self, name) is not _UNSET

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name)
        return default if value is _UNSET else value

    def update(self, **values: Any) -> None:
        for k, v in values.items():
            if k not in _RUN_INFO_FIELDS:
                raise TypeError(f"run.json has no field {k!r}")
            setattr(self, k, v)

    def unset(self, name: str) -> None:
        setattr(self, name, _UNSET)

    def to_dict(self) -> dict[str, Any]:
        return {f: v for f in _RUN_INFO_FIELDS if (v := getattr(self, f)) is not _UNSET}


_RUN_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(RunInfo))


def write_config(run_dir: str | Path, cfg: RunConfig) -> None:
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
    check_method_fits(backbone, cfg.method, str(cfg_path))
    model = build_method(backbone, cfg.method)
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


# --------------------------------------------------------------------------- writing a run folder
def read_results(run_dir: Path) -> dict | None:
    """results.json of a finished run; None when absent or damaged (the results are then computed again)."""
    p = run_dir / RESULTS_FILE
    if not p.is_file():
        return None
    return read_json_or_none(p)  # damaged: the results are computed again


def truncate_metrics(path: Path, keep_before_epoch: int) -> None:
    """Keep the metrics of the epochs before ``keep_before_epoch`` (those a checkpoint covers)."""
    if not path.is_file():
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if loads_json(line, path)["epoch"] < keep_before_epoch:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a crash: everything after it is dropped too
    write_text_atomic("".join(kept), path)


class RunFiles:
    """The run directory's ONE writer. Under torchrun only rank 0 writes (``writes``); on the
    other ranks every method here does nothing, so the training code has no rank-0 branches."""

    def __init__(self, run_dir: Path, writes: bool):
        self.dir, self.writes = run_dir, writes
        self.checkpoint_path = run_dir / CHECKPOINT_FILE
        self.metrics_path = run_dir / METRICS_FILE
        self._metrics = None
        self.cfg: RunConfig | None = None
        self.sinks = None  # the --report-to writers (mmrl.engine.sinks), open from the first epoch to the end

    def start(self, cfg: RunConfig, dinfo: ddp_util.DistInfo) -> RunInfo:
        """Write config.yaml and a run.json saying "running" (attempts counted, training time
        of earlier attempts kept); returns the run info to keep up to date."""
        self.cfg = cfg
        if not self.writes:
            return RunInfo()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_config(self.dir, cfg)
        old = read_run_info(self.dir) or {}
        info = RunInfo.start(cfg, started=old.get("started") or now_iso(), attempts=int(old.get("attempts", 0)) + 1)
        if dinfo.enabled:
            info.world_size = dinfo.world_size
        info.timings = {k: v for k, v in (old.get("timings") or {}).items() if k == "train_s"}
        self.info(info)
        return info

    def log(self) -> contextlib.AbstractContextManager:
        """train.log receives the run's log lines while the context is open."""
        return log_to_file(self.dir / LOG_FILE) if self.writes else contextlib.nullcontext()

    def info(self, info: RunInfo) -> None:
        if self.writes:
            write_run_info(self.dir, info)
        if info.get("status") in ("failed", "interrupted"):  # the run ends here: flush what the writers hold
            self.close_sinks()

    def split(self, splits, name: str = SPLIT_FILE) -> None:
        """split.json: the lists the run trains and is tested on (or, by ``name``, another record)."""
        if self.writes:
            data.write_split_file(splits, self.dir / name)

    def metrics(self, start_epoch: int | None, step: int = 0) -> contextlib.AbstractContextManager:
        """metrics.jsonl open for appending; a resumed run (``start_epoch``) keeps the lines of the
        epochs its checkpoint covers (``step`` optimiser steps), a fresh one (None) starts the file
        over. The --report-to writers open here and stay open until :meth:`finish`."""
        if not self.writes:
            return contextlib.nullcontext()
        if self.cfg is not None and self.cfg.logging.report_to and self.sinks is None:
            self.sinks = Sinks(self.cfg.logging.report_to, self.dir, self.cfg, None if start_epoch is None else step)
        if start_epoch is not None:
            truncate_metrics(self.metrics_path, start_epoch)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()

        @contextlib.contextmanager
        def opened():
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                self._metrics = f
                try:
                    yield
                finally:
                    self._metrics = None
        return opened()

    def metric(self, row: dict[str, Any]) -> None:
        if self._metrics is not None:
            try:
                self._metrics.write(dumps_json(row) + "\n")
                self._metrics.flush()
            except OSError as e:  # a full disk: say which file (the OS's message names none)
                raise write_failed(self.metrics_path, e) from None
            if self.sinks is not None:
                self.sinks.step(row)

    def evaluated(self, results: dict[str, Any], step: int) -> None:
        """The run's evaluation (and cost block) to the --report-to writers."""
        if self.sinks is not None:
            self.sinks.evaluated(results, step)

    def close_sinks(self) -> None:
        if self.sinks is not None:
            self.sinks.close()
            self.sinks = None

    def checkpoint(self, **state) -> None:
        if self.writes:
            save_checkpoint(self.checkpoint_path, **state)

    def adapter(self, model, cfg: RunConfig) -> str | None:
        """Write adapter.safetensors; its sha256 (None on the ranks that do not write)."""
        if self.writes:
            return save_adapter(model.adapter_state_dict(), self.dir / ADAPTER_FILE,
                         metadata={"method": model.settings(), "backbone": cfg.backbone,
                                   "dataset": cfg.data.dataset, "protocol": cfg.protocol, "shots": cfg.data.shots,
                                   "seed": cfg.seed})
        return None

    def results(self, results: dict[str, Any]) -> None:
        if self.writes:
            write_json_atomic(results, self.dir / RESULTS_FILE)

    def finish(self, info: RunInfo) -> None:
        """run.json says "finished"; the checkpoint goes (adapter.safetensors holds the final weights)."""
        self.info(info)
        self.close_sinks()
        if self.writes and self.checkpoint_path.is_file():
            self.checkpoint_path.unlink()
