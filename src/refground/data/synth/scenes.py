"""SynthRef scenes: sampling a layout of coloured shapes, and rendering it to an image.

A scene is decided completely before any pixel is drawn, so the expression generator reasons
about exactly the geometry the image will show. Each shape is drawn from a cached binary *stamp*
(one per shape and pixel side); the same stamp gives both the pixels and the tight box, so the
annotated box is exact by construction.

Colour design: backgrounds are clipped to channel values in ``[64, 192]`` and every object colour
has at least one channel outside that range, so an object pixel can never coincide with a
background pixel. That keeps objects visible and lets tests find them by exact colour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from refground.errors import ConfigError
from refground.types import BoxTuple

if TYPE_CHECKING:
    from refground.data.synth.rendering import ObjectLook

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "pentagon",
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (245, 130, 20),
    "purple": (135, 45, 190),
    "pink": (250, 130, 200),
    "cyan": (30, 215, 225),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

# Nominal side (pixels) of the square a shape is inscribed in, per size class, at the "small"
# scale (the original layout); other scales set their own ranges (``SceneConfig.sizes``). The
# gaps between classes keep "small" / "medium" / "large" unmistakable: adjacent classes differ
# by >= SIZE_STEP in side, whatever the scale.
SIZES: dict[str, tuple[int, int]] = {
    "small": (24, 30),
    "medium": (38, 48),
    "large": (60, 76),
}
SIZE_STEP = 1.25  # smallest side ratio between the top of one size class and the next one's floor

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

SizeRange = tuple[str, int, int]  # (size word, lowest nominal side, highest nominal side)

BACKGROUND_RANGE = (64, 192)

_SCENE_TRIES = 200  # layouts tried before a configuration is declared impossible

Combo = tuple[str, str]  # (colour, shape): the unit held out for the testC split


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are sampled; recorded in ``instances.json`` so a dataset documents itself."""

    min_side: int = 320
    max_side: int = 640
    min_objects: int = 3
    max_objects: int = 8
    gap: int = 8  # minimum empty pixels between the nominal squares of two objects
    border: int = 4  # minimum distance of an object from the canvas edge
    p_copy_shape: float = 0.40  # a new object repeats an earlier shape (same-shape distractors)
    p_copy_color: float = 0.25  # ... an earlier colour (same-colour distractors)
    p_copy_both: float = 0.10  # ... an earlier colour and shape (size must tell them apart)
    # nominal side range of each size class, in SIZE_NAMES order; a scale preset sets its own
    sizes: tuple[SizeRange, ...] = tuple((name, low, high) for name, (low, high) in SIZES.items())
    # Most of the canvas that the objects' nominal squares (plus gap) may claim. Each object is
    # drawn from the classes that still fit, keeping room for the objects still to come at the
    # smallest size: with large objects, a scene meant to hold 8 would otherwise be filled by
    # its first three. None: no budget (small objects never need one).
    max_fill: float | None = None
    placement: str = "in-order"  # a PLACEMENTS name: how drawn objects are put on the canvas
    placement_tries: int = 48  # random corners tried per object before it is dropped

    def __post_init__(self) -> None:
        self._check_sizes()
        largest = max(high for _, _, high in self.sizes)
        if not largest + 2 * self.border <= self.min_side <= self.max_side:
            raise ConfigError(
                f"canvas sides must satisfy {largest + 2 * self.border} <= min_side <= max_side,"
                f" got {self.min_side}..{self.max_side}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}.."
                f"{self.max_objects}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"unknown placement {self.placement!r}; choose one of: "
                              f"{', '.join(sorted(PLACEMENTS))}")
        if self.placement_tries < 1:
            raise ConfigError(f"placement_tries must be >= 1, got {self.placement_tries}")
        if self.max_fill is not None and not 0 < self.max_fill <= 1:
            raise ConfigError(f"max_fill must be in (0, 1] or None, got {self.max_fill}")
        copies = self.p_copy_shape + self.p_copy_color + self.p_copy_both
        if min(self.p_copy_shape, self.p_copy_color, self.p_copy_both) < 0 or copies > 1:
            raise ConfigError(f"copy probabilities must be >= 0 and sum to <= 1, got {copies}")

    def _check_sizes(self) -> None:
        """Size words are what expressions say, so every class must exist, in order, with
        ranges far enough apart that "the large one" is never a judgement call."""
        names = tuple(name for name, _, _ in self.sizes)
        if names != SIZE_NAMES:
            raise ConfigError(f"sizes must name {', '.join(SIZE_NAMES)} in that order, got "
                              f"{', '.join(names)}")
        if any(not 8 <= low <= high for _, low, high in self.sizes):
            raise ConfigError(f"each size range needs 8 <= low <= high, got {self.sizes}")
        for (smaller, _, top), (bigger, floor, _) in pairwise(self.sizes):
            if floor < SIZE_STEP * top:
                raise ConfigError(
                    f"size classes {smaller!r} and {bigger!r} are too close: {bigger} starts at "
                    f"{floor} px, it must be >= {SIZE_STEP} x {top} px")

    @property
    def side_ranges(self) -> dict[str, tuple[int, int]]:
        """Size word -> (lowest, highest) nominal side in pixels."""
        return {name: (low, high) for name, low, high in self.sizes}

    def record(self) -> dict[str, Any]:
        """The settings as ``instances.json`` records them (the size ranges go separately, to
        ``info.sizes``). SynthRef 1.0's fields always; later ones only when they differ from
        their default, so a dataset of the original layout keeps exactly its old bytes."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in _RECORDED_SINCE_1_0
                or (f.name != "sizes" and getattr(self, f.name) != f.default)}


_RECORDED_SINCE_1_0 = ("min_side", "max_side", "min_objects", "max_objects", "gap", "border",
                       "p_copy_shape", "p_copy_color", "p_copy_both")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. ``x, y, side`` place its stamp; ``box`` is the tight pixel box.

    ``look`` is how a non-standard rendering draws it (:mod:`~refground.data.synth.rendering`;
    None: the standard stamp), set before expressions are planned so ``box`` and ``area``
    always describe the pixels painted."""

    shape: str
    color: str
    size: str
    side: int
    x: int
    y: int
    box: BoxTuple
    area: int
    look: ObjectLook | None = None

    @property
    def combo(self) -> Combo:
        return (self.color, self.shape)


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[SceneObject, ...]


