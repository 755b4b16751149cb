"""Seeded procedural renderer of the toy world.

An image shows one object on a background. The categorical attributes are
what captions and class names talk about:

- shape (8): circle, square, triangle, star, cross, heart, moon, arrow
- colour (8): red, orange, yellow, green, blue, purple, pink, white
  (plus "light X" / "dark X" shades, which pretraining never shows)
- size: small, large (pretraining); tiny (a downstream shift only)
- background texture (4): plain, striped, dotted, grid

Everything else is nuisance drawn per image so that recognition is not
trivial: position, rotation, exact radius, object colour jitter, background
grey level / tint / pattern period, orientation and phase, pixel noise.

A `Scene` holds every random draw, so `render(scene, style)` is a pure
function: the same scene and style always give the same pixels. Images are
drawn at `SUPERSAMPLE` times the output resolution and averaged down (cheap
anti-aliasing); the output is uint8 RGB of shape (H, W, 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 32  # the tiny CLIP's input resolution
SUPERSAMPLE = 2

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "arrow")

# Base RGB in [0, 1]; chosen to stay apart after jitter and to stand out on
# the grey backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.30, 0.95),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.00, 0.50, 0.75),
    "white": (0.97, 0.97, 0.97),
}

# Object radius as a fraction of the image side (uniform in the range).
SIZES: dict[str, tuple[float, float]] = {
    "tiny": (0.08, 0.11),
    "small": (0.15, 0.21),
    "large": (0.30, 0.40),
}
PRETRAIN_SIZES: tuple[str, ...] = ("small", "large")

BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "grid")
STRIPE_PERIOD = 0.125  # of striped objects (a downstream shift), fraction of the image side

# Shades are a downstream "finer class" shift: "light red" mixes the colour
# with white, "dark red" scales it down.
SHADES: dict[str, tuple[str, float]] = {"light": ("mix_white", 0.35), "dark": ("scale", 0.6)}


def colour_rgb(name: str) -> tuple[float, float, float]:
    """RGB in [0, 1] of a colour name, optionally prefixed by a shade ("dark red")."""
    words = name.split()
    if len(words) == 2 and words[0] in SHADES and words[1] in COLOURS:
        op, amount = SHADES[words[0]]
        base = np.array(COLOURS[words[1]])
        rgb = base * (1 - amount) + amount if op == "mix_white" else base * amount
        return tuple(float(v) for v in rgb)
    if name in COLOURS:
        return COLOURS[name]
    raise ValueError(f"unknown colour {name!r}: expected one of {sorted(COLOURS)}, "
                     f"optionally prefixed by one of {sorted(SHADES)}")


@dataclass(frozen=True)
class Style:
    """How scenes are perturbed (sampling) and drawn (rendering).

    The defaults are the pretraining distribution; downstream tasks change a
    few fields to create a shift (outline-only shapes, blur, stronger jitter).
    """
    fill: str = "solid"            # "solid", "outline" or "striped" (stripes of the colour and a darker shade)
    outline_width: float = 0.06    # outline thickness, fraction of the image side
    blur: float = 0.0              # Gaussian blur sigma in output pixels (0 = none)
    noise: float = 0.03            # std of additive pixel noise, in [0, 1] units
    colour_jitter: float = 0.05    # std of per-channel object colour offset
    brightness_jitter: float = 0.12  # object brightness factor drawn from 1 +- this
    max_rotation: float = 20.0     # degrees, uniform in +-
    bg_grey: tuple[float, float] = (0.22, 0.55)  # background grey level range
    image_size: int = IMAGE_SIZE


@dataclass(frozen=True)
class Scene:
    """Every random draw behind one image (categorical attributes + nuisance)."""
    shape: str
    colour: str
    size: str
    background: str
    cx: float           # object centre, fraction of the image side (x right, y down)
    cy: float
    radius: float       # fraction of the image side
    angle: float        # degrees, counter-clockwise
    rgb: tuple[float, float, float]
    bg_rgb: tuple[float, float, float]
    bg_pattern_rgb: tuple[float, float, float]
    bg_angle: float     # stripe orientation, radians
    bg_period: float    # pattern period, fraction of the image side
    bg_phase: float     # in [0, 1)
    noise_seed: int


def sample_scene(rng: np.random.Generator, shape: str, colour: str, size: str, background: str,
                 style: Style = Style()) -> Scene:
    """Draw the nuisance parameters of one scene with the given attributes."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: expected one of {tuple(SIZES)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}: expected one of {BACKGROUNDS}")
    lo, hi = SIZES[size]
    radius = float(rng.uniform(lo, hi))
    margin = radius + 0.03
    cx, cy = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
    angle = float(rng.uniform(-style.max_rotation, style.max_rotation))

    base = np.array(colour_rgb(colour))
    brightness = rng.uniform(1 - style.brightness_jitter, 1 + style.brightness_jitter * 0.5)
    rgb = np.clip(base * brightness + rng.normal(0, style.colour_jitter, 3), 0, 1)

    grey = rng.uniform(*style.bg_grey)
    bg = np.clip(grey + rng.normal(0, 0.04, 3), 0, 1)
    delta = rng.uniform(0.12, 0.22) * rng.choice([-1.0, 1.0])
    pattern = np.clip(bg + delta, 0.05, 0.85)
    period = {"plain": 0.2, "striped": rng.uniform(0.14, 0.24),
              "dotted": rng.uniform(0.17, 0.25), "grid": rng.uniform(0.2, 0.3)}[background]
    return Scene(shape=shape, colour=colour, size=size, background=background,
                 cx=cx, cy=cy, radius=radius, angle=angle,
                 rgb=tuple(float(v) for v in rgb), bg_rgb=tuple(float(v) for v in bg),
                 bg_pattern_rgb=tuple(float(v) for v in pattern),
                 bg_angle=float(rng.uniform(0, math.pi)), bg_period=float(period),
                 bg_phase=float(rng.uniform(0, 1)), noise_seed=int(rng.integers(2**31)))


