"""Decoupled inference (docs/method.md#decoupled-inference): which classes a run is applied to, with
which logits (``fused`` on the classes it was trained on, ``class`` elsewhere) and which method
settings (MMRL++: a dataset's published target beta), and the splits it is evaluated on."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from torch import nn

from mmrl import data
from mmrl.config import RunConfig, canonical_dataset
from mmrl.data.imagefolder import is_user_spec
from mmrl.data.splits import recorded_split
from mmrl.engine.rundir import training_classnames, training_template
from mmrl.errors import shown
from mmrl.vocab import LOGIT_CHOICES, OTHER_SPLIT_FILE, auto_logits

LOG = logging.getLogger("mmrl")


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


def eval_settings(model: nn.Module, cfg: RunConfig | None, dataset: str | None) -> dict[str, float]:
    """The method settings ``model`` uses on ``dataset`` (None: a list of class names), as the method
    decides (:meth:`mmrl.methods.MethodModel.evaluation_settings`): MMRL++'s beta, from the run's
    ``eval.target_beta`` on another dataset; {} for MMRL and zero-shot CLIP."""
    trained_on = cfg.data.dataset if cfg is not None else None
    targets = dict(cfg.eval.target_beta) if cfg is not None else {}
    return model.evaluation_settings(trained_on, targets, dataset)


def recorded_settings(settings: dict[str, float]) -> dict[str, Any]:
    """``settings`` as eval files and exported metadata record them: ``beta`` is always present
    (null for a method without one), as mmrl 0.2 wrote it."""
    return {"beta": None, **settings}


class ClassSet(NamedTuple):
    """The classes a run is applied to and how: what `mmrl eval` / `mmrl predict` decide."""

    classnames: list[str]
    template: str
    kind: str                # "fused", "class" or "rep"
    settings: dict[str, float]  # the method's settings on these classes (MMRL++: its beta; MMRL: none)
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
    logits otherwise; MMRL++ uses a dataset's published target beta as :func:`eval_settings` says."""
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
        return ClassSet(classnames, template, kind, eval_settings(model, cfg, None), None)
    dataset = canonical_dataset(dataset)
    if root is None and cfg is not None:
        root = cfg.data.root
    kind = choose_logits(cfg, dataset, subsample, logits)
    splits = eval_splits(cfg, dataset, root, subsample, template=template)
    return ClassSet(list(splits.classnames), splits.template, kind, eval_settings(model, cfg, dataset), dataset)


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
        other = Path(run_split).with_name(OTHER_SPLIT_FILE) if run_split is not None else None
        if use_record and subsample != "all" and other.is_file():  # the half the run did not train on
            return recorded_split(now(subsample), other)
        if use_record and cfg.data.subsample == "all":  # the record holds every class: take the asked half
            return data.subsample_classes(recorded_split(now("all"), run_split), subsample)
        return now(subsample)
    if cfg is not None:
        shots, seed = cfg.data.shots, cfg.data_seed
        cache_dir = cache_dir or cfg.data.cache_dir
    return data.prepare_splits(dataset, root, shots=shots, seed=seed, subsample=subsample, split_file=split_file,
                               cache_dir=cache_dir, template=template)


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
    if cfg is None:
        return data.DEFAULT_TEMPLATE
    try:
        return data.dataset_template(cfg.data.dataset, cfg.data.root)
    except Exception:  # user data that is not reachable any more: CLIP's generic prompt
        return data.DEFAULT_TEMPLATE
