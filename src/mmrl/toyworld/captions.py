"""Captions and class prompts of the toy world.

A caption describes a scene in words from a fixed vocabulary, each word a
single token of CLIP's BPE tokenizer (checked by the tests). Captions vary in
phrasing and in which attributes they mention (like web captions, they are
often incomplete): "a small red triangle on a striped background",
"an image of an orange moon.", "a photo of a green shape".

Every caption carries a `key`: the attribute indices it states, -1 where it
says nothing. Pretraining uses the keys to find captions in a batch that
also describe another image of the batch (false negatives of the contrastive
loss) and masks them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmrl.toyworld.render import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene

# Attribute order of a caption key; indices into these tuples.
KEY_FIELDS = ("shape", "colour", "size", "background")
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

PREFIXES: tuple[str, ...] = ("", "a photo of ", "a picture of ", "an image of ")

# (phrasing, probability). Fields: {size} {colour} {shape} {background};
# "{a}" is the article of the word that follows it.
PHRASINGS: tuple[tuple[str, float], ...] = (
    ("{a} {size} {colour} {shape} on a {background} background", 0.30),
    ("{a} {size} {colour} {shape}", 0.15),
    ("{a} {colour} {shape} on a {background} background", 0.15),
    ("{a} {colour} {shape}", 0.20),
    ("{a} {size} {shape}", 0.05),
    ("{a} {shape}", 0.05),
    ("{a} {colour} shape", 0.05),
    ("{a} {shape} on a {background} background", 0.05),
)

# Every word a caption or a task prompt may use.
VOCABULARY: tuple[str, ...] = tuple(sorted(
    {"a", "an", "photo", "picture", "image", "of", "on", "background", "shape", "."}
    | set(SHAPES) | set(COLOURS) | set(SIZES) | set(BACKGROUNDS) | {"light", "dark"}))


@dataclass(frozen=True)
class Caption:
    text: str
    key: tuple[int, int, int, int]  # (shape, colour, size, background) index, -1 = unstated


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(phrasing: str, values: dict[str, str]) -> str:
    """Fill a phrasing, choosing each "{a}" from the word that follows it."""
    words = phrasing.format(a="{a}", **values).split()
    out = [article(words[i + 1]) if w == "{a}" else w for i, w in enumerate(words)]
    return " ".join(out)


def describe(scene: Scene, rng: np.random.Generator) -> Caption:
    """A random caption of a scene (phrasing, prefix and final period drawn from rng)."""
    probs = np.array([p for _, p in PHRASINGS])
    phrasing = PHRASINGS[rng.choice(len(PHRASINGS), p=probs / probs.sum())][0]
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    values = {"size": scene.size, "colour": scene.colour, "shape": scene.shape,
              "background": scene.background}
    body = _fill(phrasing, values)
    if prefix:
        # "an image of" + "{a} ..." keeps the article of the described object
        body = prefix + body
    if rng.random() < 0.5:
        body += "."
    key = (SHAPES.index(scene.shape) if "{shape}" in phrasing else -1,
           COLOUR_NAMES.index(scene.colour) if "{colour}" in phrasing else -1,
           SIZE_NAMES.index(scene.size) if "{size}" in phrasing else -1,
           BACKGROUNDS.index(scene.background) if "{background}" in phrasing else -1)
    return Caption(body, key)


def scene_key(scene: Scene) -> tuple[int, int, int, int]:
    """The full attribute indices of a scene, in KEY_FIELDS order."""
    return (SHAPES.index(scene.shape), COLOUR_NAMES.index(scene.colour),
            SIZE_NAMES.index(scene.size), BACKGROUNDS.index(scene.background))


def prompt(template: str, class_name: str) -> str:
    """A class prompt: the template filled with the class name (underscores -> spaces)."""
    return template.format(class_name.replace("_", " "))
