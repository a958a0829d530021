"""Procedural image-caption generator of vlprompt's synthetic vision-language world.

Every image shows at most one object (or a bare texture) and is fully described by an
:class:`ObjectSpec`. Images are rendered with vectorised numpy from per-shape signed-distance tables
(computed once, lazily) looked up on a rotated, scaled coordinate grid, so a 64x64 image costs a few
hundred microseconds. Everything is deterministic: item ``i`` of a stream is rendered from
``item_rng(seed, stream, i)`` alone, in any order and in any process.

What exists
-----------

==============  =====================================================================================
attribute       values
==============  =====================================================================================
shape (ID)      circle, square, triangle, star, hexagon, cross, heart, ring, diamond, crescent, arrow,
                pentagon  (``ID_SHAPES``, the label space of every in-distribution dataset)
shape (OOD)     flower, hourglass, teardrop, trapezoid  (``OOD_SHAPES``: pretrained on, never an ID
                label)
shape (novel)   lightning, semicircle, house  (``NOVEL_SHAPES``: never in pretraining, only in OOD sets)
colour          red, orange, yellow, green, blue, purple, pink, brown, black, white  (``COLOURS``)
pattern         plain, striped, dotted, checkered, plaid, wavy, zigzag  (``PATTERNS``)
size            small (radius 30-40 % of the half side, 9 positions), large (58-80 %, centred)
position        top left, top, top right, left, centre, right, bottom left, bottom, bottom right
background      plain (pastel / dark tint), grass, sky, sand, wood, water, speckled, paper (sketch only)
style           photo (shading, drop shadow, mild noise), sketch (pencil outline on paper, no colour or
                pattern), cartoon (flat fill, black outline, plain background), painting (wobbly edges,
                brush texture, blur), pixelated (4 px blocks, posterised, pattern not visible), noisy
                (photo + strong Gaussian noise)
texture         object-free images (``TEXTURES``): grass, sky, sand, wood, water, speckles, stripes, dots,
                checkerboard, zigzags
==============  =====================================================================================

Nameable categories: 19 shapes x 10 colours = 190 objects, 7 patterns, 10 textures, 6 styles.

What is held out where
----------------------

===========================  ========================  ==========================================
concept                      pretraining captions       downstream (``vlprompt.world.datasets``)
===========================  ========================  ==========================================
ID shapes x colours          yes, except HELDOUT_PAIRS  world_shapes*, world_objects*, world_patterns
``HELDOUT_PAIRS`` (12)       never                      world_objects classes (compositional test)
OOD shapes (4)               yes                        world_ood_shapes, world_ood_objects only
novel shapes (3)             never                      world_ood_novel only
textures (10)                yes (5 % of pairs)         world_ood_textures only
styles                       all 6 (photo 40 %)         photo for ID sets; other styles = shifts
the words "a photo of"       never (no "photo" at all)  the downstream template "a photo of a {}."
===========================  ========================  ==========================================

The pretraining stream (:func:`pretrain_item`) comes in groups of ``PRETRAIN_GROUP_SIZE`` consecutive
items that share style, colour, pattern, size, position and background and differ only in shape, so
every contrastive batch holds hard negatives that only the shape tells apart (colour, style and
background alone would otherwise identify most pairs of a batch and let shape recognition lag).

``HELDOUT_PAIRS`` holds one colour of each ID shape (e.g. "blue circle", "red star"): pretraining sees
every colour and every shape, but never those combinations. Pretraining captions are varied ("a small
red striped triangle on grass", "a drawing of a blue star", "an image showing a large green hexagon
with dots", ...) and never contain the word "photo", so the hand-crafted downstream prompt is slightly
off-distribution and leaves room for prompt learning.

Public API: :func:`render`, :func:`caption`, :func:`sample_spec`, :func:`item_rng`,
:func:`pretrain_spec`, :func:`pretrain_item`, :func:`sample_pairs`, :class:`ObjectSpec`, :class:`Domain`.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import cast

import numpy as np

IMAGE_SIZE = 64

ID_SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross",
    "heart", "ring", "diamond", "crescent", "arrow", "pentagon",
)  # fmt: skip
OOD_SHAPES: tuple[str, ...] = ("flower", "hourglass", "teardrop", "trapezoid")
NOVEL_SHAPES: tuple[str, ...] = ("lightning", "semicircle", "house")
SHAPES: tuple[str, ...] = ID_SHAPES + OOD_SHAPES + NOVEL_SHAPES
PRETRAIN_SHAPES: tuple[str, ...] = ID_SHAPES + OOD_SHAPES

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.98, 0.88, 0.10),
    "green": (0.13, 0.62, 0.18),
    "blue": (0.12, 0.30, 0.88),
    "purple": (0.55, 0.18, 0.72),
    "pink": (1.00, 0.52, 0.76),
    "brown": (0.50, 0.30, 0.12),
    "black": (0.07, 0.07, 0.07),
    "white": (0.97, 0.97, 0.97),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "plaid", "wavy", "zigzag")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (-0.55, -0.55), "top": (0.0, -0.55), "top right": (0.55, -0.55),
    "left": (-0.55, 0.0), "centre": (0.0, 0.0), "right": (0.55, 0.0),
    "bottom left": (-0.55, 0.55), "bottom": (0.0, 0.55), "bottom right": (0.55, 0.55),
}  # fmt: skip
SCENE_BACKGROUNDS: tuple[str, ...] = ("plain", "grass", "sky", "sand", "wood", "water", "speckled")
BACKGROUNDS: tuple[str, ...] = SCENE_BACKGROUNDS + ("paper",)
STYLES: tuple[str, ...] = ("photo", "sketch", "cartoon", "painting", "pixelated", "noisy")
PRETRAIN_STYLE_WEIGHTS: dict[str, float] = {
    "photo": 0.40, "sketch": 0.12, "cartoon": 0.12, "painting": 0.12, "pixelated": 0.12, "noisy": 0.12,
}  # fmt: skip
# Object-free images: texture name -> (background, pattern); a pattern other than "plain" fills the frame.
TEXTURES: dict[str, tuple[str, str]] = {
    "grass": ("grass", "plain"), "sky": ("sky", "plain"), "sand": ("sand", "plain"),
    "wood": ("wood", "plain"), "water": ("water", "plain"), "speckles": ("speckled", "plain"),
    "stripes": ("plain", "striped"), "dots": ("plain", "dotted"),
    "checkerboard": ("plain", "checkered"), "zigzags": ("plain", "zigzag"),
}  # fmt: skip
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("blue", "circle"), ("yellow", "square"), ("green", "triangle"), ("red", "star"),
    ("pink", "hexagon"), ("orange", "cross"), ("purple", "heart"), ("brown", "ring"),
    ("white", "diamond"), ("black", "crescent"), ("green", "arrow"), ("blue", "pentagon"),
})  # fmt: skip
TEXTURE_FRACTION = 0.05  # share of pretraining pairs that show a bare texture

# Which attributes a style shows (and therefore which captions may mention).
_SHOWS_COLOUR = {s: s != "sketch" for s in STYLES}
_SHOWS_PATTERN = {s: s not in ("sketch", "pixelated") for s in STYLES}
_STYLE_BACKGROUNDS: dict[str, tuple[str, ...]] = {"sketch": ("paper",), "cartoon": ("plain",)}


# --------------------------------------------------------------------------------------------------
# Specs and sampling
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """Everything that determines an image up to its pixel noise.

    ``shape`` is None for an object-free texture image (then ``pattern`` != "plain" fills the frame in
    ``colour``). ``scale`` is the object radius as a fraction of half the image side; ``cx``/``cy`` its
    centre in [-1, 1] (y down); ``angle`` its rotation in radians.
    """

    shape: str | None
    colour: str
    pattern: str
    size: str
    position: str
    background: str
    style: str
    scale: float
    cx: float
    cy: float
    angle: float


@dataclass(frozen=True)
class Domain:
    """The distribution a stream of specs is drawn from.

    Attributes:
        shapes / colours / patterns / backgrounds: the pools attributes are drawn from (uniformly).
        style_weights: style -> probability (normalised).
        exclude: (colour, shape) pairs never drawn (rejection-sampled away).
        texture_fraction: share of object-free texture images (pretraining stream).
        sizes: size pool.
        group_size: pretraining stream only: consecutive items ``g*k .. g*k+g-1`` form a group that
            shares style, colour, pattern, size, position and background and differs in shape (all
            distinct), so a contrastive batch holds hard negatives that only shape tells apart.
    """

    shapes: tuple[str, ...] = PRETRAIN_SHAPES
    colours: tuple[str, ...] = COLOUR_NAMES
    patterns: tuple[str, ...] = PATTERNS
    backgrounds: tuple[str, ...] = SCENE_BACKGROUNDS
    style_weights: Mapping[str, float] = field(default_factory=lambda: dict(PRETRAIN_STYLE_WEIGHTS))
    exclude: frozenset[tuple[str, str]] = HELDOUT_PAIRS
    texture_fraction: float = 0.0
    sizes: tuple[str, ...] = SIZES
    group_size: int = 1

    def __post_init__(self) -> None:
        unknown = [s for s in self.style_weights if s not in STYLES]
        unknown += [s for s in self.shapes if s not in SHAPES]
        unknown += [c for c in self.colours if c not in COLOURS]
        unknown += [p for p in self.patterns if p not in PATTERNS]
        if unknown:
            raise ValueError(f"unknown world attribute(s): {unknown}")


PRETRAIN_GROUP_SIZE = 4
PRETRAIN_DOMAIN = Domain(texture_fraction=TEXTURE_FRACTION, group_size=PRETRAIN_GROUP_SIZE)


def item_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The random generator of item ``index`` of ``stream`` (e.g. "pretrain", "shapes/train")."""
    return np.random.default_rng((int(seed), zlib.crc32(stream.encode()), int(index)))


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]


