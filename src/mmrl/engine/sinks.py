"""Metric writers besides metrics.jsonl: ``--report-to tensorboard,wandb,csv`` (``logging.report_to``).

Each writer gets the same three things :class:`mmrl.engine.rundir.RunFiles` sees:

* every optimiser step's row of metrics.jsonl (lr, every loss term, accuracy);
* each end-of-training evaluation (accuracy and macro accuracy; HM for base-to-novel);
* the run's cost block (:mod:`mmrl.engine.cost`) at the end.

TensorBoard (``RUN_DIR/tensorboard``) uses the tags Dassl's trainers write -- ``train/loss``,
``train/acc``, ``train/lr`` per step and ``test/accuracy`` per evaluation -- so that mmrl and
Dassl runs share one dashboard; the loss terms go under ``train/<term>``. W&B gets the same
keys, the run's config, a name and tags. CSV writes ``RUN_DIR/csv/{metrics,evaluations,cost}.csv``.

The packages are optional extras (``pip install 'mmrl[tensorboard]'`` / ``'mmrl[wandb]'``),
imported only when asked for; :func:`check_available` says before any work which one is
missing. Under torchrun only rank 0 writes (RunFiles opens no writer on the other ranks).

Resuming continues the same runs without duplicate steps: TensorBoard's writer is opened with
``purge_step`` = the first step the resumed attempt computes (TensorBoard then drops the
events an interrupted attempt wrote from that step on), and the W&B run id is kept in
``RUN_DIR/wandb_run.json`` and resumed; W&B cannot take back logged steps, so steps up to
the last one it received are not sent again (training is deterministic: they are the same).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from mmrl.errors import UserError
from mmrl.fileio import write_json_atomic

LOG = logging.getLogger("mmrl")

TB_DIR = "tensorboard"
CSV_DIR = "csv"
WANDB_STATE = "wandb_run.json"
# a metrics.jsonl key -> the TensorBoard / W&B tag (Dassl's where it has one)
STEP_TAGS = {"loss": "train/loss", "accuracy": "train/acc", "lr": "train/lr", "ce_class": "train/ce_class",
             "ce_rep": "train/ce_rep", "reg_image": "train/reg_image", "reg_text": "train/reg_text"}
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class MissingPackageError(UserError, ImportError):
    """A --report-to writer's package is not installed."""


def check_available(names: tuple[str, ...] | list[str]) -> None:
    """Raise MissingPackageError (one line naming the pip install) for a writer whose package is
    not installed; nothing is imported."""
    for name in names:
        if name in _PACKAGES:
            module, pip_name = _PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise MissingPackageError(f"--report-to {name} needs the {pip_name} package: pip install {pip_name} "
                                          f"(or pip install 'mmrl[{name}]')")


