"""Evaluation of a run (or a model) on any dataset, the zero-shot CLIP baseline, prediction.

Decoupled inference (method.md): ``fused`` logits on the classes the model was trained on
(same dataset, the training subsample or a subset of it), ``class`` logits on novel
classes and on other datasets. An MMRL++ model evaluated on another dataset uses that
dataset's beta from ``cfg.eval.target_beta`` (the published cross-dataset betas) when listed.

Under ``torchrun`` :func:`evaluate` shards the test set over the ranks by whole evaluation
batches and gathers the logits, so accuracy and predictions equal a single-process
evaluation's (bit for bit: every image is computed in the same batch); only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from mmrl.config import RunConfig, canonical_dataset, dataset_slug, with_overrides
from mmrl.engine import distributed as ddp_util
from mmrl.engine.checkpoint import write_json_atomic
from mmrl.engine.rundir import (EVAL_DIR, SPLIT_FILE, check_run_dir, eval_result_path, load_run,
                                training_classnames, training_template)
from mmrl.engine.lock import RunDirLock
from mmrl.engine.runtime import Progress, autocast, resolve_device, use_tty_progress
from mmrl.errors import shown
from mmrl.fileio import check_writable_dir, dumps_json, open_atomic
from mmrl.vocab import LOGIT_CHOICES, auto_logits, eval_file_name

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
def _writable_outputs(run_dir: Path | None, out_dir: Path | None, predictions: str | Path | None,
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


def model_image_size(model: nn.Module) -> int:
    size = model.clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def model_device(model: nn.Module) -> torch.device:
    return model.clip.positional_embedding.device


def choose_logits(cfg: RunConfig | None, dataset: str, subsample: str, requested: str = "auto") -> str:
    """``fused`` on the training classes (same dataset, and the training subsample or a
    subset of all the classes trained on), else ``class``; an explicit choice wins."""
    if requested not in LOGIT_CHOICES:
        raise ValueError(f"logits={shown(requested)}; expected one of {', '.join(LOGIT_CHOICES)}")
    if requested != "auto":
        return requested
    if cfg is None:
        raise ValueError("logits='auto' needs the run's config (which dataset/classes it was trained on); "
                         "pass cfg= or choose logits='fused' or 'class'")
    return auto_logits(cfg.data.dataset, cfg.data.subsample, canonical_dataset(dataset), subsample)


def eval_beta(model: nn.Module, cfg: RunConfig | None, dataset: str | None) -> float | None:
    """The beta an MMRL++ model uses on ``dataset`` (None for MMRL / zero-shot; the model's own
    beta when ``dataset`` is None, i.e. a list of class names)."""
    if not getattr(model, "is_plus", False):
        return None
    if cfg is not None and dataset is not None and dataset != cfg.data.dataset and dataset in cfg.eval.target_beta:
        return float(cfg.eval.target_beta[dataset])
    return float(model.cfg.beta)


@contextmanager
def using_beta(model: nn.Module, beta: float | None) -> Iterator[None]:
    """Within the block, an MMRL++ model blends with ``beta`` (None: leave it as it is)."""
    if beta is None:
        yield
        return
    old = model.cfg
    model.cfg = dataclasses.replace(old, beta=beta)  # the settings are frozen: the model gets a variant
    try:
        yield
    finally:
        model.cfg = old


class ClassSet(NamedTuple):
    """The classes a run is applied to and how: what `mmrl eval` / `mmrl predict` decide."""

    classnames: list[str]
    template: str
    kind: str                # "fused", "class" or "rep"
    beta: float | None       # MMRL++'s blend on these classes (None for MMRL)
    dataset: str | None      # canonical dataset name when the classes came from a dataset


def resolve_class_set(model: nn.Module, cfg: RunConfig | None, run_dir: str | Path | None, *,
                      classes: Sequence[str] | None = None, dataset: str | None = None,
                      root: str | Path | None = None, subsample: str = "all", logits: str = "auto",
                      template: str | None = None) -> ClassSet:
    """Classes from ``classes`` (a list of names), from ``dataset`` (its ``subsample``
    classes, with its template, as `mmrl eval` evaluates them), or, with neither, from the run
    itself: its training classes (split.json) with its training template (run.json), or for a
    run without split.json (a converted checkpoint) its dataset's training subsample; the logit kind as decoupled
    inference decides (``logits='auto'``): fused when the classes are the run's training
    classes (the same names in the same order, or the training dataset and subsample), class
    logits otherwise; MMRL++ uses a dataset's published target beta as :func:`eval_beta` says."""
    if classes is not None and dataset is not None:
        raise ValueError("give either classes (a list of class names) or a dataset, not both")
    if logits not in LOGIT_CHOICES:
        raise ValueError(f"logits={shown(logits)}; expected one of {', '.join(LOGIT_CHOICES)}")
    if classes is None and dataset is None:  # the run's own training classes
        if run_dir is None or cfg is None:
            raise ValueError("give classes (a list of class names) or a dataset: a model without its run "
                             "folder records no classes")
        classes = training_classnames(run_dir)
        if classes is None:  # no split.json (a converted checkpoint): its dataset's training classes
            dataset, subsample = cfg.data.dataset, cfg.data.subsample
    if classes is not None:
        classnames = [c.strip() for c in classes if c.strip()]
        if not classnames:
            raise ValueError("the class list is empty")
        trained = training_classnames(run_dir) if run_dir is not None else None
        if template is None:
            recorded = training_template(run_dir) if trained is not None and trained == classnames else None
            template = recorded or (cfg.data.template if cfg else None) or _dataset_template(cfg)
        kind = logits if logits != "auto" else ("fused" if trained is not None and trained == classnames else "class")
        return ClassSet(classnames, template, kind, eval_beta(model, cfg, None), None)
    dataset = canonical_dataset(dataset)
    if root is None and cfg is not None:
        root = cfg.data.root
    kind = choose_logits(cfg, dataset, subsample, logits)
    splits = eval_splits(cfg, dataset, root, subsample, template=template)
    return ClassSet(list(splits.classnames), splits.template, kind, eval_beta(model, cfg, dataset), dataset)


