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
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from refground.errors import ConfigError
from refground.types import BoxTuple

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

# Nominal side (pixels) of the square a shape is inscribed in. The gaps between classes keep
# "small" / "medium" / "large" unmistakable: adjacent classes differ by >= 1.25x in side.
SIZES: dict[str, tuple[int, int]] = {
    "small": (24, 30),
    "medium": (38, 48),
    "large": (60, 76),
}

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

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

    def __post_init__(self) -> None:
        largest = max(high for _, high in SIZES.values())
        if not largest + 2 * self.border <= self.min_side <= self.max_side:
            raise ConfigError(
                f"canvas sides must satisfy {largest + 2 * self.border} <= min_side <= max_side,"
                f" got {self.min_side}..{self.max_side}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}.."
                f"{self.max_objects}")
        copies = self.p_copy_shape + self.p_copy_color + self.p_copy_both
        if min(self.p_copy_shape, self.p_copy_color, self.p_copy_both) < 0 or copies > 1:
            raise ConfigError(f"copy probabilities must be >= 0 and sum to <= 1, got {copies}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. ``x, y, side`` place its stamp; ``box`` is the tight pixel box."""

    shape: str
    color: str
    size: str
    side: int
    x: int
    y: int
    box: BoxTuple
    area: int

    @property
    def combo(self) -> Combo:
        return (self.color, self.shape)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)


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
               config: SceneConfig, tries: int = 48) -> tuple[int, int] | None:
    """A top-left corner where a ``side`` square keeps ``gap`` pixels from every placed square.

    Draws all candidate corners at once and tests them against all placed squares in one
    broadcast, instead of a rejection loop per candidate.
    """
    high_x, high_y = width - side - config.border, height - side - config.border
    if high_x < config.border or high_y < config.border:
        return None
    xs = rng.integers(config.border, high_x + 1, size=tries)
    ys = rng.integers(config.border, high_y + 1, size=tries)
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


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig(),
                 forced: tuple[Combo, ...] = ()) -> Scene:
    """Sample a canvas and 3-8 non-overlapping objects; ``forced`` looks come first.

    Objects that find no free spot are dropped; a scene left with too few objects is
    resampled, so the result always has at least ``config.min_objects``.
    """
    for _ in range(_SCENE_TRIES):
        width, height = _sample_canvas(rng, config)
        fewest = min(max(config.min_objects, len(forced)), config.max_objects)
        wanted = int(rng.integers(fewest, config.max_objects + 1))
        objects: list[SceneObject] = []
        placed = np.empty((0, 4), dtype=np.int64)
        looks: list[tuple[str, str]] = []
        for index in range(wanted):
            color, shape = forced[index] if index < len(forced) else _sample_look(
                rng, looks, config)
            size = SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))]
            side = int(rng.integers(SIZES[size][0], SIZES[size][1] + 1))
            spot = _find_spot(rng, side, placed, width, height, config)
            if spot is None:
                continue
            x, y = spot
            objects.append(_make_object(shape, color, size, side, x, y))
            placed = np.vstack([placed, [[x, y, x + side, y + side]]])
            looks.append((color, shape))
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
