"""SynthRef renderings: how a scene is drawn, kept apart from what the scene is.

A scene (:mod:`~refground.data.synth.scenes`) fixes every object's shape, colour, size class
and nominal square; a *rendering* decides how those are drawn. Three are registered in
:data:`RENDERINGS`:

``standard``
    SynthRef 1.0's drawing: each shape from its fixed stamp, upright, filled with the colour's
    one RGB value, on a muted texture clipped to ``[64, 192]``. Its bytes never change (the
    digest test in ``tests/test_synth.py``).
``shifted``
    A **test** drawing with parameters ``standard`` never uses: every polygon rotated, other
    proportions (cross arm width, star depth, ellipse / rectangle aspect), shapes drawn hollow
    or with a rim, shades jittered inside each colour name, smaller shapes inside their
    squares, flat / gradient / tiled / textured backgrounds in other colours with speckle
    noise, blur and JPEG artefacts. It stands in for "the user's images are not drawn the way
    our generator draws".
``randomised``
    The **training** distribution for domain randomisation (Tobin et al., 2017): wide ranges
    around both of the others, with a quarter of the objects drawn exactly as ``standard``
    draws them. What it shares with ``shifted`` and what it holds out is in
    :data:`HELD_OUT` (and in every ``training.json`` made from it).

Looks are decided *before* the expressions are planned (``dress_scene``): the tight box and the
drawn area of each object come from its actual mask, so positions, relations and size
comparisons are judged on exactly what the image shows. Size classes stay unmistakable: the
smallest shape scale times the largest fitting shrink keeps adjacent classes apart
(``SIZE_STEP`` x 0.86 x 0.95 > 1).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from refground.data.synth.scenes import (
    COLORS,
    Scene,
    SceneObject,
    _blend_field,
    _gradient,
    _smooth_noise,
    render_background,
    render_scene,
    stamp,
)
from refground.errors import ConfigError

# --- parameter ranges ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A uniform range, or several disjoint ones (drawn in proportion to their widths): the
    way a rendering says "any value here" and, with bands, "but not the standard value"."""

    bands: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, low: float, high: float) -> Span:
        return cls(((low, high),))

    def draw(self, rng: np.random.Generator) -> float:
        widths = np.array([high - low for low, high in self.bands], dtype=np.float64)
        index = 0 if len(self.bands) == 1 else int(rng.choice(len(self.bands),
                                                              p=widths / widths.sum()))
        low, high = self.bands[index]
        return float(rng.uniform(low, high))

    def record(self) -> list[list[float]]:
        return [list(band) for band in self.bands]


@dataclass(frozen=True)
class LookDistribution:
    """How each object's look is drawn (:class:`ObjectLook`)."""

    p_standard: float  # share of objects drawn exactly as ``standard`` draws them
    turn: Span  # |rotation| in degrees for shapes that stay themselves at any angle
    small_turn: Span  # |rotation| for square, diamond and cross (45 deg turns one into another)
    aspect: Span  # height / width of circles (ellipses) and squares (rectangles)
    scale: Span  # share of the nominal square the shape spans
    cross_arm: Span  # cross arm width / side (standard 1/3)
    star_depth: Span  # star inner radius / outer radius (standard 0.45)
    p_hollow: float  # drawn as an outline only
    p_rim: float  # filled, with a darker (or, for dark colours, lighter) rim
    stroke: Span  # outline / rim width as a share of the side (at least 1 px)
    shade: float  # largest per-channel offset from the colour's RGB value
    brightness: float  # largest common offset of all three channels


@dataclass(frozen=True)
class BackgroundDistribution:
    """How the canvas is painted before objects are drawn."""

    kinds: tuple[str, ...]  # BACKGROUNDS names, drawn uniformly
    brightness: Span  # grey level of each base colour
    tint: Span  # largest per-channel offset from that grey (how coloured the background is)
    speckle: Span  # std of per-pixel noise, in grey levels