def eval_splits(cfg: RunConfig | None, dataset: str, root: str | Path | None, subsample: str, *,
                shots: int = 16, seed: int = 1, split_file: str | None = None, cache_dir: str | None = None,
                template: str | None = None, run_split: str | Path | None = None):
    """The splits to evaluate on. The run's own dataset uses the run's shots, seed, split file
    and template (base/novel classes depend on the few-shot train split); a run's split
    file is used verbatim, so it only applies to the run's own subsample.

    ``run_split``: the run's recorded split (RUN_DIR/split.json). On the run's own user dataset
    (``folder:``, ``manifest:``, ``dataset:``), whose images may have changed since, its test list
    is the test set (of the run's classes; images gone are skipped, images added are not
    evaluated, both with a warning); benchmark datasets keep their fixed split files.
    """
    from mmrl import data
    from mmrl.data.imagefolder import is_user_spec
    from mmrl.data.splits import recorded_split

    if cfg is not None and dataset == cfg.data.dataset:
        sf = split_file or (cfg.data.split_file if subsample == cfg.data.subsample else None)
        if cfg.data.split_file and sf is None:
            LOG.warning("the run's split file %s holds its %s classes only; evaluating subsample %r from the "
                        "dataset's own split", cfg.data.split_file, cfg.data.subsample, subsample)

        def now(sub: str):
            return data.prepare_splits(dataset, root, shots=cfg.data.shots, seed=cfg.data_seed, subsample=sub,
                                       split_file=sf, cache_dir=cache_dir or cfg.data.cache_dir,
                                       template=template or cfg.data.template)

        use_record = (run_split is not None and sf is None and is_user_spec(dataset) and Path(run_split).is_file())
        if use_record and subsample == cfg.data.subsample:
            return recorded_split(now(subsample), run_split)
        if use_record and cfg.data.subsample == "all":  # the record holds every class: take the asked half
            return data.subsample_classes(recorded_split(now("all"), run_split), subsample)
        return now(subsample)
    if cfg is not None:
        shots, seed = cfg.data.shots, cfg.data_seed
        cache_dir = cache_dir or cfg.data.cache_dir
    return data.prepare_splits(dataset, root, shots=shots, seed=seed, subsample=subsample, split_file=split_file,
                               cache_dir=cache_dir, template=template)


