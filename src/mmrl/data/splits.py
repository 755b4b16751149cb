"""Split files, building splits from raw data, few-shot sampling, base/novel.

Everything random here takes an explicit `random.Random`: a
`random.Random(seed)` instance produces exactly the numbers that
`random.seed(seed)` followed by module-level calls produces (both are the
same Mersenne Twister seeded the same way), so CoOp/Dassl's subsets are
reproduced without touching the caller's global RNG.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import random
from pathlib import Path
from typing import Callable, Sequence

from mmrl.fileio import dumps_json
from mmrl.vocab import SUBSAMPLES

from .core import (
    LOG,
    DatasetSplits,
    DataError,
    Datum,
    classnames_from_items,
    log_once,
    make_datum,
    path_key,
    read_json,
    write_text_atomic,
)

SPLIT_KEYS = ("train", "val", "test")


# --------------------------------------------------------------------------- split files

def read_split_file(path: str | Path, image_dir: str | Path) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Read a `split_zhou_*.json`-format file into (train, val, test).

    Each of `train`, `val`, `test` is a list of `[relative path, int label,
    class name]`, the path relative to `image_dir`. Entries with absolute
    paths or `..` are rejected (error names the file and entry). A training
    list drawn with label noise has a fourth entry per row, the image's true
    label (the second is the label it is given and trained on).
    """
    path = Path(path)
    obj = read_json(path, "split file")
    if not isinstance(obj, dict) or any(k not in obj for k in SPLIT_KEYS):
        raise DataError(f"{path}: a split file is a JSON object with keys 'train', 'val', 'test'")
    out = []
    for key in SPLIT_KEYS:
        entries = obj[key]
        if not isinstance(entries, list):
            raise DataError(f"{path}: '{key}' must be a list of [path, label, class name]")
        items = []
        for i, e in enumerate(entries):
            src = f"{path}: {key}[{i}]"
            if (not isinstance(e, (list, tuple)) or len(e) not in (3, 4) or not isinstance(e[0], str)
                    or not _is_int(e[1]) or not isinstance(e[2], str) or (len(e) == 4 and not _is_int(e[3]))):
                raise DataError(f"{src} = {e!r}; expected [relative path (str), label (int), class name (str)] "
                                "or, in a noisy training list, [relative path, given label, class name, true label]")
            d = make_datum(image_dir, e[0], e[1], e[2], src)
            items.append(dataclasses.replace(d, true_label=e[3]) if len(e) == 4 else d)
        out.append(items)
    return out[0], out[1], out[2]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def split_row(d: Datum) -> list:
    """One split-file row: ``[path, label, class name]``, plus the true label when label noise was drawn."""
    row = [d.relpath, d.label, d.classname]
    return row if d.true_label is None else row + [d.true_label]


def split_to_json(train: Sequence[Datum], val: Sequence[Datum], test: Sequence[Datum]) -> dict:
    return {k: [split_row(d) for d in items] for k, items in zip(SPLIT_KEYS, (train, val, test))}


def split_file_text(train: Sequence[Datum], val: Sequence[Datum], test: Sequence[Datum]) -> str:
    """The split-file JSON with one `[path, label, class name]` entry per line (readable, diffable)."""
    parts = []
    for key, items in split_to_json(train, val, test).items():
        rows = ",\n".join("    " + dumps_json(e, ensure_ascii=False) for e in items)
        parts.append(f'  "{key}": [\n{rows}\n  ]' if items else f'  "{key}": []')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_split_file(splits: DatasetSplits, path: str | Path) -> None:
    """Write train/val/test of `splits` in the split-file format, atomically."""
    write_text_atomic(split_file_text(splits.train, splits.val, splits.test), path)


# --------------------------------------------------------------------------- building splits (CoOp recipes)

Groups = Sequence[tuple[int, str, Sequence[str]]]  # [(label, class name, relative image paths)]
Splits3 = tuple[list[Datum], list[Datum], list[Datum]]


def _split_per_class(groups: Groups, image_dir: str | Path, source: str,
                     parts: Callable[[list[str]], tuple[Sequence[str], Sequence[str], Sequence[str]]]) -> Splits3:
    """Train/val/test of every class, in class order: ``parts(relpaths)`` cuts one class's images."""
    train: list[Datum] = []
    val: list[Datum] = []
    test: list[Datum] = []
    for label, classname, relpaths in groups:
        n = len(relpaths)
        if n < 4:
            raise DataError(
                f"{source}: class {classname!r} has {n} image(s); building a 50/20/30 train/val/test split "
                "needs at least 4 images per class")
        for dst, ps in zip((train, val, test), parts(list(relpaths))):
            dst.extend(make_datum(image_dir, p, label, classname, source) for p in ps)
    return train, val, test


