"""Evaluation of a run (or a model) on any dataset's test split: the result file
``RUN_DIR/eval/<dataset>-<subsample>.json`` (:func:`evaluate`).

Which classes, logits and method settings is decoupled inference's choice
(:mod:`mmrl.engine.decoupled`); running the model over the images and sharding them over
torchrun ranks is :mod:`mmrl.engine.inference`. The zero-shot baseline is
:mod:`mmrl.engine.baseline`, prediction of image files :mod:`mmrl.engine.prediction`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from mmrl import __version__
from mmrl.config import RunConfig, canonical_dataset, with_overrides
from mmrl.engine import distributed as ddp_util
from mmrl.engine.checkpoint import write_json_atomic
from mmrl.engine.decoupled import choose_logits, eval_settings, eval_splits, recorded_settings
from mmrl.engine.inference import model_device, run_inference, summarize, write_predictions
from mmrl.engine.lock import RunDirLock
from mmrl.engine.precision import cast_frozen, eval_precision, inference_precision, tower_width
from mmrl.engine.rundir import EVAL_DIR, SPLIT_FILE, check_run_dir, load_run
from mmrl.engine.runtime import resolve_device
from mmrl.errors import shown
from mmrl.fileio import check_writable_dir
from mmrl.vocab import LOGIT_CHOICES, SUBSAMPLES, eval_file_name

LOG = logging.getLogger("mmrl")
# how to go on when the result cannot be written where it would go (said BEFORE the work)

EVAL_ELSEWHERE = "write the result elsewhere with --output-dir DIR"

PREDICTIONS_ELSEWHERE = "write the predictions elsewhere with --predictions FILE"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


@contextlib.contextmanager
def writable_outputs(run_dir: Path | None, out_dir: Path | None, predictions: str | Path | None,
                      command: str, dinfo: ddp_util.DistInfo, hint: str = EVAL_ELSEWHERE) -> Iterator[None]:
    """Before any work: prove that the result (and predictions) can be written, and hold the
    run folder's writer lock while writing into it (rank 0 under torchrun)."""
    held: list[RunDirLock] = []

    def prepare() -> None:
        if run_dir is not None and out_dir is not None and _inside(out_dir, run_dir):
            held.append(RunDirLock.acquire(run_dir, command, hint=hint))
        if out_dir is not None:
            check_writable_dir(out_dir, hint)
        if predictions is not None:
            check_writable_dir(Path(predictions).absolute().parent, PREDICTIONS_ELSEWHERE)

    try:
        ddp_util.on_main(prepare, dinfo)
        yield
    finally:
        for h in held:
            h.release()


def evaluate_model(model: nn.Module, cfg: RunConfig | None, dataset: str, subsample: str, kind: str, *,
                    splits, batch_size: int, precision: str, num_workers: int, skip_bad: bool,
                    predictions: str | Path | None, progress: bool | None,
                    dist_info: ddp_util.DistInfo | None = None, compile: bool | None = False) -> dict[str, Any]:
    settings = eval_settings(model, cfg, dataset)
    why = eval_precision(precision, model_device(model), tower_width(model))[1]
    precision = inference_precision(model, precision, model_device(model))  # what auto means here
    t0 = time.time()
    with model.using(settings):
        logits, labels, idx = run_inference(
            model, splits.test, splits.classnames, splits.template, kind, batch_size=batch_size,
            precision=precision, num_workers=num_workers, skip_bad=skip_bad, progress=progress,
            desc=f"eval {splits.name}-{subsample}", dist_info=dist_info, compile=compile)
    res = {"dataset": splits.name, "subsample": subsample, **summarize(logits, labels, splits.classnames),
           "logits": kind, **recorded_settings(settings), "template": splits.template, "precision": precision,
           "precision_reason": why, "time_s": round(time.time() - t0, 3)}
    if predictions is not None:
        if dist_info is None or dist_info.is_main:
            write_predictions(predictions, splits.test, idx, logits, labels, splits.classnames, kind)
        res["predictions"] = str(predictions)
    return res


# The run-config keys that say HOW to evaluate; `mmrl eval`'s flags override them for one evaluation.


EVAL_SETTINGS = ("eval.batch_size", "eval.precision", "eval.compile", "data.num_workers", "data.skip_bad_images",
                 "device")
DEFAULTS = RunConfig()  # an in-memory model without a config is evaluated with the keys' defaults


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """WHAT to evaluate and where the results go. HOW (batch, precision, loader workers, unreadable
    images, device) is the run's config (:data:`EVAL_SETTINGS`), overridden by ``settings``."""

    dataset: str                          # dataset name or alias, or folder:PATH ...
    root: str | Path | None = None        # data root (default: the run's data.root)
    subsample: str = "all"                # all, base or new classes
    logits: str = "auto"                  # auto (decoupled inference), fused, class or rep
    split_file: str | None = None         # evaluate the test list of this split file
    template: str | None = None           # prompt template (default: the run's / the dataset's)
    predictions: str | Path | None = None  # optional JSONL file: one object per test image
    output_dir: str | Path | None = None  # where the result goes (default RUN_DIR/eval; vocab.eval_file_name)

    def __post_init__(self) -> None:
        if self.subsample not in SUBSAMPLES:
            raise ValueError(f"subsample={shown(self.subsample)}; expected one of {', '.join(SUBSAMPLES)}")
        if self.logits not in LOGIT_CHOICES:
            raise ValueError(f"logits={shown(self.logits)}; expected one of {', '.join(LOGIT_CHOICES)}")