@dataclass(frozen=True)
class Rendering:
    """One way of drawing scenes. ``looks`` / ``background`` None: the standard drawing."""

    name: str
    summary: str
    looks: LookDistribution | None = None
    background: BackgroundDistribution | None = None
    p_blur: float = 0.0
    blur: Span = Span(((0.0, 0.0),))  # Gaussian radius in pixels
    p_jpeg: float = 0.0
    jpeg_quality: Span = Span(((95.0, 95.0),))

    @property
    def is_standard(self) -> bool:
        return self.looks is None and self.background is None

    def record(self) -> dict[str, Any]:
        """The parameters as plain JSON (``training.json``, ``bench/synth_stats.py``)."""
        def plain(value: Any) -> Any:
            if isinstance(value, Span):
                return value.record()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value
        fields = {"looks": self.looks, "background": self.background}
        record: dict[str, Any] = {"name": self.name, "summary": self.summary}
        for key, value in fields.items():
            record[key] = None if value is None else {
                k: plain(getattr(value, k)) for k in asdict(value)}
        record.update({"p_blur": self.p_blur, "blur": self.blur.record(), "p_jpeg": self.p_jpeg,
                       "jpeg_quality": self.jpeg_quality.record()})
        return record


STANDARD = Rendering("standard", "SynthRef 1.0's drawing (upright stamps, one RGB per colour "
                     "name, muted textures in [64, 192])")

SHIFTED = Rendering(
    "shifted",
    "test drawing: rotated polygons, other proportions, hollow / rimmed shapes, shade jitter, "
    "smaller shapes, flat / gradient / tiled / textured backgrounds in other colours with "
    "speckle, blur, JPEG",
    looks=LookDistribution(
        p_standard=0.0, turn=Span.of(8.0, 180.0), small_turn=Span.of(6.0, 15.0),
        aspect=Span.of(0.74, 0.92), scale=Span.of(0.86, 0.96),
        cross_arm=Span(((0.22, 0.29), (0.38, 0.45))), star_depth=Span(((0.30, 0.40),
                                                                        (0.52, 0.60))),
        p_hollow=0.3, p_rim=0.35, stroke=Span.of(0.07, 0.14), shade=22.0, brightness=18.0),
    background=BackgroundDistribution(
        kinds=("flat", "gradient", "tiles", "texture"), brightness=Span.of(50.0, 210.0),
        tint=Span.of(25.0, 55.0), speckle=Span.of(4.0, 14.0)),
    p_blur=0.5, blur=Span.of(0.4, 1.1), p_jpeg=0.6, jpeg_quality=Span.of(30.0, 70.0),
)

RANDOMISED = Rendering(
    "randomised",
    "training distribution for domain randomisation: wide ranges around standard and shifted, "
    "a quarter of the objects and backgrounds as standard draws them; tiles, strong tints and "
    "low JPEG qualities held out",
    looks=LookDistribution(
        p_standard=0.25, turn=Span.of(0.0, 180.0), small_turn=Span.of(0.0, 18.0),
        aspect=Span.of(0.70, 1.0), scale=Span.of(0.86, 1.0),
        cross_arm=Span.of(0.20, 0.48), star_depth=Span.of(0.28, 0.62),
        p_hollow=0.25, p_rim=0.3, stroke=Span.of(0.05, 0.16), shade=30.0, brightness=24.0),
    background=BackgroundDistribution(
        kinds=("standard", "flat", "gradient", "texture"), brightness=Span.of(40.0, 215.0),
        tint=Span.of(0.0, 40.0), speckle=Span.of(0.0, 16.0)),
    p_blur=0.35, blur=Span.of(0.3, 1.4), p_jpeg=0.3, jpeg_quality=Span.of(55.0, 95.0),
)

RENDERINGS: dict[str, Rendering] = {r.name: r for r in (STANDARD, SHIFTED, RANDOMISED)}

#: What the training distribution (``randomised``) shares with the test one (``shifted``):
#: recorded in training.json so a reader knows which robustness is interpolation and which is
#: extrapolation.
HELD_OUT: dict[str, str] = {
    "overlap": "rotation, aspect, shape scale, cross arm width, star depth, hollow and rimmed "
               "shapes, stroke widths, shade jitter, flat / gradient / texture backgrounds, "
               "speckle, blur: shifted's ranges lie inside randomised's (continuous draws, so "
               "no test value repeats a training value)",
    "partly held out": "background tint 40-55 (train <= 40); JPEG quality 30-55 (train 55-95)",
    "held out": "tiled (checkerboard) backgrounds: shifted only",
}


