"""Few-shot training sets with wrong labels: JoAPR's protocol (CVPR 2024), draw for draw.

JoAPR (yunncheng/JoAPR, ``datasets/add_noise.py``) defines the noisy few-shot benchmark the
MMRL authors used: of each class's ``shots`` training images, ``wrong`` are real images of
OTHER classes labelled as the class. This module draws the same subsets for the same seed and
the same training list (docs/protocols.md, "Noisy labels and imbalanced classes"):

1. Each class's training images, in list order, are cut in two: the first ceil(n / 2) are the
   class's own pool, the rest are what other classes may borrow.
2. symflip: class by class in label order, ``wrong`` images are drawn WITH replacement (Python
   ``random.choices``) among the second halves of all other classes, minus the images an
   earlier class already took; the candidates are listed in the iteration order of a CPython
   ``set`` of list positions, as JoAPR lists them.
   pairflip: first every class's own pool and second half are shuffled (Python
   ``random.shuffle``, own pool then second half, class by class); class i then takes the next
   ``wrong`` images of class i+1's shuffled second half (cyclically: the last class takes from
   class 0), repeating its last image once it is used up. JoAPR picks the donor class with a
   weighted ``random.choices`` whose answer is always i+1 but which consumes one number per
   wrong shot: the stream is advanced the same way here.
3. The class's ``shots`` are drawn from its own pool with numpy's
   ``default_rng(seed).choice(n, shots, replace=n < shots)`` (one generator, class after
   class), and the first ``wrong`` of them are replaced by the borrowed images.

The Python stream is ``random.Random(seed)`` (what JoAPR's ``random.seed(seed)`` gives), and
the caller continues it for the few-shot validation set as JoAPR's caller does. With
``wrong = 0`` a noise type still samples this way (JoAPR's clean baseline: the shots come from
the first half of each pool), unlike CoOp's sampling (`splits.fewshot`).
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import Sequence

from .core import DataError, Datum

NOISE_TYPES = ("none", "symflip", "pairflip")


def noisy_fewshot(items: Sequence[Datum], shots: int, wrong: int, kind: str, seed: int,
                  rng: random.Random | None = None, name: str = "dataset") -> list[Datum]:
    """JoAPR's noisy few-shot training set drawn from ``items`` (a training list).

    Returns, class by class in label order, ``shots`` items per class: its ``wrong`` borrowed
    images first (``label`` = the class, ``true_label`` = the image's own class), then its
    own images (``true_label`` = ``label``). Images may repeat (JoAPR draws with replacement
    where a pool is short and, for symflip, among the borrowed images of one class).

    ``rng``: the Python stream, freshly ``random.Random(seed)`` (created when None); it is left
    where JoAPR leaves it, for the validation few-shot draw that follows. Raises DataError when
    the classes cannot lend ``wrong`` images (symflip: no candidate left; pairflip: the next
    class has a single training image).
    """
    import numpy as np  # here: `mmrl data split` / `verify` import this module, and need no numpy

    if kind not in NOISE_TYPES or kind == "none":
        raise ValueError(f"noise type {kind!r}; expected symflip or pairflip")
    if shots < 1:
        raise DataError(f"{name}: label noise needs a few-shot sample (shots >= 1), got shots = {shots}")
    if not 0 <= wrong <= shots:
        raise DataError(f"{name}: {wrong} wrong shots per class; expected 0..{shots} (the shots per class)")
    py = random.Random(seed) if rng is None else rng
    gen = np.random.default_rng(seed=seed)

    positions: dict[int, list[int]] = {}
    for i, d in enumerate(items):
        positions.setdefault(d.label, []).append(i)
    labels = sorted(positions)
    if len(labels) < 2 and wrong > 0:
        raise DataError(f"{name}: label noise needs at least 2 training classes, got {len(labels)}")
    own: dict[int, list[int]] = {}
    lend: dict[int, list[int]] = {}
    for y in labels:
        half = math.ceil(len(positions[y]) * 0.5)
        own[y], lend[y] = positions[y][:half], positions[y][half:]

    borrowed: dict[int, list[int]] = {}
    if kind == "symflip":
        lendable: list[int] = []
        for y in labels:
            lendable.extend(lend[y])
        pool = set(lendable)
        taken: set[int] = set()
        for y in labels:
            # the same set operation as JoAPR's, so that the candidates come out in the same order
            candidates = list(pool.difference(own[y], lend[y], taken))
            if wrong and not candidates:
                raise DataError(f"{name}: symflip noise: no image of another class is left to give class "
                                f"{items[own[y][0]].classname!r} its {wrong} wrong shots (too few training "
                                "images in the other classes' second halves)")
            borrowed[y] = py.choices(candidates, k=wrong)
            taken.update(borrowed[y])
    else:
        for y in labels:
            py.shuffle(own[y])
            py.shuffle(lend[y])
        nxt = {y: labels[(k + 1) % len(labels)] for k, y in enumerate(labels)}
        cursor = {y: 0 for y in labels}
        for y in labels:
            for _ in range(wrong):
                py.random()  # JoAPR's weighted draw of the donor class (always the next one)
            donor = nxt[y]
            if wrong and not lend[donor]:
                raise DataError(f"{name}: pairflip noise: class {items[own[donor][0]].classname!r} has "
                                f"{len(positions[donor])} training image(s), none in its second half to lend to "
                                f"class {items[own[y][0]].classname!r}")
            got = []
            for _ in range(wrong):
                got.append(lend[donor][cursor[donor]])
                if cursor[donor] + 1 < len(lend[donor]):
                    cursor[donor] += 1
            borrowed[y] = got

    out: list[Datum] = []
    for y in labels:
        mine = own[y]
        picks = gen.choice(len(mine), size=shots, replace=len(mine) < shots)
        chosen = [mine[int(p)] for p in picks]
        chosen[:wrong] = borrowed[y]
        classname = items[own[y][0]].classname
        out.extend(dataclasses.replace(items[i], label=y, classname=classname, true_label=items[i].label)
                   for i in chosen)
    return out


def noise_rate(train: Sequence[Datum]) -> float:
    """The realised share of training rows whose given label is not the image's class."""
    if not train:
        return 0.0
    return sum(d.true_label is not None and d.true_label != d.label for d in train) / len(train)