# ---------------------------------------------------------------- shapes
# Each shape is a list of (polygon, fill) drawing operations on a unit
# canvas (object radius 1, y up); fill 255 paints the object, 0 cuts it out.

def _regular(n: int, radius: float = 1.0, phase: float = math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], 1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y + 2.5], 1) / 16.5


@lru_cache(maxsize=None)
def shape_ops(shape: str) -> tuple[tuple[np.ndarray, int], ...]:
    """Drawing operations of a shape on the unit canvas (cached)."""
    w = 0.32  # half width of the cross arms and the arrow shaft
    ops = {
        "circle": [(_regular(40), 255)],
        "square": [(np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]), 255)],
        "triangle": [(_regular(3, 1.0) + [0, -0.15], 255)],
        "star": [(_star(), 255)],
        "cross": [(np.array([[-w, 1], [w, 1], [w, w], [1, w], [1, -w], [w, -w], [w, -1],
                             [-w, -1], [-w, -w], [-1, -w], [-1, w], [-w, w]]), 255)],
        "heart": [(_heart(), 255)],
        "moon": [(_regular(40), 255), (_regular(40, 0.85) + [0.5, 0.25], 0)],
        "arrow": [(np.array([[-1, -0.25], [0.15, -0.25], [0.15, -0.7], [1, 0], [0.15, 0.7],
                             [0.15, 0.25], [-1, 0.25]]), 255)],
    }[shape]
    return tuple((np.asarray(poly, dtype=np.float64), fill) for poly, fill in ops)


# ---------------------------------------------------------------- drawing

@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) as fractions of the side, each (n, n)."""
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c, indexing="ij")


def _background(scene: Scene, n: int) -> np.ndarray:
    """(n, n, 3) float background with its texture."""
    yy, xx = _grid(n)
    bg = np.empty((n, n, 3))
    bg[:] = scene.bg_rgb
    if scene.background == "plain":
        return bg
    p = scene.bg_period
    if scene.background == "striped":
        t = (xx * math.cos(scene.bg_angle) + yy * math.sin(scene.bg_angle)) / p + scene.bg_phase
        mask = (t % 1.0) < 0.5
    elif scene.background == "dotted":
        u, v = (xx / p + scene.bg_phase) % 1.0 - 0.5, (yy / p + scene.bg_phase) % 1.0 - 0.5
        mask = u * u + v * v < 0.22 ** 2
    else:  # grid
        u, v = (xx / p + scene.bg_phase) % 1.0, (yy / p + scene.bg_phase) % 1.0
        mask = (u < 0.18) | (v < 0.18)
    bg[mask] = scene.bg_pattern_rgb
    return bg


def _object_mask(scene: Scene, style: Style, n: int) -> np.ndarray:
    """(n, n) float coverage of the object in [0, 1]."""
    a = math.radians(scene.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, fill in shape_ops(scene.shape):
        p = poly @ rot.T * scene.radius
        # unit canvas has y up; image rows grow downwards
        px = (scene.cx + p[:, 0]) * n
        py = (scene.cy - p[:, 1]) * n
        draw.polygon(list(zip(px.tolist(), py.tolist())), fill=fill)
    if style.fill == "outline":
        k = max(1, round(style.outline_width * n))
        inner = canvas.filter(ImageFilter.MinFilter(2 * k + 1))
        return (np.asarray(canvas, dtype=np.float64) - np.asarray(inner, dtype=np.float64)) / 255.0
    if style.fill not in ("solid", "striped"):
        raise ValueError(f"unknown fill {style.fill!r}: expected 'solid', 'outline' or 'striped'")
    return np.asarray(canvas, dtype=np.float64) / 255.0


def _object_colour(scene: Scene, style: Style, n: int) -> np.ndarray:
    """(n, n, 3) colour of the object at each pixel (flat, or striped across the background's stripes)."""
    rgb = np.asarray(scene.rgb)
    if style.fill != "striped":
        return np.broadcast_to(rgb, (n, n, 3))
    yy, xx = _grid(n)
    angle = scene.bg_angle + math.pi / 2
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / STRIPE_PERIOD + scene.bg_phase
    dark = ((t % 1.0) < 0.5)[..., None]
    return np.where(dark, rgb * 0.45, rgb)


def render(scene: Scene, style: Style = Style()) -> np.ndarray:
    """Draw a scene: uint8 RGB array of shape (style.image_size, style.image_size, 3)."""
    out = style.image_size
    n = out * SUPERSAMPLE
    mask = _object_mask(scene, style, n)[..., None]
    img = _background(scene, n) * (1 - mask) + _object_colour(scene, style, n) * mask
    img = img.reshape(out, SUPERSAMPLE, out, SUPERSAMPLE, 3).mean(axis=(1, 3))
    if style.blur > 0:
        pil = Image.fromarray(np.round(img * 255).astype(np.uint8))
        img = np.asarray(pil.filter(ImageFilter.GaussianBlur(style.blur)), dtype=np.float64) / 255.0
    if style.noise > 0:
        img = img + np.random.default_rng(scene.noise_seed).normal(0, style.noise, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def render_batch(scenes: list[Scene], style: Style = Style()) -> np.ndarray:
    """Draw many scenes: uint8 array (N, H, W, 3)."""
    return np.stack([render(s, style) for s in scenes])