# --- shape stamps -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Stamp:
    """A shape's binary mask at one side length, and the tight box of its pixels in the mask."""

    mask: Image.Image  # mode "L", 0 or 255, side x side
    tight: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) inside the mask
    area: int


def _regular_polygon(side: int, corners: int, start_deg: float, inner: float = 1.0
                     ) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or a star, with ``inner`` < 1) inscribed in the square."""
    radius = (side - 1) / 2
    radii = [radius, radius * inner] if inner < 1.0 else [radius]
    count = corners * len(radii)
    points = []
    for k in range(count):
        r = radii[k % len(radii)]
        angle = math.radians(start_deg + 360.0 * k / count)
        points.append((radius + r * math.cos(angle), radius + r * math.sin(angle)))
    return points


def _polygon(shape: str, side: int) -> list[tuple[float, float]]:
    s = side - 1
    if shape == "square":
        return [(0.08 * s, 0.08 * s), (0.92 * s, 0.08 * s), (0.92 * s, 0.92 * s),
                (0.08 * s, 0.92 * s)]
    if shape == "diamond":
        return [(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)]
    if shape == "triangle":
        top = (s - s * math.sqrt(3) / 2) / 2
        return [(s / 2, top), (s, s - top), (0, s - top)]
    if shape == "cross":
        a, b = s / 3, 2 * s / 3
        return [(a, 0), (b, 0), (b, a), (s, a), (s, b), (b, b), (b, s), (a, s), (a, b), (0, b),
                (0, a), (a, a)]
    if shape == "star":
        return _regular_polygon(side, 5, -90.0, inner=0.45)
    if shape == "pentagon":
        return _regular_polygon(side, 5, -90.0)
    if shape == "hexagon":
        return _regular_polygon(side, 6, 0.0)
    raise ValueError(f"no polygon for shape {shape!r}")


@lru_cache(maxsize=2048)
def stamp(shape: str, side: int) -> Stamp:
    """The cached mask of ``shape`` drawn in a ``side`` x ``side`` square."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((0, 0, side - 1, side - 1), fill=255)
    else:
        draw.polygon(_polygon(shape, side), fill=255)
    pixels = np.asarray(mask) > 0
    cols = np.flatnonzero(pixels.any(axis=0))
    rows = np.flatnonzero(pixels.any(axis=1))
    tight = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return Stamp(mask=mask, tight=tight, area=int(pixels.sum()))