def flat_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested dict as ``{"a/b": value}`` (booleans and text left out)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_numbers(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def evaluation_scalars(results: dict[str, Any]) -> dict[str, float]:
    """What one run's evaluation reports: ``test/accuracy`` (Dassl's tag; base-to-novel: the HM),
    ``test/macro_accuracy`` and per evaluation ``test/<Dataset>-<subsample>/{accuracy,macro_accuracy}``."""
    out: dict[str, float] = {}
    macro = []
    for name, path in (results.get("evaluations") or {}).items():
        try:
            with open(path, encoding="utf-8") as f:
                ev = json.load(f)
        except (OSError, TypeError, ValueError):
            continue  # an evaluation not written to a file: the summary below still holds
        for k in ("accuracy", "macro_accuracy"):
            if isinstance(ev.get(k), (int, float)):
                out[f"test/{name}/{k}"] = float(ev[k])
        if isinstance(ev.get("macro_accuracy"), (int, float)):
            macro.append(float(ev["macro_accuracy"]))
    if "hm" in results:
        out.update({"test/accuracy": float(results["hm"]), "test/base": float(results["base"]),
                    "test/novel": float(results["novel"]), "test/hm": float(results["hm"])})
    elif "accuracy" in results:
        out["test/accuracy"] = float(results["accuracy"])
    if macro:
        out["test/macro_accuracy"] = sum(macro) / len(macro)
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # optional (tensorboard): only with --report-to tensorboard

        # purge_step: TensorBoard discards what an interrupted attempt logged from this step on
        self.w = SummaryWriter(str(run_dir / TB_DIR), purge_step=None if resume_step is None else resume_step + 1)

    def step(self, row: dict[str, Any]) -> None:
        for k, tag in STEP_TAGS.items():
            if k in row:
                self.w.add_scalar(tag, row[k], row["step"])

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def cost(self, cost: dict[str, Any], step: int) -> None:
        self.scalars({f"cost/{k}": v for k, v in flat_numbers(cost).items()}, step)
        self.w.add_text("cost", "```\n" + json.dumps(cost, indent=2) + "\n```", step)

    def close(self) -> None:
        self.w.close()


class _WandB:
    def __init__(self, run_dir: Path, cfg, resume_step: int | None):
        import wandb  # optional: only with --report-to wandb

        state_path = run_dir / WANDB_STATE
        state = _read_json(state_path) if resume_step is not None else {}
        run_id = state.get("id") or secrets.token_hex(4)  # W&B ids: lowercase letters and digits
        self.last = int(state.get("last_step", 0)) if resume_step is not None else 0
        self.state_path = state_path
        log = cfg.logging
        name = log.run_name or f"{cfg.method.name}-{cfg.protocol}-{cfg.data.dataset}-{cfg.data.shots}shot-seed{cfg.seed}"
        tags = [cfg.method.name, cfg.protocol, cfg.data.dataset, cfg.backbone, *log.tags]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mmrl"), id=run_id, resume="allow", name=name,
                              config=cfg.to_dict(), tags=[t[:64] for t in tags], dir=str(run_dir),
                              reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))  # the log is ours (train.log)
        self.run.define_metric("train/*", step_metric="step")
        self.run.define_metric("test/*", step_metric="step")
        self._save(run_id)

    def _save(self, run_id: str | None = None) -> None:
        write_json_atomic({"id": run_id or self.run.id, "last_step": self.last}, self.state_path)

    def step(self, row: dict[str, Any]) -> None:
        if row["step"] <= self.last:  # already sent by an interrupted attempt
            return
        self.run.log({"step": row["step"], **{tag: row[k] for k, tag in STEP_TAGS.items() if k in row}})
        self.last = row["step"]
        self._save()

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log({"step": step, **values})
        self.run.summary.update(values)

    def cost(self, cost: dict[str, Any], step: int) -> None:
        self.run.summary.update({f"cost/{k}": v for k, v in flat_numbers(cost).items()})

    def close(self) -> None:
        self._save()
        self.run.finish()


class _CSV:
    """``csv/metrics.csv`` (one row per step, as metrics.jsonl), ``evaluations.csv`` and ``cost.csv``."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.dir = run_dir / CSV_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics = self.dir / "metrics.csv"
        if resume_step is None:
            self.metrics.unlink(missing_ok=True)
        else:  # keep the rows the checkpoint covers, as metrics.jsonl does
            rows = _read_csv(self.metrics)
            _write_csv(self.metrics, [r for r in rows if int(r["step"]) <= resume_step])
        self.fields: list[str] | None = None

    def step(self, row: dict[str, Any]) -> None:
        new = not self.metrics.is_file() or self.metrics.stat().st_size == 0
        fields = self.fields or (list(row) if new else _read_header(self.metrics))
        self.fields = fields
        with open(self.metrics, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def scalars(self, values: dict[str, float], step: int) -> None:
        _write_csv(self.dir / "evaluations.csv", [{"step": step, "key": k, "value": v} for k, v in values.items()])

    def cost(self, cost: dict[str, Any], step: int) -> None:
        _write_csv(self.dir / "cost.csv", [{"key": k, "value": v} for k, v in flat_numbers(cost).items()])

    def close(self) -> None:
        pass


class Sinks:
    """The writers ``names`` asks for, fed by RunFiles. ``resume_step``: the optimiser steps the
    checkpoint of a resumed run covers (None for a fresh run)."""

    def __init__(self, names: tuple[str, ...] | list[str], run_dir: Path, cfg, resume_step: int | None):
        check_available(names)
        self.writers: list[Any] = []
        for name in dict.fromkeys(names):  # each once, in the order asked
            if name == "tensorboard":
                self.writers.append(_TensorBoard(run_dir, resume_step))
            elif name == "wandb":
                self.writers.append(_WandB(run_dir, cfg, resume_step))
            elif name == "csv":
                self.writers.append(_CSV(run_dir, resume_step))

    def step(self, row: dict[str, Any]) -> None:
        for w in self.writers:
            w.step(row)

    def evaluated(self, results: dict[str, Any], step: int) -> None:
        values = evaluation_scalars(results)
        for w in self.writers:
            w.scalars(values, step)
            if results.get("cost"):
                w.cost(results["cost"], step)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    tmp.replace(path)