@torch.no_grad()
def run_inference(model: nn.Module, items: Sequence, classnames: list[str], template: str, kind: str, *,
                  batch_size: int = 250, precision: str = "fp32", num_workers: int | None = 0,
                  skip_bad: bool = False,
                  progress: bool | None = None, desc: str = "eval", dist_info: ddp_util.DistInfo | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Logits of ``kind`` for every item: ``(logits (N, C) fp32 CPU, labels (N,), item indices)``.

    Items dropped as unreadable (``skip_bad``) are absent from the returned indices.
    ``num_workers`` None = the machine's default (:func:`mmrl.data.default_num_workers`).
    With ``dist_info`` of several ranks (every rank must call this), each rank computes a
    contiguous share of the evaluation batches (the same batches as one process) and the
    results are gathered on every rank in item order.
    """
    from torch.utils.data import DataLoader

    from mmrl import data

    info = dist_info or ddp_util.DistInfo()

    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        model.set_classes(classnames, template)
        with autocast(device, precision):
            text = model.encode_text()
        ds = data.ImageDataset(items, data.build_transform(False, model_image_size(model)), seed=0,
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
        out_logits, out_labels, out_idx = [], [], []
        it = Progress(loader, total=len(loader), desc=desc, tty=use_tty_progress(progress) and info.is_main)
        for images, labels, idx in it:
            images = images.to(device, non_blocking=True)
            with autocast(device, precision):
                lg = model.logits(images, text)
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


def _evaluate_model(model: nn.Module, cfg: RunConfig | None, dataset: str, subsample: str, kind: str, *,
                    splits, batch_size: int, precision: str, num_workers: int, skip_bad: bool,
                    predictions: str | Path | None, progress: bool | None,
                    dist_info: ddp_util.DistInfo | None = None) -> dict[str, Any]:
    beta = eval_beta(model, cfg, dataset)
    t0 = time.time()
    with using_beta(model, beta):
        logits, labels, idx = run_inference(
            model, splits.test, splits.classnames, splits.template, kind, batch_size=batch_size,
            precision=precision, num_workers=num_workers, skip_bad=skip_bad, progress=progress,
            desc=f"eval {splits.name}-{subsample}", dist_info=dist_info)
    res = {"dataset": splits.name, "subsample": subsample, **summarize(logits, labels, splits.classnames),
           "logits": kind, "beta": beta, "template": splits.template, "precision": precision,
           "time_s": round(time.time() - t0, 3)}
    if predictions is not None:
        if dist_info is None or dist_info.is_main:
            write_predictions(predictions, splits.test, idx, logits, labels, splits.classnames, kind)
        res["predictions"] = str(predictions)
    return res


# The run-config keys that say HOW to evaluate; `mmrl eval`'s flags override them for one evaluation.
EVAL_SETTINGS = ("eval.batch_size", "eval.precision", "data.num_workers", "data.skip_bad_images", "device")


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
        if self.subsample not in ("all", "base", "new"):
            raise ValueError(f"subsample={shown(self.subsample)}; expected all, base or new")
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

    An in-memory model keeps the evaluated class set afterwards (``set_classes``); its
    ``cfg.beta`` is restored.

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
    with _writable_outputs(run_dir, out_dir, request.predictions, "mmrl eval", dinfo):
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
    res = _evaluate_model(
        model, cfg, dataset, subsample, kind, splits=splits,
        batch_size=cfg.eval.batch_size if cfg else settings.get("eval.batch_size", 250),
        precision=cfg.eval.precision if cfg else settings.get("eval.precision", "fp32"),
        num_workers=cfg.data.num_workers if cfg else settings.get("data.num_workers", 0),
        skip_bad=bool(cfg.data.skip_bad_images) if cfg else settings.get("data.skip_bad_images", False),
        predictions=request.predictions, progress=progress, dist_info=dinfo)
    if cfg is not None:
        res.update({"method": cfg.method.name, "protocol": cfg.protocol, "trained_on": cfg.data.dataset,
                    "trained_subsample": cfg.data.subsample, "shots": cfg.data.shots, "seed": cfg.seed,
                    "backbone": cfg.backbone})
    from mmrl import __version__

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
    with _writable_outputs(out_dir, out_dir / EVAL_DIR, predictions, "mmrl zeroshot", ddp_util.DistInfo(),
                           hint="write elsewhere with --output DIR"):
        return _zeroshot(dataset, root, subsample, out_dir, backbone=backbone, shots=shots, seed=seed,
                         split_file=split_file, template=template, batch_size=batch_size, precision=precision,
                         device=device, num_workers=num_workers, predictions=predictions, cache_dir=cache_dir,
                         progress=progress, skip_bad=skip_bad)


def _zeroshot(dataset: str, root, subsample: str, out_dir: Path, *, backbone: str, shots: int, seed: int,
              split_file, template, batch_size: int, precision: str, device, num_workers, predictions, cache_dir,
              progress, skip_bad: bool) -> dict[str, Any]:
    from mmrl import __version__
    from mmrl.engine.rundir import read_run_info, write_run_info
    from mmrl.engine.runtime import load_backbone_checked
    from mmrl.models import ZeroShotCLIP

    splits = eval_splits(None, dataset, root, subsample, shots=shots, seed=seed, split_file=split_file,
                         cache_dir=cache_dir, template=template)
    bb = load_backbone_checked(backbone, device=resolve_device(device or "auto"))
    model = ZeroShotCLIP(bb)
    res = _evaluate_model(model, None, dataset, subsample, "class", splits=splits, batch_size=batch_size,
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


def predict(run_dir_or_model: str | Path | nn.Module, images: Sequence[str | Path], *,
            classes: Sequence[str] | None = None, dataset: str | None = None, root: str | Path | None = None,
            subsample: str = "all", top_k: int = 5, logits: str = "auto", cfg: RunConfig | None = None,
            template: str | None = None, device: str | None = None, skip_bad: bool = False
            ) -> list[dict[str, Any]]:
    """Class probabilities (softmax of the chosen logits) for image files.

    Classes come from ``classes`` (at least 2 distinct names), from ``dataset`` (its
    ``subsample`` classes), or, with neither, from the run itself (see :func:`resolve_class_set`).
    With ``logits='auto'``: fused when the classes are the run's training classes, else class
    (MMRL++ uses a dataset's target beta as `mmrl eval` does). Returns one ``{"image",
    "prediction", "top": [{"class", "probability"}], "logits"}`` per image, in order; an image
    that cannot be read raises BadImageError, or with ``skip_bad`` gives ``{"image", "error"}``
    and the others are still predicted.
    """
    from mmrl import data

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
    cs = resolve_class_set(model, cfg, run_dir, classes=classes, dataset=dataset, root=root, subsample=subsample,
                           logits=logits, template=template)
    classnames, kind = cs.classnames, cs.kind
    transform = data.build_transform(False, model_image_size(model))
    device_ = model_device(model)
    model.eval()
    out = []
    with torch.no_grad(), using_beta(model, cs.beta):
        model.set_classes(classnames, cs.template)
        text = model.encode_text()
        for path in images:
            try:
                img = data.load_image(str(path))
            except data.BadImageError as e:
                if not skip_bad:
                    raise
                out.append({"image": str(path), "error": str(e)})
                continue
            x = transform(img).unsqueeze(0).to(device_)
            lg = model.logits(x, text)
            chosen = lg.of(kind)[0].float().cpu()
            prob = chosen.softmax(-1)
            k = min(top_k, len(classnames))
            p, i = prob.topk(k)
            out.append({"image": str(path), "prediction": classnames[int(i[0])], "logits": kind,
                        "top": [{"class": classnames[int(j)], "probability": float(q)} for q, j in zip(p, i)]})
    return out


def check_class_list(classes: Sequence[str]) -> list[str]:
    """The stripped class names; ValueError for an empty name, fewer than 2 names (one class
    always gets 100%) or a name given twice."""
    names = [str(c).strip() for c in classes]
    if not any(names):
        raise ValueError("no class names given")
    if any(not n for n in names):
        raise ValueError(f"an empty class name in {shown(names)} (two commas in a row, or one at an end?)")
    if len(names) < 2:
        raise ValueError(f"{len(names)} class name(s) {shown(names)}: give at least 2 (a single class always gets 100%)")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"class {shown(n)} is listed twice")
        seen.add(n)
    return names


def _dataset_template(cfg: RunConfig | None) -> str:
    from mmrl import data

    if cfg is None:
        return data.DEFAULT_TEMPLATE
    try:
        return data.dataset_template(cfg.data.dataset, cfg.data.root)
    except Exception:  # user data that is not reachable any more: CLIP's generic prompt
        return data.DEFAULT_TEMPLATE