# --- sampling -----------------------------------------------------------------------------------

def _sample_canvas(rng: np.random.Generator, config: SceneConfig) -> tuple[int, int]:
    width = int(rng.integers(config.min_side, config.max_side + 1))
    height = int(np.clip(round(width * rng.uniform(0.75, 1.33)), config.min_side,
                         config.max_side))
    return width, height


def _sample_look(rng: np.random.Generator, earlier: list[tuple[str, str]], config: SceneConfig
                 ) -> tuple[str, str]:
    """(colour, shape) of the next object, often echoing an earlier one to create distractors."""
    color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if not earlier:
        return color, shape
    previous_color, previous_shape = earlier[int(rng.integers(len(earlier)))]
    roll = rng.random()
    if roll < config.p_copy_both:
        return previous_color, previous_shape
    if roll < config.p_copy_both + config.p_copy_shape:
        return color, previous_shape
    if roll < config.p_copy_both + config.p_copy_shape + config.p_copy_color:
        return previous_color, shape
    return color, shape


def _find_spot(rng: np.random.Generator, side: int, placed: np.ndarray, width: int, height: int,
               config: SceneConfig) -> tuple[int, int] | None:
    """A top-left corner where a ``side`` square keeps ``gap`` pixels from every placed square.

    Draws all candidate corners at once and tests them against all placed squares in one
    broadcast, instead of a rejection loop per candidate.
    """
    high_x, high_y = width - side - config.border, height - side - config.border
    if high_x < config.border or high_y < config.border:
        return None
    xs = rng.integers(config.border, high_x + 1, size=config.placement_tries)
    ys = rng.integers(config.border, high_y + 1, size=config.placement_tries)
    if len(placed) == 0:
        return int(xs[0]), int(ys[0])
    g = config.gap
    apart = (
        (xs[:, None] + side + g <= placed[None, :, 0])
        | (placed[None, :, 2] + g <= xs[:, None])
        | (ys[:, None] + side + g <= placed[None, :, 1])
        | (placed[None, :, 3] + g <= ys[:, None])
    ).all(axis=1)
    free = np.flatnonzero(apart)
    if len(free) == 0:
        return None
    return int(xs[free[0]]), int(ys[free[0]])


def _make_object(shape: str, color: str, size: str, side: int, x: int, y: int) -> SceneObject:
    mark = stamp(shape, side)
    tx0, ty0, tx1, ty1 = mark.tight
    box = (float(x + tx0), float(y + ty0), float(x + tx1), float(y + ty1))
    return SceneObject(shape, color, size, side, x, y, box, mark.area)


@dataclass(frozen=True)
class _Drawn:
    """An object decided but not yet placed: its look, size class and nominal side."""

    color: str
    shape: str
    size: str
    side: int


def _fit_size(size: str, claimed: int, canvas: int, config: SceneConfig) -> str | None:
    """``size``, or the largest smaller class whose biggest square still fits the fill budget
    after ``claimed`` pixels (None when not even the smallest does). Draws nothing, so scales
    without a budget sample exactly the objects they sampled before budgets existed."""
    if config.max_fill is None:
        return size
    room = config.max_fill * canvas - claimed
    sides = config.side_ranges
    for name in reversed(SIZE_NAMES[:SIZE_NAMES.index(size) + 1]):
        if (sides[name][1] + config.gap) ** 2 <= room:
            return name
    return None