def _pick_weighted(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = list(weights)
    cum = np.cumsum([weights[n] for n in names])
    return names[min(bisect.bisect_right(cum.tolist(), rng.random() * cum[-1]), len(names) - 1)]


def _luma(rgb: Sequence[float] | np.ndarray) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def sample_spec(
    rng: np.random.Generator,
    domain: Domain = PRETRAIN_DOMAIN,
    *,
    shape: str | None = None,
    colour: str | None = None,
    pattern: str | None = None,
    style: str | None = None,
    texture: str | None = None,
    size: str | None = None,
    position: str | None = None,
    background: str | None = None,
) -> ObjectSpec:
    """Draw an object spec from ``domain``; keyword arguments fix an attribute.

    ``texture`` asks for an object-free texture image instead (``domain.texture_fraction`` is used by
    the pretraining stream, :func:`pretrain_spec`, not here). A fixed ``position`` needs a fixed
    ``size`` ("centre" for "large").
    """
    style = style or _pick_weighted(rng, domain.style_weights)
    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; known: {', '.join(STYLES)}")
    if texture is not None:
        return _texture_spec(rng, texture, style, colour)
    shape = shape or _pick(rng, domain.shapes)
    if colour is None:
        allowed = [c for c in domain.colours if (c, shape) not in domain.exclude]
        if not allowed:
            raise ValueError(f"every colour of '{shape}' is excluded")
        colour = _pick(rng, allowed)
    pattern = pattern or _pick(rng, domain.patterns)
    size = size or _pick(rng, domain.sizes)
    if size == "small":
        position = position or _pick(rng, tuple(POSITIONS))
        scale, jitter = 0.30 + 0.10 * rng.random(), 0.06
    else:
        position, scale, jitter = "centre", 0.58 + 0.22 * rng.random(), 0.10
    px, py = POSITIONS[position]
    cx = px + jitter * (2 * rng.random() - 1)
    cy = py + jitter * (2 * rng.random() - 1)
    max_rot = math.radians(_SHAPE_MAX_ROTATION.get(shape, 180))
    angle = max_rot * (2 * rng.random() - 1)
    background = background or _pick(rng, _backgrounds_for(style, colour, domain.backgrounds))
    return ObjectSpec(shape, colour, pattern, size, position, background, style, scale, cx, cy, angle)


def _texture_spec(rng: np.random.Generator, texture: str, style: str, colour: str | None) -> ObjectSpec:
    if style == "sketch":
        style = "photo"  # a pencil outline of nothing shows nothing
    background, pattern = TEXTURES[texture]
    colour = colour or _pick(rng, COLOUR_NAMES)
    angle = math.pi * (2 * rng.random() - 1)
    return ObjectSpec(None, colour, pattern, "large", "centre", background, style, 1.0, 0.0, 0.0, angle)


@cache
def _backgrounds_for(style: str, colour: str, pool: tuple[str, ...]) -> tuple[str, ...]:
    """Backgrounds of ``pool`` usable for ``style`` that contrast with ``colour``."""
    if style in _STYLE_BACKGROUNDS:
        return _STYLE_BACKGROUNDS[style]
    rgb = np.array(COLOURS[colour])
    ok = tuple(b for b in pool if np.abs(rgb - _BACKGROUND_MEAN[b]).sum() > 0.45)
    return ok or ("plain",)


# --------------------------------------------------------------------------------------------------
# Shapes: mask functions on canonical coordinates (x right, y up, object within radius ~0.95)
# --------------------------------------------------------------------------------------------------

_TABLE_SIZE = 160  # signed-distance table resolution
_TABLE_EXTENT = 1.25  # the table covers [-extent, extent]^2 in object units

MaskFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _polygon(vertices: Sequence[tuple[float, float]]) -> MaskFn:
    """Even-odd point-in-polygon mask of a closed polygon."""
    vs = np.asarray(vertices, dtype=np.float64)

    def mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = np.zeros(x.shape, dtype=bool)
        for (x1, y1), (x2, y2) in zip(vs, np.roll(vs, -1, axis=0)):
            if y1 == y2:
                continue
            crosses = (y1 > y) != (y2 > y)
            inside ^= crosses & (x < (x2 - x1) * (y - y1) / (y2 - y1) + x1)
        return inside

    return mask


def _regular(k: int, radius: float, rot: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(rot + 2 * math.pi * i / k), radius * math.sin(rot + 2 * math.pi * i / k))
            for i in range(k)]  # fmt: skip