def split_groups(groups: Groups, image_dir: str | Path, rng: random.Random, source: str, p_trn: float = 0.5,
                 p_val: float = 0.2) -> Splits3:
    """CoOp's per-class 50/20/30 split (DTD.read_and_split_data, OxfordFlowers).

    `groups` = [(label, class name, relative image paths)] in the order CoOp
    visits them; each group's paths are shuffled with `rng` (the stream
    continues across groups), then the first round(0.5 n) go to train, the
    next round(0.2 n) to val, the rest to test (Python's round: 5 -> 2/1/2).
    """
    def parts(paths: list[str]):
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * p_trn), round(len(paths) * p_val)
        return paths[:n_train], paths[n_train:n_train + n_val], paths[n_train + n_val:]

    return _split_per_class(groups, image_dir, source, parts)


def hash_fraction(seed: int, relpath: str) -> float:
    """A number in [0, 1) fixed by ``seed`` and an image's relative path (SHA-256): where the image
    falls in a user dataset's split, independently of every other image."""
    digest = hashlib.sha256(f"{seed}:{relpath}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_groups_stable(groups: Groups, image_dir: str | Path, seed: int, source: str, p_trn: float = 0.5,
                        p_val: float = 0.2) -> Splits3:
    """The 50/20/30 per-class split of user data (``folder:``, ``manifest:``, ``dataset:`` without a
    split), decided image by image so that adding or removing images moves no other image.

    Each image's u = :func:`hash_fraction` (seed, relative path) puts it in train (u < p_trn), val
    (u < p_trn + p_val) or test: the proportions are 50/20/30 in expectation (binomial per class).
    A class where this would leave train, val or test empty (likely only for classes of a few
    images: with 10 images ~13%, with 20 ~1%) takes CoOp's counts instead -- round(0.5 n) train,
    round(0.2 n) val, the rest test -- over its images in u order, so every class keeps at least one
    image in each part; only such small classes can see an image move when images come or go.
    Items are returned per class in order of u.
    """
    def parts(paths: list[str]):
        n = len(paths)
        ranked = sorted(paths, key=lambda p: (hash_fraction(seed, p), p))
        u = [hash_fraction(seed, p) for p in ranked]
        n_train = sum(x < p_trn for x in u)
        n_val = sum(p_trn <= x < p_trn + p_val for x in u)
        if n_train == 0 or n_val == 0 or n_train + n_val == n:  # a part would be empty: CoOp's counts
            n_train, n_val = round(n * p_trn), round(n * p_val)
        return ranked[:n_train], ranked[n_train:n_train + n_val], ranked[n_train + n_val:]

    return _split_per_class(groups, image_dir, source, parts)


def recorded_split(current: DatasetSplits, split_path: str | Path) -> DatasetSplits:
    """A run's own split (its split.json) on the dataset as it is now.

    The recorded lists, labels and class names are kept (the run's classes); test images that no
    longer exist are dropped, and a warning names how many test images disappeared, and how many
    test images of the run's classes appeared in ``current`` (the split rebuilt now) without being
    in the record (they are not evaluated: the record is the run's test set).
    """
    split_path = Path(split_path)
    train, val, test = read_split_file(split_path, current.image_dir)
    classnames = classnames_from_items((train, val, test), str(split_path))
    kept = [d for d in test if os.path.exists(d.impath)]
    gone = [d.relpath for d in test if not os.path.exists(d.impath)]
    recorded = {d.relpath for d in test}
    names = set(classnames)
    appeared = [d.relpath for d in current.test if d.classname in names and d.relpath not in recorded]
    if gone:
        LOG.warning("%s: %d test image(s) of the run's split %s no longer exist and are skipped (e.g. %s)",
                    current.name, len(gone), split_path, ", ".join(gone[:3]))
    if appeared:
        LOG.warning("%s: %d test image(s) of the run's classes appeared since the run and are not evaluated "
                    "(the run's split %s is its test set; e.g. %s)", current.name, len(appeared), split_path,
                    ", ".join(appeared[:3]))
    if not kept:
        raise DataError(f"{current.name}: none of the {len(test)} test images of the run's split {split_path} "
                        "exists any more")
    return dataclasses.replace(current, train=train, val=val, test=kept, classnames=classnames)