class _Drawer:
    """Draws one scene's objects in order: look, then size class within the fill budget, then
    side, keeping count of the canvas the drawn objects claim."""

    def __init__(self, rng: np.random.Generator, config: SceneConfig, canvas: int,
                 forced: tuple[Combo, ...], wanted: int) -> None:
        self.rng, self.config, self.canvas = rng, config, canvas
        self.forced, self.wanted = forced, wanted
        self.claimed = 0  # canvas pixels claimed by drawn objects' squares plus gap
        smallest = config.side_ranges[SIZE_NAMES[0]][1]
        self.reserve_each = (smallest + config.gap) ** 2 if config.max_fill is not None else 0

    def draw(self, index: int, looks: list[tuple[str, str]]) -> _Drawn | None:
        """Object ``index`` (None when the budget has no room left for it); ``looks`` are the
        earlier looks it may copy to become a distractor."""
        rng, config = self.rng, self.config
        color, shape = self.forced[index] if index < len(self.forced) else _sample_look(
            rng, looks, config)
        reserve = (self.wanted - index - 1) * self.reserve_each
        size = _fit_size(SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))], self.claimed + reserve,
                         self.canvas, config)
        if size is None:
            return None
        low, high = config.side_ranges[size]
        side = int(rng.integers(low, high + 1))
        self.claimed += (side + config.gap) ** 2
        return _Drawn(color, shape, size, side)


Placement = Callable[[np.random.Generator, SceneConfig, int, int, _Drawer], list[SceneObject]]


def _place_in_order(rng: np.random.Generator, config: SceneConfig, width: int, height: int,
                    drawer: _Drawer) -> list[SceneObject]:
    """Draw and place one object at a time (the original SynthRef order of random draws)."""
    objects: list[SceneObject] = []
    placed = np.empty((0, 4), dtype=np.int64)
    looks: list[tuple[str, str]] = []
    for index in range(drawer.wanted):
        drawn = drawer.draw(index, looks)
        if drawn is None:
            continue
        spot = _find_spot(rng, drawn.side, placed, width, height, config)
        if spot is None:
            continue
        x, y = spot
        objects.append(_make_object(drawn.shape, drawn.color, drawn.size, drawn.side, x, y))
        placed = np.vstack([placed, [[x, y, x + drawn.side, y + drawn.side]]])
        looks.append((drawn.color, drawn.shape))
    return objects


def _place_largest_first(rng: np.random.Generator, config: SceneConfig, width: int,
                         height: int, drawer: _Drawer) -> list[SceneObject]:
    """Draw every object first, then place the biggest first: a large square needs a clear
    quarter of the canvas, which small ones scattered earlier would no longer leave. Objects
    keep their draw order in the scene, so annotation order says nothing about size."""
    drawn: list[_Drawn] = []
    looks: list[tuple[str, str]] = []
    for index in range(drawer.wanted):
        item = drawer.draw(index, looks)
        if item is not None:
            drawn.append(item)
            looks.append((item.color, item.shape))
    placed = np.empty((0, 4), dtype=np.int64)
    found: dict[int, SceneObject] = {}
    for i in sorted(range(len(drawn)), key=lambda i: -drawn[i].side):  # stable for ties
        item = drawn[i]
        spot = _find_spot(rng, item.side, placed, width, height, config)
        if spot is None:
            continue
        x, y = spot
        found[i] = _make_object(item.shape, item.color, item.size, item.side, x, y)
        placed = np.vstack([placed, [[x, y, x + item.side, y + item.side]]])
    return [found[i] for i in sorted(found)]


PLACEMENTS: dict[str, Placement] = {
    "in-order": _place_in_order,
    "largest-first": _place_largest_first,
}


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig(),
                 forced: tuple[Combo, ...] = ()) -> Scene:
    """Sample a canvas and 3-8 non-overlapping objects; ``forced`` looks are drawn first.

    Objects that find no free spot are dropped; a scene left with too few objects is
    resampled, so the result always has at least ``config.min_objects``.
    """
    place = PLACEMENTS[config.placement]
    for _ in range(_SCENE_TRIES):
        width, height = _sample_canvas(rng, config)
        fewest = min(max(config.min_objects, len(forced)), config.max_objects)
        wanted = int(rng.integers(fewest, config.max_objects + 1))
        drawer = _Drawer(rng, config, width * height, forced, wanted)
        objects = place(rng, config, width, height, drawer)
        forced_present = all(any(o.combo == c for o in objects) for c in forced)
        if len(objects) >= config.min_objects and forced_present:
            return Scene(width, height, tuple(objects))
    raise ConfigError(
        f"could not place {config.min_objects} objects in {_SCENE_TRIES} tries; lower "
        f"min_objects or gap, or raise min_side (now {config.min_side})")


