"""Long-tailed few-shot training sets: the CIFAR-LT profile applied to a few-shot sample.

Class c of C (its rank: label order, or a seeded permutation of the classes) keeps

- ``exp``:  max(1, floor(shots * ratio ** (c / (C - 1))))  (all of them when C = 1),
- ``step``: all ``shots`` for the first ceil(C / 2) ranks, max(1, floor(shots * ratio)) for the rest,

of its few-shot sample (fewer when the class has fewer images). ``ratio`` is rho = n_min / n_max
in (0, 1]. Which of its shots a class keeps is a seeded subset of the sample, in the sample's
order; the draws come from their own stream (``random.Random("mmrl-imbalance:<seed>")``), so
the few-shot validation set and everything else drawn from the seed are unchanged.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

from .core import Datum

IMBALANCE_TYPES = ("none", "exp", "step")
IMBALANCE_ORDERS = ("label", "shuffled")


def _stream(seed: int) -> random.Random:
    return random.Random(f"mmrl-imbalance:{seed}")


def class_ranks(num_classes: int, order: str, seed: int) -> list[int]:
    """Rank of each class (by label) in the profile: 0 = the most frequent."""
    if order not in IMBALANCE_ORDERS:
        raise ValueError(f"imbalance order {order!r}; expected one of {', '.join(IMBALANCE_ORDERS)}")
    if order == "label":
        return list(range(num_classes))
    perm = list(range(num_classes))
    _stream(seed).shuffle(perm)  # perm[r] = the class of rank r
    ranks = [0] * num_classes
    for r, c in enumerate(perm):
        ranks[c] = r
    return ranks


def budget(rank: int, num_classes: int, shots: int, kind: str, ratio: float) -> int:
    """How many of its ``shots`` the class of ``rank`` keeps."""
    if kind == "none":
        return shots
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"imbalance ratio {ratio!r}; expected a value in (0, 1]")
    if kind == "exp":
        if num_classes <= 1:
            return shots
        return max(1, math.floor(shots * ratio ** (rank / (num_classes - 1))))
    if kind == "step":
        return shots if rank < math.ceil(num_classes / 2) else max(1, math.floor(shots * ratio))
    raise ValueError(f"imbalance type {kind!r}; expected one of {', '.join(IMBALANCE_TYPES)}")


def class_budgets(num_classes: int, shots: int, kind: str, ratio: float, order: str, seed: int) -> list[int]:
    """The profile: how many shots each class (by label) keeps."""
    ranks = class_ranks(num_classes, order, seed)
    return [budget(ranks[c], num_classes, shots, kind, ratio) for c in range(num_classes)]


def imbalanced(train: Sequence[Datum], num_classes: int, shots: int, kind: str, ratio: float, order: str,
               seed: int) -> list[Datum]:
    """The training list cut to the profile: each class keeps a seeded subset of its items (in
    list order) of the size :func:`class_budgets` gives it; ``kind == "none"`` returns a copy."""
    if kind == "none":
        return list(train)
    budgets = class_budgets(num_classes, shots, kind, ratio, order, seed)
    rng = _stream(seed)
    if order == "shuffled":
        rng.shuffle(list(range(num_classes)))  # the permutation drawn by class_ranks: same stream position
    positions: dict[int, list[int]] = {}
    for i, d in enumerate(train):
        positions.setdefault(d.label, []).append(i)
    keep: set[int] = set()
    for y in sorted(positions):
        idx = positions[y]
        n = budgets[y] if 0 <= y < num_classes else len(idx)
        keep.update(idx if n >= len(idx) else rng.sample(idx, n))
    return [d for i, d in enumerate(train) if i in keep]
