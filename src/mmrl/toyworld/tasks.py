"""Downstream benchmark tasks of the toy world: definitions (data) and writer.

Each task is a small classification dataset with a shift the pretraining did
not cover, so zero-shot is imperfect and adaptation has something to learn.
Written to disk it is a folder the project's data layer reads with
`--dataset folder:DIR`:

    DIR/dataset.json   {"name", "template", "image_dir": "images", "split_file": "split.json"}
    DIR/split.json     {"train"|"val"|"test": [[relative path under images/, label, class name], ...]}
    DIR/images/<class_dir>/<n>.png
    DIR/task.json      what the task is (shift, classes and their attributes); informative only

Labels are the positions in `TaskSpec.classes`. The project splits classes
into base (first half of the sorted labels) and novel (the rest), so the
order below is deliberate: base and novel classes are different categories
of the same kind (as in the real benchmarks: disjoint shapes, and in the
"colour shape" tasks disjoint colours too), and within each half every
colour occurs in several classes, so colour alone does not decide.

What adapting to the base classes does to the novel ones differs by task
(measured, docs/toyworld.md). Where the shift is one style shared by every
class (outline, tiny, striped) or one concept (light vs dark), learning it on
the base classes keeps or lifts novel accuracy. In `toy_mixed` the shift
depends on the class: each class has its own style and a style goes with a
different class in the novel half, so tuning on the base classes costs
novel accuracy: there the base/novel trade-off shows.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmrl.fileio import dumps_json, write_text_atomic
from mmrl.toyworld.render import BACKGROUNDS, COLOURS, PRETRAIN_SIZES, SHAPES, Style, render, sample_scene

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassSpec:
    """One class: its name in prompts and the attributes its images have (None = any).

    `style` and `sizes`, when given, replace the task's for this class only
    (a class-dependent shift).
    """
    name: str
    shape: str | None = None
    colour: str | None = None
    style: Style | None = None
    sizes: tuple[str, ...] | None = None

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: classes (label = position), template and the shift it renders."""
    name: str
    template: str
    shift: str                                   # one line: what pretraining did not cover
    classes: tuple[ClassSpec, ...]
    style: Style = field(default_factory=Style)
    sizes: tuple[str, ...] = PRETRAIN_SIZES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    n_train: int = 20                            # per class (16 shots + spare)
    n_val: int = 5                               # per class (4 validation shots)
    n_test: int = 40                             # per class

    @property
    def n_base(self) -> int:
        """Base classes: the first ceil(n / 2) labels (docs/protocols.md#base-and-novel-classes)."""
        return (len(self.classes) + 1) // 2


def _pairs(shapes: str, colours: str) -> tuple[ClassSpec, ...]:
    """Every "colour shape" class of the given shapes x colours, colour-major."""
    return tuple(ClassSpec(f"{c} {s}", s, c) for c in colours.split() for s in shapes.split())


def _shades(colours: str) -> tuple[ClassSpec, ...]:
    return tuple(ClassSpec(f"{shade} {c}", None, f"{shade} {c}") for c in colours.split()
                 for shade in ("light", "dark"))


# The per-class styles of toy_mixed: base and novel shapes take them in the same order, so
# what a style means (which class it goes with) differs between the halves.
_MIXED_STYLES: tuple[tuple[Style, tuple[str, ...] | None], ...] = (
    (Style(fill="outline", outline_width=0.05), None),
    (Style(fill="striped"), None),
    (Style(), ("tiny",)),
    (Style(blur=1.0), None),
)