def split_trainval(trainval: Sequence[Datum], rng: random.Random, source: str, p_val: float = 0.2
                   ) -> tuple[list[Datum], list[Datum]]:
    """CoOp's OxfordPets.split_trainval: per label (first-appearance order), shuffle, first round(0.2 n) -> val."""
    tracker: dict[int, list[int]] = {}
    for idx, d in enumerate(trainval):
        tracker.setdefault(d.label, []).append(idx)
    train: list[Datum] = []
    val: list[Datum] = []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise DataError(f"{source}: label {label} ({trainval[idxs[0]].classname!r}) has {len(idxs)} "
                            "train+val image(s); splitting off 20% for val needs at least 3")
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


# --------------------------------------------------------------------------- few-shot, base/novel

def set_random_seed(seed: int) -> None:
    """Seed Python's `random`, numpy and torch like CoOp's set_random_seed (nothing is restored).

    For the engine to call once at the start of a run; the data pipeline
    itself never depends on the global RNGs.
    """
    import numpy as np  # here: `mmrl data split` and `verify` import this module without numpy or torch
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily)


def fewshot(items: Sequence[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """Dassl's generate_fewshot_dataset for one split.

    Groups by label in first-appearance order (items in list order); a group
    with at least `shots` items contributes `rng.sample(group, shots)` (also
    when it has exactly `shots`: that permutes it and consumes randomness), a
    smaller group contributes all its items in order and consumes nothing.
    `shots <= 0` returns all items.
    """
    if shots <= 0:
        return list(items)
    groups: dict[int, list[Datum]] = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    out: list[Datum] = []
    for group in groups.values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def subsample_labels(train: Sequence[Datum], subsample: str, name: str) -> list[int]:
    """The labels `subsample` keeps ("base": the first ceil(n/2) of the sorted train labels, "new":
    the rest, "all": every one), before any relabelling."""
    labels = sorted({d.label for d in train})
    if subsample == "all":
        return labels
    if not labels:
        raise DataError(f"{name}: the train split is empty, so base/novel classes cannot be chosen")
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    if not selected:
        raise DataError(f"{name}: only {len(labels)} class(es) in train, so there are no novel classes")
    return selected


def subsample_classes(splits: DatasetSplits, subsample: str, selected: Sequence[int] | None = None
                      ) -> DatasetSplits:
    """Keep base (first ceil(n/2) of the sorted train labels) or novel (the rest) classes.

    Applies to train, val and test and relabels the kept classes 0..m-1 in
    sorted order; `classnames` follows. "all" returns an unchanged copy.
    `selected`: the labels to keep, when they were chosen before the train split was sampled
    (:func:`subsample_labels` of the full train split).
    """
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample={subsample!r}; expected one of {', '.join(SUBSAMPLES)}")
    if subsample == "all":
        return dataclasses.replace(splits)
    if selected is None:
        selected = subsample_labels(splits.train, subsample, splits.name)
    relabel = {y: i for i, y in enumerate(selected)}

    def keep(items: list[Datum]) -> list[Datum]:
        return [dataclasses.replace(d, label=relabel[d.label],
                                    true_label=None if d.true_label is None else relabel.get(d.true_label, -1))
                for d in items if d.label in relabel]

    return dataclasses.replace(
        splits, train=keep(splits.train), val=keep(splits.val), test=keep(splits.test),
        classnames=[splits.classnames[y] for y in selected],
    )


def save_built_split(train: Sequence[Datum], val: Sequence[Datum], test: Sequence[Datum], *,
                     name: str, dataset_dir: Path, filename: str, cache_dir: Path, how: str,
                     level: int = logging.WARNING) -> Path | None:
    """Write a split built from raw data to the cache (never the dataset folder) and log it.

    Returns the written path, or None when the cache is not writable (the
    split is still used; it is rebuilt identically next time). Benchmarks
    log at WARNING (results then differ from published ones), user data at
    INFO (building a split is the normal case there).
    """
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    out = cache_dir / "splits" / f"{slug}-{path_key(dataset_dir)}" / filename
    try:
        write_text_atomic(split_file_text(train, val, test), out)
    except OSError as e:
        log_once(f"built-split:{out}", logging.WARNING, "%s: built a split from raw data (%s) but could not write "
                 "it to %s: %s", name, how, out, e)
        return None
    log_once(f"built-split:{out}", level, "%s: no split file in %s; built one from the raw data (%s) and wrote it "
             "to %s", name, dataset_dir, how, out)
    return out
