"""`mmrl data audit`: what to look at in a labelled dataset before trusting it (no torch here).

Three lists, none of which changes a file of the dataset:

- suspects: the images whose GIVEN label is least likely under a model's class probabilities
  (the frozen backbone's zero-shot scores, or an adapted run's), each with the class the model
  prefers instead: where to look for wrong labels first;
- rare classes: classes with few training images (under half the median count);
- duplicates: images with the same content (SHA-256 of the file's bytes), within and across the
  splits and classes (a duplicate across classes is two labels for one image; across train and
  test, a test image seen in training).

The probabilities come from the caller (``commands/data.py`` computes them with the model).
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmrl.fileio import file_sha256, open_atomic

from .core import Datum

SUSPECTS_FILE, CLASSES_FILE, DUPLICATES_FILE = "suspects.csv", "classes.csv", "duplicates.csv"


@dataclass(frozen=True)
class Suspect:
    rank: int  # 1 = the least likely given label
    relpath: str
    label: int
    classname: str
    p_given: float  # the model's probability of the given label
    preferred: str  # the class the model prefers (its top class)
    p_preferred: float


def rank_suspects(items: Sequence[Datum], probs: Sequence[Sequence[float]], classnames: Sequence[str]
                  ) -> list[Suspect]:
    """Every item, ranked by the probability of its given label (lowest first; ties by path).
    ``probs[i]``: the class probabilities of ``items[i]`` (indexed by label)."""
    if len(items) != len(probs):
        raise ValueError(f"{len(items)} items but {len(probs)} rows of probabilities")
    rows = []
    for d, p in zip(items, probs):
        top = max(range(len(p)), key=lambda c: (p[c], -c))
        rows.append((float(p[d.label]), d.relpath, d, top, float(p[top])))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [Suspect(i + 1, d.relpath, d.label, d.classname, pg, classnames[top], pt)
            for i, (pg, _, d, top, pt) in enumerate(rows)]


def class_counts(train: Sequence[Datum], classnames: Sequence[str]) -> list[int]:
    counts = [0] * len(classnames)
    for d in train:
        counts[d.label] += 1
    return counts


def rare_classes(counts: Sequence[int]) -> list[int]:
    """Labels of the classes with fewer than half the median count of training images, rarest first."""
    if not counts:
        return []
    limit = statistics.median(counts) / 2
    return sorted((c for c, n in enumerate(counts) if n < limit), key=lambda c: (counts[c], c))


def duplicate_groups(splits: dict[str, Sequence[Datum]]) -> list[list[tuple[str, Datum]]]:
    """Groups (of 2 or more) of ``(split name, item)`` whose image files have the same bytes, each
    group in split-and-list order, the groups in order of their first member. An entry listed
    twice in a split counts too."""
    by_hash: dict[str, list[tuple[str, Datum]]] = {}
    hashes: dict[str, str] = {}
    for name, items in splits.items():
        for d in items:
            if d.impath not in hashes:
                hashes[d.impath] = file_sha256(d.impath)
            by_hash.setdefault(hashes[d.impath], []).append((name, d))
    return [g for g in by_hash.values() if len(g) > 1]


def write_audit(out_dir: str | Path, suspects: Sequence[Suspect], classnames: Sequence[str], counts: Sequence[int],
                duplicates: Sequence[Sequence[tuple[str, Datum]]]) -> list[Path]:
    """The three CSV files in ``out_dir`` (created): suspects.csv, classes.csv, duplicates.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rare = set(rare_classes(counts))
    paths = [out / SUSPECTS_FILE, out / CLASSES_FILE, out / DUPLICATES_FILE]
    with open_atomic(paths[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "path", "label", "class", "p_given", "preferred_class", "p_preferred"])
        for s in suspects:
            w.writerow([s.rank, s.relpath, s.label, s.classname, f"{s.p_given:.6f}", s.preferred,
                        f"{s.p_preferred:.6f}"])
    with open_atomic(paths[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "class", "train_images", "rare"])
        for c, (name, n) in enumerate(zip(classnames, counts)):
            w.writerow([c, name, n, int(c in rare)])
    with open_atomic(paths[2], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "split", "path", "label", "class"])
        for g, group in enumerate(duplicates, 1):
            for split, d in group:
                w.writerow([g, split, d.relpath, d.label, d.classname])
    return paths


def summary_table(suspects: Sequence[Suspect], classnames: Sequence[str], counts: Sequence[int],
                  duplicates: Sequence[Sequence[tuple[str, Datum]]], top: int = 10) -> str:
    """The short printed report: the top suspects, the rare classes, the duplicate groups."""
    lines = [f"labels least likely under the model (of {len(suspects)} images):",
             f"  {'rank':>4}  {'p(given)':>8}  {'given class':<20}  {'preferred':<20}  path"]
    for s in suspects[:top]:
        lines.append(f"  {s.rank:>4}  {s.p_given:>8.2g}  {s.classname[:20]:<20}  {s.preferred[:20]:<20}  {s.relpath}")
    rare = rare_classes(counts)
    med = statistics.median(counts) if counts else 0
    if rare:
        shown = ", ".join(f"{classnames[c]} ({counts[c]})" for c in rare[:10])
        lines.append(f"rare classes (under half the median {med:g} training images): {shown}"
                     + (f" and {len(rare) - 10} more" if len(rare) > 10 else ""))
    else:
        lines.append(f"rare classes: none (median {med:g} training images per class)")
    if duplicates:
        cross = sum(len({d.label for _, d in g}) > 1 for g in duplicates)
        leak = sum(len({s for s, _ in g}) > 1 for g in duplicates)
        lines.append(f"duplicate images: {len(duplicates)} group(s) of identical files, {cross} with two labels, "
                     f"{leak} across splits")
        for group in duplicates[:5]:
            lines.append("  " + " = ".join(f"{s}:{d.relpath} ({d.classname})" for s, d in group))
    else:
        lines.append("duplicate images: none")
    return "\n".join(lines)