def rendering_named(name: str) -> Rendering:
    """The registered rendering ``name``; a ConfigError naming the choices otherwise."""
    try:
        return RENDERINGS[name]
    except KeyError:
        raise ConfigError(f"unknown rendering {name!r}; choose one of: "
                          f"{', '.join(RENDERINGS)}") from None


# --- object looks -------------------------------------------------------------------------------

#: Shapes a quarter turn (or less) would turn into another SynthRef shape: small angles only.
_TURN_SENSITIVE = frozenset({"square", "diamond", "cross"})
#: How much of a look's aspect each shape takes: an ellipse still reads as a circle, but a
#: square only stays a square when barely oblong; other shapes keep their proportions here.
_ASPECT_SHARE = {"circle": 1.0, "square": 0.5}


@dataclass(frozen=True)
class ObjectLook:
    """How one object is drawn inside its nominal square (recorded per annotation)."""

    rotation: float = 0.0  # degrees, counter-clockwise
    aspect: float = 1.0  # height / width before rotation
    scale: float = 1.0  # share of the nominal square
    proportion: float | None = None  # cross arm width or star depth; None: the standard one
    stroke: int = 0  # > 0: hollow, outline of this width
    rim: int = 0  # > 0: filled, with a rim of this width
    shade: tuple[int, int, int] = (0, 0, 0)  # RGB offset from the colour's value

    def record(self) -> dict[str, Any]:
        return {"rotation": round(self.rotation, 2), "aspect": round(self.aspect, 3),
                "scale": round(self.scale, 3),
                "proportion": None if self.proportion is None else round(self.proportion, 3),
                "stroke": self.stroke, "rim": self.rim, "shade": list(self.shade)}