def _mixed(shapes: str) -> tuple[ClassSpec, ...]:
    return tuple(ClassSpec(s, s, None, style, sizes) for s, (style, sizes) in zip(shapes.split(), _MIXED_STYLES))


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec(
        name="toy_outline",
        template="a photo of a {}.",
        shift="shapes drawn as outlines only; pretraining saw filled shapes",
        classes=_pairs("circle square triangle star", "red blue") + _pairs("cross heart moon arrow", "yellow green"),
        style=Style(fill="outline", outline_width=0.05),
    ),
    TaskSpec(
        name="toy_tiny",
        template="a photo of a {}.",
        shift="tiny objects (radius 8-11% of the image); pretraining saw small (15-21%) and large",
        classes=_pairs("circle triangle cross moon", "pink green") + _pairs("square star heart arrow", "red blue"),
        sizes=("tiny",),
    ),
    TaskSpec(
        name="toy_striped",
        template="a photo of a {}.",
        shift="objects painted with stripes of their colour and a darker shade; pretraining saw flat colours",
        classes=tuple(ClassSpec(s, s, None) for s in SHAPES),
        style=Style(fill="striped"),
    ),
    TaskSpec(
        name="toy_mixed",
        template="a photo of a {}.",
        shift="each class in its own style (outline, striped, tiny, blurred), the same four styles for "
              "the base and the novel shapes",
        classes=_mixed("circle square triangle star") + _mixed("cross heart moon arrow"),
    ),
    TaskSpec(
        name="toy_shades",
        template="a photo of a {} shape.",
        shift="finer classes: light vs dark shades of a colour, which pretraining never named",
        classes=_shades("red yellow blue") + _shades("orange green purple"),
    ),
)}


def _rng(seed: int, task: str, label: int, split: str) -> np.random.Generator:
    """Independent stream per (seed, task, class, split): adding a task or a class changes no other."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), label, SPLITS.index(split)])


def class_scenes(task: TaskSpec, label: int, split: str, n: int, seed: int):
    """The n scenes of one class in one split."""
    cls = task.classes[label]
    rng = _rng(seed, task.name, label, split)
    scenes = []
    for _ in range(n):
        shape = cls.shape or SHAPES[rng.integers(len(SHAPES))]
        colour = cls.colour or tuple(COLOURS)[rng.integers(len(COLOURS))]
        sizes = cls.sizes or task.sizes
        size = sizes[rng.integers(len(sizes))]
        background = task.backgrounds[rng.integers(len(task.backgrounds))]
        scenes.append(sample_scene(rng, shape, colour, size, background, class_style(task, label)))
    return scenes


def class_style(task: TaskSpec, label: int) -> Style:
    return task.classes[label].style or task.style


def split_sizes(task: TaskSpec) -> dict[str, int]:
    return {"train": task.n_train, "val": task.n_val, "test": task.n_test}


def write_task(task: TaskSpec, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Render a task into out_dir/<task.name>/ and return that folder.

    Image n of a class is `images/<class folder>/<n>.png`, numbered across
    the splits (train first, then val, then test).
    """
    root = Path(out_dir) / task.name
    images_dir = root / "images"
    split: dict[str, list] = {s: [] for s in SPLITS}
    for label, cls in enumerate(task.classes):
        (images_dir / cls.folder).mkdir(parents=True, exist_ok=True)
        index = 0
        for name, n in split_sizes(task).items():
            for scene in class_scenes(task, label, name, n, seed):
                rel = f"{cls.folder}/{index}.png"
                Image.fromarray(render(scene, class_style(task, label))).save(images_dir / rel, optimize=False)
                split[name].append([rel, label, cls.name])
                index += 1
    dataset = {"name": task.name, "template": task.template, "image_dir": "images", "split_file": "split.json"}
    info = {"name": task.name, "shift": task.shift, "template": task.template, "seed": seed,
            "base_labels": list(range(task.n_base)),
            "novel_labels": list(range(task.n_base, len(task.classes))),
            "classes": [{"label": i, "name": c.name, "shape": c.shape or "any", "colour": c.colour or "any",
                         "sizes": list(c.sizes or task.sizes), "style": asdict(class_style(task, i))}
                        for i, c in enumerate(task.classes)],
            "backgrounds": list(task.backgrounds),
            "images_per_class": split_sizes(task)}
    for name, obj in (("split.json", split), ("dataset.json", dataset), ("task.json", info)):
        _write_json(root / name, obj)
    return root


def write_tasks(out_dir: str | os.PathLike, names: list[str] | None = None, seed: int = 0) -> list[Path]:
    """Write the named tasks (default: all) under out_dir; returns their folders."""
    names = list(TASKS) if names is None else names
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown toy task(s) {unknown}: expected some of {list(TASKS)}")
    return [write_task(TASKS[n], out_dir, seed) for n in names]


def _write_json(path: Path, obj) -> None:
    write_text_atomic(dumps_json(obj, indent=1) + "\n", path)