# --- rendering ----------------------------------------------------------------------------------

def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A greyish tint inside the background range (never an object colour)."""
    grey = rng.uniform(95.0, 165.0)
    return (grey + rng.uniform(-28.0, 28.0, size=3)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: float
                  ) -> np.ndarray:
    """``(height, width)`` uint8 noise varying over about ``cell`` pixels: a random grid
    upsampled bicubically (by PIL, in C)."""
    grid_w, grid_h = max(2, round(width / cell)), max(2, round(height / cell))
    grid = rng.integers(0, 256, size=(grid_h, grid_w), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def _gradient(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A linear ramp in [0, 1] at a random angle (``xs`` is a row, ``ys`` a column)."""
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = ramp - ramp.min()
    return ramp / max(float(ramp.max()), 1e-6)


def _stripes(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Soft or hard stripes in [0, 1] at a random angle and period."""
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(14.0, 60.0)
    wave = np.sin((2 * math.pi / period) * (xs * math.cos(angle) + ys * math.sin(angle)))
    sharpness = float(rng.choice([1.0, 4.0]))
    return 0.5 + 0.5 * np.tanh(sharpness * wave) / math.tanh(sharpness)


def _blend_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``(height, width)`` in [0, 1]: where each pixel sits between the two background colours
    (smooth noise, a gradient, stripes, or noise and stripes mixed)."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    kind = int(rng.integers(4))
    coarse = float(rng.uniform(50.0, 160.0))
    if kind == 0:
        return _smooth_noise(rng, width, height, coarse) / np.float32(255.0)
    if kind == 1:
        return np.broadcast_to(_gradient(rng, xs, ys), (height, width))
    if kind == 2:
        return np.broadcast_to(_stripes(rng, xs, ys), (height, width))
    noise = _smooth_noise(rng, width, height, coarse) * np.float32(0.6 / 255.0)
    return noise + np.float32(0.4) * _stripes(rng, xs, ys)


_MIX_LEVELS = 128  # colour steps between the two background colours
_GRAIN_LEVELS = 16  # brightness steps of the fine texture


def _palette(rng: np.random.Generator, grain: float) -> np.ndarray:
    """``(_MIX_LEVELS * _GRAIN_LEVELS, 3)`` uint8 table: every blend of the two colours at
    every texture brightness, clipped into the background range."""
    first, second = _muted_color(rng), _muted_color(rng)
    blends = first + (second - first) * np.linspace(0, 1, _MIX_LEVELS, dtype=np.float32)[:, None]
    shifts = np.linspace(-grain / 2, grain / 2, _GRAIN_LEVELS, dtype=np.float32)
    table = blends[:, None, :] + shifts[None, :, None]
    low, high = BACKGROUND_RANGE
    return np.clip(table, low, high).astype(np.uint8).reshape(-1, 3)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured ``(height, width, 3)`` uint8 background, built from whole-array operations.

    Two muted colours are blended through a noise / gradient / stripe field; half the time a
    fine texture (noise over a few pixels) modulates brightness. All arithmetic runs on one
    channel; colours come from a single lookup into a small palette table. Per-pixel white
    noise is avoided on purpose: it would triple PNG size and encoding time for no extra
    visual difficulty.
    """
    mix = _blend_field(rng, width, height)
    index = (mix * np.float32(_MIX_LEVELS - 1) + np.float32(0.5)).astype(np.int32)
    index *= _GRAIN_LEVELS
    grain = 0.0
    if rng.random() < 0.5:
        grain = float(rng.uniform(10.0, 30.0))
        texture = _smooth_noise(rng, width, height, float(rng.uniform(3.0, 8.0)))
        index += texture // (256 // _GRAIN_LEVELS)
    else:
        index += _GRAIN_LEVELS // 2
    return _palette(rng, grain)[index]


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` on a fresh textured background (the rng only shapes the background)."""
    image = Image.fromarray(render_background(rng, scene.width, scene.height))
    for obj in scene.objects:
        mark = stamp(obj.shape, obj.side)
        image.paste(COLORS[obj.color], (obj.x, obj.y, obj.x + obj.side, obj.y + obj.side),
                    mark.mask)
    return image