def evaluate(run_dir_or_model: str | Path | nn.Module, request: EvalRequest, *, cfg: RunConfig | None = None,
             settings: dict[str, Any] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Evaluate a run directory (or an in-memory model) on ``request.dataset``'s test split.

    Args:
        run_dir_or_model: a run directory (trained or converted), or an ``MMRL`` model (then
            ``cfg`` tells which dataset/classes it was trained on; needed for ``logits='auto'``).
        request: what to evaluate and where the results go (:class:`EvalRequest`); for an
            in-memory model nothing is written unless ``request.output_dir`` is given.
        cfg: the config of an in-memory model (a run directory's is read from it).
        settings: overrides of the config's :data:`EVAL_SETTINGS` (dotted keys; None values are
            ignored), e.g. ``{"eval.batch_size": 64, "device": "cpu"}``. ``device`` is where a
            run directory's model is loaded; an in-memory model is evaluated where it is.
    Returns:
        the results dict (``accuracy`` in percent, ``macro_accuracy``, ``per_class``, ``n``,
        ``logits`` kind, ``beta`` for MMRL++, ...), also written as JSON.

    An in-memory model keeps the evaluated class set afterwards (``set_classes``); its method
    settings are restored.

    Under ``torchrun`` (or with an initialised process group, for an in-memory model)
    every rank must call this: the test set is sharded over the ranks, every rank returns
    the same results, and only rank 0 writes files.

    Before any work the output folder (and the predictions' folder) is proven writable
    (NotWritableError otherwise, saying how to write elsewhere); writing into a run
    directory holds its writer lock (RunLockedError while another process writes there).
    """
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = sorted(set(settings) - set(EVAL_SETTINGS))
    if unknown:
        raise ValueError(f"evaluation settings {unknown}: expected keys among {', '.join(EVAL_SETTINGS)}")
    request = dataclasses.replace(request, dataset=canonical_dataset(request.dataset))
    run_dir = None
    if isinstance(run_dir_or_model, (str, Path)):
        run_dir = Path(run_dir_or_model)
        check_run_dir(run_dir)
        dinfo = ddp_util.init_distributed(settings.get("device", "auto"))  # single process: a no-op
    else:
        dinfo = ddp_util.current()
    out_dir = (Path(request.output_dir) if request.output_dir is not None
               else run_dir / EVAL_DIR if run_dir is not None else None)
    with writable_outputs(run_dir, out_dir, request.predictions, "mmrl eval", dinfo):
        return _evaluate(run_dir_or_model, run_dir, out_dir, request, cfg, settings, progress, dinfo)


def _evaluate(run_dir_or_model, run_dir: Path | None, out_dir: Path | None, request: EvalRequest,
              cfg: RunConfig | None, settings: dict[str, Any], progress: bool | None,
              dinfo: ddp_util.DistInfo) -> dict[str, Any]:
    """:func:`evaluate` once its outputs are known to be writable (and the run directory locked)."""
    if run_dir is not None:
        device = settings.get("device")
        if dinfo.enabled:  # this rank's GPU
            device = ddp_util.local_device(resolve_device(device or "auto"), dinfo)
        with ddp_util.local_rank0_first(dinfo):
            model, cfg = load_run(run_dir, device=device)
    else:
        model = run_dir_or_model
    if cfg is not None and settings:
        cfg = with_overrides(cfg, flags=settings)
    dataset, subsample = request.dataset, request.subsample
    root = request.root if request.root is not None else cfg.data.root if cfg is not None else None
    kind = choose_logits(cfg, dataset, subsample, request.logits)
    splits = eval_splits(cfg, dataset, root, subsample, split_file=request.split_file, template=request.template,
                         run_split=run_dir / SPLIT_FILE if run_dir is not None else None)
    # an in-memory model without a config: the keys' defaults with the overrides, validated as a config is
    how_cfg = cfg if cfg is not None else with_overrides(DEFAULTS, flags={"data.dataset": dataset, **settings})
    how = {k: how_cfg.value(k) for k in EVAL_SETTINGS}
    if run_dir is not None:  # a model loaded for this evaluation: its frozen weights in bf16 once (CPU)
        cast_frozen(model, eval_precision(how["eval.precision"], model_device(model), tower_width(model))[0])
    res = evaluate_model(
        model, cfg, dataset, subsample, kind, splits=splits, batch_size=how["eval.batch_size"],
        precision=how["eval.precision"], num_workers=how["data.num_workers"],
        skip_bad=bool(how["data.skip_bad_images"]), predictions=request.predictions, progress=progress,
        dist_info=dinfo, compile=how["eval.compile"])
    if cfg is not None:
        res.update({"method": cfg.method.name, "protocol": cfg.protocol, "trained_on": cfg.data.dataset,
                    "trained_subsample": cfg.data.subsample, "shots": cfg.data.shots, "seed": cfg.seed,
                    "backbone": cfg.backbone})
    res["version"] = __version__
    res["logits_requested"] = request.logits  # auto: the protocol's choice, recorded in "logits"
    out = None
    if out_dir is not None:
        out = out_dir / eval_file_name(splits.name, subsample, request.logits)
    if run_dir is not None:
        res["run"] = str(run_dir)
    if out is not None:
        if dinfo.is_main:
            write_json_atomic(res, out)
        res["path"] = str(out)
    LOG.info("%s %s (%s logits%s): accuracy %.2f%% (n=%d)", splits.name, subsample, kind,
             f", beta {res['beta']}" if res.get("beta") is not None else "", res["accuracy"], res["n"])
    return res