def _star_vertices(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    rs = [outer if i % 2 == 0 else inner for i in range(2 * points)]
    angles = [math.pi / 2 + math.pi * i / points for i in range(2 * points)]
    return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(rs, angles)]


def _union(*masks: MaskFn) -> MaskFn:
    return lambda x, y: np.logical_or.reduce([m(x, y) for m in masks])


def _disk(cx: float, cy: float, r: float) -> MaskFn:
    return lambda x, y: (x - cx) ** 2 + (y - cy) ** 2 < r * r


def _bar(x: np.ndarray, y: np.ndarray, half_width: float, half_length: float) -> np.ndarray:
    return (np.abs(x) < half_width) & (np.abs(y) < half_length)


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    hx, hy = x * 1.2, y * 1.2 + 0.15
    return (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 < 0


def _flower(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r, th = np.hypot(x, y), np.arctan2(y, x)
    return r < 0.38 + 0.56 * np.abs(np.cos(2.5 * th - math.pi / 4)) ** 0.7


_SHAPE_MASKS: dict[str, MaskFn] = {
    "circle": _disk(0, 0, 0.9),
    "square": lambda x, y: np.maximum(np.abs(x), np.abs(y)) < 0.7,
    "triangle": _polygon(_regular(3, 0.98)),
    "star": _polygon(_star_vertices(5, 0.97, 0.42)),
    "hexagon": _polygon(_regular(6, 0.9, 0.0)),
    "cross": lambda x, y: _bar(x, y, 0.27, 0.88) | _bar(y, x, 0.27, 0.88),
    "heart": _heart,
    "ring": lambda x, y: (np.hypot(x, y) < 0.92) & (np.hypot(x, y) > 0.52),
    "diamond": lambda x, y: np.abs(x) / 0.62 + np.abs(y) / 0.95 < 1,
    "crescent": lambda x, y: _disk(0, 0, 0.9)(x, y) & ~_disk(0.42, 0.15, 0.74)(x, y),
    "arrow": _polygon(
        [(-0.9, -0.2), (0.15, -0.2), (0.15, -0.58), (0.93, 0), (0.15, 0.58), (0.15, 0.2), (-0.9, 0.2)]
    ),  # fmt: skip
    "pentagon": _polygon(_regular(5, 0.93)),
    "flower": _flower,
    "hourglass": _polygon([(-0.68, 0.9), (0.68, 0.9), (0.1, 0), (0.68, -0.9), (-0.68, -0.9), (-0.1, 0)]),
    "teardrop": _union(_disk(0, -0.3, 0.6), _polygon([(0, 0.97), (0.526, -0.012), (-0.526, -0.012)])),
    "trapezoid": _polygon([(-0.35, 0.55), (0.35, 0.55), (0.88, -0.55), (-0.88, -0.55)]),
    "lightning": _polygon(
        [(0.2, 0.97), (-0.55, -0.08), (-0.04, -0.08), (-0.3, -0.97), (0.58, 0.18), (0.07, 0.18), (0.5, 0.97)]
    ),  # fmt: skip
    "semicircle": lambda x, y: _disk(0, -0.38, 0.95)(x, y) & (y > -0.38),
    "house": _union(
        lambda x, y: (np.abs(x) < 0.6) & (y > -0.88) & (y < 0.12),
        _polygon([(-0.82, 0.08), (0.82, 0.08), (0, 0.92)]),
    ),  # fmt: skip
}
# Largest rotation (degrees) that keeps a shape's name right (a square turned 45 degrees is a diamond).
_SHAPE_MAX_ROTATION: dict[str, float] = {
    "square": 15, "cross": 20, "heart": 25, "diamond": 15, "hourglass": 25, "teardrop": 30,
    "trapezoid": 20, "lightning": 25, "house": 15,
}  # fmt: skip


@cache
def _sdf_table(shape: str) -> np.ndarray:
    """Signed distance (object units, < 0 inside) of ``shape`` on the table grid; float32 [T, T].

    Rows go down the image (y down), columns right. Exact Euclidean distance from each cell centre to
    the nearest boundary cell (separable brute force, two [T, T, T] passes); ~15 ms per shape.
    """
    t = _TABLE_SIZE
    c = (np.arange(t) + 0.5) / t * 2 * _TABLE_EXTENT - _TABLE_EXTENT
    x, y_down = np.meshgrid(c, c)
    inside = _SHAPE_MASKS[shape](x, -y_down)
    pad = np.pad(inside, 1, mode="edge")
    boundary = inside & (~pad[:-2, 1:-1] | ~pad[2:, 1:-1] | ~pad[1:-1, :-2] | ~pad[1:-1, 2:])
    idx = np.arange(t, dtype=np.float32)
    offsets = np.abs(idx[:, None] - idx[None, :])  # [T, T] |i - k|
    # pass 1: g[i, j] = distance (in cells) along column j to the nearest boundary cell
    g = np.where(boundary[None, :, :], offsets[:, :, None], np.float32(4 * t)).min(axis=1)
    # pass 2: d2[i, j] = min_k g[i, k]^2 + (j - k)^2
    d2 = (g[:, None, :] ** 2 + offsets[None, :, :] ** 2).min(axis=2)
    cells = np.sqrt(d2) + 0.5
    return (np.where(inside, -cells, cells) * (2 * _TABLE_EXTENT / t)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Texture banks (fixed seeds; random crops per image)
# --------------------------------------------------------------------------------------------------

_BACKGROUND_MEAN: dict[str, np.ndarray] = {
    "plain": np.array([0.5, 0.5, 0.5]), "grass": np.array([0.3, 0.58, 0.18]),
    "sky": np.array([0.6, 0.77, 0.97]), "sand": np.array([0.86, 0.76, 0.55]),
    "wood": np.array([0.55, 0.36, 0.2]), "water": np.array([0.12, 0.42, 0.6]),
    "speckled": np.array([0.5, 0.5, 0.5]), "paper": np.array([0.97, 0.96, 0.93]),
}  # fmt: skip
_PLAIN_TINTS = np.array([
    [0.95, 0.93, 0.85], [0.82, 0.82, 0.82], [0.78, 0.88, 0.97], [0.97, 0.85, 0.88],
    [0.80, 0.94, 0.84], [0.88, 0.84, 0.96], [0.35, 0.40, 0.46], [0.22, 0.22, 0.24],
], dtype=np.float32)  # fmt: skip


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise, float32 [size, size] in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1))
    pos = np.linspace(0, cells, size, endpoint=False)
    i0 = pos.astype(int)
    f = pos - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return (rows[:, i0] * (1 - f) + rows[:, i0 + 1] * f).astype(np.float32)


def _octaves(rng: np.random.Generator, size: int, base_cells: int, n: int = 3) -> np.ndarray:
    out = cast(np.ndarray, sum(0.5**k * _smooth_noise(rng, size, base_cells * 2**k) for k in range(n)))  # n >= 1
    return (out / sum(0.5**k for k in range(n))).astype(np.float32)


def _mix(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, t: np.ndarray) -> np.ndarray:
    a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a_ + (b_ - a_) * t[..., None]


def _make_texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size, 3] float32 texture of background ``name``."""
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    xx = yy.T
    if name == "grass":
        blades = rng.random((size // 2 + 1, size)).repeat(2, axis=0)[:size]
        blades = np.cumsum(blades, axis=0)
        blades = (blades[6:] - blades[:-6]) / 6
        blades = np.pad(blades, ((3, 3), (0, 0)), mode="edge")
        t = np.clip(0.6 * (blades - 0.5) * 3 + 0.5 * _octaves(rng, size, 4), 0, 1)
        return _mix((0.15, 0.40, 0.08), (0.50, 0.80, 0.28), t)
    if name == "sky":
        clouds = np.clip((_octaves(rng, size, 3, 4) - 0.55) * 4, 0, 1)
        grad = _mix((0.40, 0.62, 0.95), (0.75, 0.87, 1.0), yy % 1.0)
        return grad + (np.float32(0.97) - grad) * clouds[..., None]
    if name == "sand":
        t = 0.6 * _octaves(rng, size, 6) + 0.4 * rng.random((size, size), dtype=np.float32)
        return _mix((0.76, 0.66, 0.45), (0.95, 0.86, 0.65), t)
    if name == "wood":
        grain = np.sin(xx * 40 + 6 * _octaves(rng, size, 3)) * 0.5 + 0.5
        return _mix((0.40, 0.24, 0.11), (0.68, 0.47, 0.27), grain**2)
    if name == "water":
        waves = np.sin(yy * 60 + 5 * _octaves(rng, size, 4)) * 0.5 + 0.5
        return _mix((0.06, 0.32, 0.52), (0.30, 0.62, 0.78), waves**4)
    if name == "speckled":
        cells = rng.random((size // 3 + 1, size // 3 + 1, 3), dtype=np.float32)
        return 0.35 + 0.45 * cells.repeat(3, 0).repeat(3, 1)[:size, :size]
    if name == "paper":
        return _mix((0.93, 0.92, 0.88), (0.99, 0.99, 0.97), _octaves(rng, size, 8))
    raise ValueError(f"no texture for background '{name}'")


@cache
def _texture_bank(name: str, image_size: int) -> np.ndarray:
    """A [2S, 2S, 3] float32 texture from which [S, S] crops are taken."""
    rng = np.random.default_rng((7, zlib.crc32(name.encode()), image_size))
    return np.ascontiguousarray(_make_texture(name, 2 * image_size, rng), dtype=np.float32)


@cache
def _noise_banks(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian RGB noise [2S, 2S, 3] and low-frequency noise [2S, 2S] in [-1, 1] (float32)."""
    rng = np.random.default_rng((11, image_size))
    white = rng.standard_normal((2 * image_size, 2 * image_size, 3), dtype=np.float32)
    low = 2 * _octaves(rng, 2 * image_size, max(2, image_size // 10)) - 1
    return white, low


def _crop(bank: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    y0, x0 = int(rng.random() * size), int(rng.random() * size)
    return bank[y0 : y0 + size, x0 : x0 + size]


@cache
def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates X, Y in [-1, 1] (y down), float32 [S, S] each."""
    c = ((np.arange(image_size) + 0.5) / image_size * 2 - 1).astype(np.float32)
    x, y = np.meshgrid(c, c)
    return x, y


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """Per-image geometry in pixels: object-relative coordinates and the signed distance."""

    dx: np.ndarray  # [S, S] x offset from the object centre in radii (image axes)
    dy: np.ndarray  # [S, S]
    px: np.ndarray  # [S, S] rotated coordinates in pixels (for patterns)
    py: np.ndarray  # [S, S]
    sd: np.ndarray  # [S, S] signed distance to the outline in pixels (< 0 inside)


def _frame(spec: ObjectSpec, size: int) -> _Frame:
    gx, gy = _grid(size)
    cos, sin = math.cos(spec.angle), math.sin(spec.angle)
    inv = 1.0 / spec.scale
    dx, dy = (gx - spec.cx) * inv, (gy - spec.cy) * inv
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    radius_px = spec.scale * size / 2
    if spec.shape is None:
        return _Frame(dx, dy, u * radius_px, v * radius_px, np.full_like(u, -radius_px))
    k = _TABLE_SIZE / (2 * _TABLE_EXTENT)
    iu = np.clip(((u + _TABLE_EXTENT) * k).astype(np.int32), 0, _TABLE_SIZE - 1)
    iv = np.clip(((v + _TABLE_EXTENT) * k).astype(np.int32), 0, _TABLE_SIZE - 1)
    sd = _sdf_table(spec.shape).ravel().take(iv * _TABLE_SIZE + iu) * np.float32(radius_px)
    return _Frame(dx, dy, u * radius_px, v * radius_px, sd)


def _pattern_mask(pattern: str, px: np.ndarray, py: np.ndarray, period: float) -> np.ndarray | None:
    """Where the secondary colour goes (float32 [S, S] in {0, 1}); None for "plain"."""
    if pattern == "plain":
        return None
    a, b = px / period, py / period
    if pattern == "striped":
        m = (a % 1.0) < 0.5
    elif pattern == "dotted":
        m = ((a % 1.0) - 0.5) ** 2 + ((b % 1.0) - 0.5) ** 2 < 0.1
    elif pattern == "checkered":
        m = (np.floor(a) + np.floor(b)) % 2 < 1
    elif pattern == "plaid":
        m = ((a % 1.0) < 0.3) | ((b % 1.0) < 0.3)
    elif pattern == "wavy":
        m = ((a + 0.3 * np.sin(b * 2.1)) % 1.0) < 0.5
    elif pattern == "zigzag":
        m = ((a + np.abs((b * 0.7) % 1.0 - 0.5)) % 1.0) < 0.5
    else:
        raise ValueError(f"unknown pattern '{pattern}'")
    return m.astype(np.float32)


def _secondary(rgb: np.ndarray) -> np.ndarray:
    """The pattern's second colour: a dark shade of light colours, a pale tint of dark ones."""
    return rgb * 0.35 if _luma(rgb) > 0.55 else rgb * 0.3 + 0.7


def _background(spec: ObjectSpec, rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 [S, S, 3] background (a fresh array)."""
    if spec.background == "plain":
        rgb = np.asarray(COLOURS[spec.colour], np.float32)
        far = [t for t in _PLAIN_TINTS if np.abs(t - rgb).sum() > 0.6]
        tint = far[int(rng.random() * len(far))]
        shade = 1.0 - 0.08 * _grid(size)[1][..., None] * (spec.style == "photo")
        return tint * shade
    return _crop(_texture_bank(spec.background, size), rng, size).copy()


def _fill(spec: ObjectSpec, rng: np.random.Generator, fr: _Frame, size: int) -> np.ndarray:
    """Object colour with its pattern, float32 [S, S, 3]."""
    jitter = 0.04 if spec.style in ("photo", "noisy", "pixelated") else 0.08 * (spec.style == "painting")
    rgb = np.clip(np.asarray(COLOURS[spec.colour]) + jitter * rng.standard_normal(3), 0, 1).astype(np.float32)
    period = (5.0 + 3.0 * rng.random()) * size / IMAGE_SIZE
    m = _pattern_mask(spec.pattern, fr.px, fr.py, period)
    if m is None:
        return np.broadcast_to(rgb, (size, size, 3))
    return _mix(rgb, _secondary(rgb), m)


def _over(img: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite ``rgb`` (broadcastable to [S, S, 3]) over ``img`` with coverage ``alpha`` [S, S]."""
    a = alpha[..., None]
    return img + (rgb - img) * a


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur of [S, S, C] (edges replicated)."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = (p[:-2] + p[1:-1] + p[2:]) / 3
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 3


def _render_photo(spec: ObjectSpec, rng: np.random.Generator, size: int, fr: _Frame) -> np.ndarray:
    img = _background(spec, rng, size)
    if spec.shape is None:  # a bare texture: the background, or a pattern filling the frame
        return img if spec.pattern == "plain" else _fill(spec, rng, fr, size) * 1.0
    cover = np.clip(0.5 - fr.sd, 0, 1)
    shadow = np.roll(cover, (max(1, size // 32), max(1, size // 32)), axis=(0, 1))
    img *= (1.0 - 0.35 * shadow)[..., None]
    shade = 1.0 - 0.18 * (0.6 * fr.dx + 0.8 * fr.dy) - 0.22 * np.clip(1.0 + fr.sd / 3.0, 0, 1)
    return _over(img, _fill(spec, rng, fr, size) * shade[..., None], cover)


def _render_sketch(spec: ObjectSpec, rng: np.random.Generator, size: int, fr: _Frame) -> np.ndarray:
    img = _crop(_texture_bank("paper", size), rng, size).copy()
    low = _crop(_noise_banks(size)[1], rng, size)
    width = (0.7 + 0.8 * rng.random()) * size / IMAGE_SIZE
    ink = np.float32(0.1 + 0.25 * rng.random())
    stroke = np.clip(width + 0.5 - np.abs(fr.sd + 0.8 * low), 0, 1) * (0.85 + 0.15 * low)
    return _over(img, ink, stroke)


def _render_cartoon(spec: ObjectSpec, rng: np.random.Generator, size: int, fr: _Frame) -> np.ndarray:
    img = _background(spec, rng, size)
    img = _over(img, _fill(spec, rng, fr, size), np.clip(0.5 - fr.sd, 0, 1))
    width = (1.0 + 0.8 * rng.random()) * size / IMAGE_SIZE
    return _over(img, np.float32(0.05), np.clip(width + 0.5 - np.abs(fr.sd), 0, 1))


def _render_painting(spec: ObjectSpec, rng: np.random.Generator, size: int, fr: _Frame) -> np.ndarray:
    low = _crop(_noise_banks(size)[1], rng, size)
    img = _background(spec, rng, size) * (1.0 + 0.12 * low)[..., None]
    cover = np.clip(0.5 - (fr.sd + 1.8 * low), 0, 1)
    brush = (1.0 + 0.15 * _crop(_noise_banks(size)[1], rng, size))[..., None]
    return _blur(_over(img, _fill(spec, rng, fr, size) * brush, cover))


def _render_pixelated(spec: ObjectSpec, rng: np.random.Generator, size: int, fr: _Frame) -> np.ndarray:
    img = _render_photo(spec, rng, size, fr)
    block = max(2, size // 16)
    idx = np.minimum((np.arange(size) // block) * block + block // 2, size - 1)
    return np.round(img[idx][:, idx] * 6) / 6


def _render_noisy(spec: ObjectSpec, rng: np.random.Generator, size: int, fr: _Frame) -> np.ndarray:
    img = _render_photo(spec, rng, size, fr)
    return img + (0.12 + 0.14 * rng.random()) * _crop(_noise_banks(size)[0], rng, size)


_RENDERERS = {
    "photo": _render_photo, "sketch": _render_sketch, "cartoon": _render_cartoon,
    "painting": _render_painting, "pixelated": _render_pixelated, "noisy": _render_noisy,
}  # fmt: skip


def render(spec: ObjectSpec, rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Render ``spec``; ``rng`` supplies the pixel-level randomness. Returns uint8 [S, S, 3]."""
    fr = _frame(spec, image_size)
    img = _RENDERERS[spec.style](spec, rng, image_size, fr)
    if spec.style == "photo":
        img = img + 0.025 * _crop(_noise_banks(image_size)[0], rng, image_size)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

_STYLE_PREFIXES: dict[str, tuple[str, ...]] = {
    "photo": ("", "", "a picture of", "an image of", "an image showing", "a rendering of", "a 3d render of",
              "a snapshot of", "there is", "this is", "a close-up of"),
    "sketch": ("a sketch of", "a drawing of", "a pencil sketch of", "a line drawing of", "an outline of",
               "a doodle of"),
    "cartoon": ("a cartoon of", "a cartoon", "clip art of", "an illustration of", "a flat illustration of",
                "a cartoon drawing of"),
    "painting": ("a painting of", "an oil painting of", "a watercolour of", "an artwork of",
                 "a painted picture of", "a blurry painting of"),
    "pixelated": ("a pixelated image of", "pixel art of", "a low resolution image of", "a blocky image of",
                  "a pixelated picture of"),
    "noisy": ("a noisy image of", "a grainy picture of", "a noisy picture of", "a corrupted image of",
              "a grainy image of"),
}  # fmt: skip
_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "circle", "circle", "disc"), "square": ("square",), "triangle": ("triangle",),
    "star": ("star",), "hexagon": ("hexagon",), "cross": ("cross", "cross", "cross", "plus sign"),
    "heart": ("heart",), "ring": ("ring", "ring", "ring", "donut"),
    "diamond": ("diamond", "diamond", "diamond", "rhombus"),
    "crescent": ("crescent", "crescent", "crescent moon"), "arrow": ("arrow",), "pentagon": ("pentagon",),
    "flower": ("flower",), "hourglass": ("hourglass",), "teardrop": ("teardrop", "teardrop", "drop"),
    "trapezoid": ("trapezoid",), "lightning": ("lightning bolt",), "semicircle": ("semicircle",),
    "house": ("house",),
}  # fmt: skip
_GENERIC_NOUNS = ("shape", "object", "figure")
_SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big", "huge")}
# pattern -> (adjectives, "with ..." phrases)
_PATTERN_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "plain": (("plain", "solid"), ("",)),
    "striped": (("striped",), ("with stripes",)),
    "dotted": (("dotted", "spotted", "polka dot"), ("with dots", "with polka dots")),
    "checkered": (("checkered",), ("with a checkered pattern", "with checks")),
    "plaid": (("plaid", "tartan"), ("with a plaid pattern", "with a grid of lines")),
    "wavy": (("wavy",), ("with wavy lines", "with waves")),
    "zigzag": (("zigzag",), ("with zigzags", "with a zigzag pattern")),
}  # fmt: skip
_POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the upper left corner"), "top": ("at the top",),
    "top right": ("in the top right", "in the upper right corner"), "left": ("on the left",),
    "centre": ("in the centre", "in the middle"), "right": ("on the right",),
    "bottom left": ("in the bottom left", "in the lower left corner"), "bottom": ("at the bottom",),
    "bottom right": ("in the bottom right", "in the lower right corner"),
}  # fmt: skip
_BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("on a plain background", "on a blank background"),
    "grass": ("on grass", "on the grass", "on a lawn", "in a grassy field"),
    "sky": ("in the sky", "against a blue sky", "in front of the sky"),
    "sand": ("on sand", "on a sandy beach", "on the sand"),
    "wood": ("on wood", "on a wooden table", "on a wooden floor"),
    "water": ("on water", "floating on water", "on the water"),
    "speckled": ("on a speckled background", "on a confetti background"),
    "paper": ("on paper", "on a sheet of paper", "on a blank page"),
}  # fmt: skip
_TEXTURE_WORDS: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "a lawn", "a field of grass"), "sky": ("the sky", "a blue sky", "clouds in the sky"),
    "sand": ("sand", "a sandy beach", "grains of sand"), "wood": ("wood", "wooden planks", "wood grain"),
    "water": ("water", "a water surface", "ripples on water"), "speckles": ("speckles", "confetti"),
    "stripes": ("stripes", "a striped pattern"), "dots": ("dots", "a polka dot pattern"),
    "checkerboard": ("a checkerboard", "a checkered pattern"), "zigzags": ("zigzags", "a zigzag pattern"),
}  # fmt: skip
_TEXTURE_PREFIXES = ("", "a texture of", "a close-up of", "a background of", "an image of", "a surface of")
_P_SIZE, _P_COLOUR, _P_PATTERN, _P_POSITION, _P_BACKGROUND, _P_GENERIC = 0.5, 0.85, 0.6, 0.35, 0.45, 0.08


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" or phrase.startswith("hour") else "a ") + phrase


def caption(spec: ObjectSpec, rng: np.random.Generator) -> str:
    """A varied English caption of ``spec`` (never containing "photo")."""
    if spec.shape is None:
        return _texture_caption(spec, rng)
    adjectives, tail = [], []
    if rng.random() < _P_SIZE:
        adjectives.append(_pick(rng, _SIZE_WORDS[spec.size]))
    if _SHOWS_COLOUR[spec.style] and rng.random() < _P_COLOUR:
        adjectives.append(spec.colour)
    if _SHOWS_PATTERN[spec.style] and rng.random() < _P_PATTERN:
        adjs, withs = _PATTERN_WORDS[spec.pattern]
        if spec.pattern == "plain" or rng.random() < 0.6:
            adjectives.append(_pick(rng, adjs))
        else:
            tail.append(_pick(rng, withs))
    noun = _pick(rng, _GENERIC_NOUNS if rng.random() < _P_GENERIC else _SHAPE_WORDS[spec.shape])
    if spec.size == "small" and rng.random() < _P_POSITION:
        tail.append(_pick(rng, _POSITION_WORDS[spec.position]))
    if rng.random() < _P_BACKGROUND:
        tail.append(_pick(rng, _BACKGROUND_WORDS[spec.background]))
    phrase = _article(" ".join([*adjectives, noun]))
    prefix = _pick(rng, _STYLE_PREFIXES[spec.style])
    return " ".join(w for w in (prefix, phrase, *tail) if w)


def _texture_caption(spec: ObjectSpec, rng: np.random.Generator) -> str:
    name = next(t for t, (bg, pat) in TEXTURES.items() if (bg, pat) == (spec.background, spec.pattern))
    words = _pick(rng, _TEXTURE_WORDS[name])
    if spec.pattern != "plain" and rng.random() < 0.5:  # "a red checkered pattern", "red stripes"
        words = _article(f"{spec.colour} {words[2:]}") if words.startswith("a ") else f"{spec.colour} {words}"
    prefixes = _STYLE_PREFIXES[spec.style] if rng.random() < 0.5 else _TEXTURE_PREFIXES
    return " ".join(w for w in (_pick(rng, prefixes), words) if w)


# --------------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------------


def pretrain_spec(seed: int, index: int, domain: Domain = PRETRAIN_DOMAIN) -> tuple[ObjectSpec, np.random.Generator]:
    """Spec of item ``index`` of the pretraining stream, and the generator to render/caption it with.

    A share ``domain.texture_fraction`` of items are bare textures; the others are members of shape
    groups of ``domain.group_size`` items (see :class:`Domain`).
    """
    rng = item_rng(seed, "pretrain", index)
    if rng.random() < domain.texture_fraction:
        return sample_spec(rng, domain, texture=_pick(rng, tuple(TEXTURES))), rng
    if domain.group_size <= 1:
        return sample_spec(rng, domain), rng
    group_rng = item_rng(seed, "pretrain/group", index // domain.group_size)
    shared = sample_spec(group_rng, domain)
    shapes = [s for s in domain.shapes if (shared.colour, s) not in domain.exclude]
    shape = shapes[group_rng.permutation(len(shapes))[index % domain.group_size % len(shapes)]]
    fixed = {k: getattr(shared, k) for k in ("colour", "pattern", "style", "size", "position", "background")}
    return sample_spec(rng, domain, shape=shape, **fixed), rng


def pretrain_item(
    seed: int, index: int, *, domain: Domain = PRETRAIN_DOMAIN, image_size: int = IMAGE_SIZE
) -> tuple[np.ndarray, str]:
    """Pair ``index`` of the pretraining stream of ``seed``: (uint8 [S, S, 3], caption)."""
    spec, rng = pretrain_spec(seed, index, domain)
    return render(spec, rng, image_size), caption(spec, rng)


def sample_pairs(
    n: int,
    seed: int,
    *,
    styles: Collection[str] | Mapping[str, float] | None = None,
    exclude: Collection[tuple[str, str]] = HELDOUT_PAIRS,
    shapes: Sequence[str] = PRETRAIN_SHAPES,
    start: int = 0,
    image_size: int = IMAGE_SIZE,
    group_size: int = PRETRAIN_GROUP_SIZE,
) -> tuple[np.ndarray, list[str]]:
    """Pairs ``start .. start+n-1`` of the pretraining stream: (uint8 [n, S, S, 3], n captions).

    ``styles``: style names (uniform) or style -> weight (default: ``PRETRAIN_STYLE_WEIGHTS``);
    ``exclude``: (colour, shape) pairs never drawn (default ``HELDOUT_PAIRS``); ``shapes``: shape pool;
    ``group_size``: hard-negative shape groups (:class:`Domain`). Item ``i`` depends only on
    (seed, i, the domain), not on ``n`` or ``start``.
    """
    domain = make_domain(styles=styles, exclude=exclude, shapes=shapes, group_size=group_size)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    captions = []
    for j in range(n):
        images[j], cap = pretrain_item(seed, start + j, domain=domain, image_size=image_size)
        captions.append(cap)
    return images, captions


def make_domain(
    *,
    styles: Collection[str] | Mapping[str, float] | None = None,
    exclude: Collection[tuple[str, str]] = HELDOUT_PAIRS,
    shapes: Sequence[str] = PRETRAIN_SHAPES,
    texture_fraction: float = TEXTURE_FRACTION,
    group_size: int = PRETRAIN_GROUP_SIZE,
) -> Domain:
    """A pretraining-like :class:`Domain` with the given style weights, exclusions and shape pool."""
    if styles is None:
        weights = dict(PRETRAIN_STYLE_WEIGHTS)
    elif isinstance(styles, Mapping):
        weights = dict(styles)
    else:
        weights = dict.fromkeys(styles, 1.0)
    return Domain(
        tuple(shapes),
        style_weights=weights,
        exclude=frozenset(exclude),
        texture_fraction=texture_fraction,
        group_size=group_size,
    )