def sample_look(shape: str, side: int, looks: LookDistribution, rng: np.random.Generator
                ) -> ObjectLook | None:
    """A random look for a ``shape`` of nominal ``side`` (None: drawn as standard draws it).

    Every parameter is drawn whether or not the shape uses it, so one object's look never
    shifts the random stream of the next."""
    standard = rng.random() < looks.p_standard
    sign = 1.0 if rng.random() < 0.5 else -1.0
    turn = looks.small_turn.draw(rng) if shape in _TURN_SENSITIVE else looks.turn.draw(rng)
    aspect = looks.aspect.draw(rng)
    scale = looks.scale.draw(rng)
    arm, depth = looks.cross_arm.draw(rng), looks.star_depth.draw(rng)
    style = rng.random()
    width = max(1, round(looks.stroke.draw(rng) * side))
    shade = rng.uniform(-looks.shade, looks.shade, size=3) + rng.uniform(-looks.brightness,
                                                                         looks.brightness)
    if standard:
        return None
    return ObjectLook(
        rotation=sign * turn, aspect=_ASPECT_SHARE.get(shape, 0.0) * (aspect - 1) + 1,
        scale=scale,
        proportion={"cross": arm, "star": depth}.get(shape),
        stroke=width if style < looks.p_hollow else 0,
        rim=max(1, width // 2) if looks.p_hollow <= style < looks.p_hollow + looks.p_rim else 0,
        shade=tuple(round(v) for v in shade))


def _unit_outline(shape: str, look: ObjectLook) -> np.ndarray:
    """``(n, 2)`` vertices centred on 0 in a square of side 1, before aspect and rotation:
    the standard shapes' proportions unless the look sets its own."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "square":
        h = 0.42
        return np.array([(-h, -h), (h, -h), (h, h), (-h, h)])
    if shape == "diamond":
        return np.array([(0, -0.5), (0.5, 0), (0, 0.5), (-0.5, 0)])
    if shape == "triangle":
        return _ring(3, -90.0, 0.5)
    if shape == "cross":
        a = (look.proportion if look.proportion is not None else 1 / 3) / 2
        return np.array([(-a, -0.5), (a, -0.5), (a, -a), (0.5, -a), (0.5, a), (a, a), (a, 0.5),
                         (-a, 0.5), (-a, a), (-0.5, a), (-0.5, -a), (-a, -a)])
    if shape == "star":
        depth = look.proportion if look.proportion is not None else 0.45
        outer, inner = _ring(5, -90.0, 0.5), _ring(5, -90.0 + 36.0, 0.5 * depth)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "pentagon":
        return _ring(5, -90.0, 0.5)
    if shape == "hexagon":
        return _ring(6, 0.0, 0.5)
    raise ValueError(f"no outline for shape {shape!r}")


def _ring(corners: int, start_deg: float, radius: float) -> np.ndarray:
    angles = np.radians(start_deg + 360.0 * np.arange(corners) / corners)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def look_points(shape: str, side: int, look: ObjectLook) -> list[tuple[float, float]]:
    """The shape's vertices in pixels inside its ``side`` square: squashed, rotated, shrunk
    to fit the square if the turn pushed a corner out, then scaled about the centre."""
    points = _unit_outline(shape, look) * np.array([1.0, look.aspect])
    angle = math.radians(look.rotation)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = points @ rotation.T
    reach = float(np.abs(points).max())
    if reach > 0.5:
        points = points * (0.5 / reach)
    points = points * look.scale * (side - 1) + (side - 1) / 2
    return [(float(x), float(y)) for x, y in points]


@dataclass(frozen=True, eq=False)
class LookMasks:
    """What to paint for one object: the silhouette, and the line (outline or rim) if any."""

    fill: Image.Image | None  # mode "L" side x side; None for a hollow shape
    line: Image.Image | None
    silhouette_area: int  # pixels of the filled shape (its size, hollow or not)
    tight: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of every painted pixel


@lru_cache(maxsize=64)  # dress_scene measures the masks, render paints the same ones
def look_masks(shape: str, side: int, look: ObjectLook) -> LookMasks:
    points = look_points(shape, side, look)
    silhouette = Image.new("L", (side, side), 0)
    ImageDraw.Draw(silhouette).polygon(points, fill=255)
    line = None
    width = look.stroke or look.rim
    if width:
        # the band inside the silhouette's edge: the silhouette minus its erosion (PIL's wide
        # polygon outlines leave seams across concave corners, e.g. inside a cross)
        inner = silhouette.filter(ImageFilter.MinFilter(2 * width + 1))
        line = Image.fromarray(np.where(np.asarray(inner) > 0, 0, np.asarray(silhouette))
                               .astype(np.uint8))
    painted = np.asarray(silhouette) > 0
    if line is not None:
        painted = painted | (np.asarray(line) > 0)
    if not painted.any():  # a degenerate polygon: paint its centre pixel
        silhouette.putpixel((side // 2, side // 2), 255)
        painted = np.asarray(silhouette) > 0
    cols, rows = np.flatnonzero(painted.any(axis=0)), np.flatnonzero(painted.any(axis=1))
    tight = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    area = max(1, int((np.asarray(silhouette) > 0).sum()))
    return LookMasks(None if look.stroke else silhouette, line, area, tight)


def dress_scene(scene: Scene, rendering: Rendering, rng: np.random.Generator) -> Scene:
    """The scene with a look per object (from ``rng``) and each box and area re-measured from
    the mask that will be painted. ``standard`` returns the scene untouched."""
    if rendering.looks is None:
        return scene
    dressed = []
    for obj in scene.objects:
        look = sample_look(obj.shape, obj.side, rendering.looks, rng)
        if look is None:
            dressed.append(obj)
            continue
        masks = look_masks(obj.shape, obj.side, look)
        tx0, ty0, tx1, ty1 = masks.tight
        box = (float(obj.x + tx0), float(obj.y + ty0), float(obj.x + tx1), float(obj.y + ty1))
        dressed.append(replace(obj, box=box, area=masks.silhouette_area, look=look))
    return replace(scene, objects=tuple(dressed))


def _shaded(rgb: tuple[int, int, int], offset: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + o, 0, 255)) for c, o in zip(rgb, offset, strict=True))


def _rim_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Darker for a bright colour, lighter for a dark one: a rim is always visible."""
    if sum(rgb) / 3 < 70:
        return tuple(min(255, c + 90) for c in rgb)
    return tuple(int(c * 0.55) for c in rgb)


# --- backgrounds --------------------------------------------------------------------------------

def _base_color(rng: np.random.Generator, dist: BackgroundDistribution) -> np.ndarray:
    grey, tint = dist.brightness.draw(rng), dist.tint.draw(rng)
    return np.clip(grey + rng.uniform(-tint, tint, size=3), 0, 255).astype(np.float32)


def _tiles(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    cell = int(rng.integers(10, 41))
    xs, ys = np.arange(width)[None, :] // cell, np.arange(height)[:, None] // cell
    return ((xs + ys) % 2).astype(np.float32)


def _field(kind: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``(height, width)`` in [0, 1]: where each pixel sits between the two base colours."""
    if kind == "flat":
        return np.zeros((height, width), dtype=np.float32)
    if kind == "gradient":
        xs = np.arange(width, dtype=np.float32)[None, :]
        ys = np.arange(height, dtype=np.float32)[:, None]
        return np.broadcast_to(_gradient(rng, xs, ys), (height, width)).astype(np.float32)
    if kind == "tiles":
        return _tiles(rng, width, height)
    if kind == "texture":
        return np.asarray(_blend_field(rng, width, height), dtype=np.float32)
    raise ConfigError(f"unknown background kind {kind!r}; choose one of: "
                      f"{', '.join(BACKGROUNDS)}")


BACKGROUNDS = ("standard", "flat", "gradient", "tiles", "texture")


def paint_background(rng: np.random.Generator, width: int, height: int,
                     dist: BackgroundDistribution) -> tuple[Image.Image, str]:
    """A canvas of one of ``dist.kinds`` and that kind's name: two base colours mixed through
    a field, plus per-pixel speckle (``standard``: SynthRef 1.0's texture itself)."""
    kind = dist.kinds[int(rng.integers(len(dist.kinds)))]
    if kind == "standard":
        return Image.fromarray(render_background(rng, width, height)), kind
    first, second = _base_color(rng, dist), _base_color(rng, dist)
    mix = _field(kind, rng, width, height)[..., None]
    if kind == "tiles":  # hard edges everywhere: half the contrast of the smooth kinds
        mix = mix * np.float32(0.5)
    pixels = first + (second - first) * mix
    speckle = dist.speckle.draw(rng)
    if speckle > 0:
        noise = _smooth_noise(rng, width, height, 1.0).astype(np.float32)  # per-pixel grain
        pixels = pixels + (noise[..., None] - 127.5) * np.float32(speckle / 74.0)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), kind


# --- the whole image ----------------------------------------------------------------------------

def render(scene: Scene, rendering: Rendering, rng: np.random.Generator
           ) -> tuple[Image.Image, dict[str, Any] | None]:
    """Draw a (dressed) scene; return the image and what was drawn for the whole image
    (background kind, blur radius, JPEG quality; None for ``standard``, which is
    :func:`~refground.data.synth.scenes.render_scene` itself, so its bytes are those SynthRef
    has always written)."""
    if rendering.is_standard:
        return render_scene(scene, rng), None
    assert rendering.background is not None
    image, kind = paint_background(rng, scene.width, scene.height, rendering.background)
    for obj in scene.objects:
        _paint_object(image, obj)
    blur = rendering.blur.draw(rng)
    blurred = rng.random() < rendering.p_blur
    if blurred:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    quality = round(rendering.jpeg_quality.draw(rng))
    compressed = rng.random() < rendering.p_jpeg
    if compressed:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image, {"background": kind, "blur": round(blur, 3) if blurred else 0.0,
                   "jpeg_quality": quality if compressed else None}


def _paint_object(image: Image.Image, obj: SceneObject) -> None:
    square = (obj.x, obj.y, obj.x + obj.side, obj.y + obj.side)
    if obj.look is None:
        image.paste(COLORS[obj.color], square, stamp(obj.shape, obj.side).mask)
        return
    color = _shaded(COLORS[obj.color], obj.look.shade)
    masks = look_masks(obj.shape, obj.side, obj.look)
    if masks.fill is not None:
        image.paste(color, square, masks.fill)
    if masks.line is not None:
        image.paste(color if obj.look.stroke else _rim_color(color), square, masks.line)
