"""Visual prompts rendered on tensors: the whole image with one proposal marked.

For each proposal the visual-prompt method shows CLIP the *whole* image (spatial context is
kept) with the proposal's rectangle sharp, the rest blurred (optionally also grayscale), and a
red ellipse inscribed in the box. A straightforward renderer does this per proposal at full
resolution with PIL and then lets CLIP's preprocessing shrink it to 224 px. Here we render
directly in CLIP's input frame instead:

* the image is resized to CLIP's frame once; the blurred and gray backgrounds are computed once
  per image in that frame (a Gaussian of sigma ``r`` before a downscale by ``s`` is a Gaussian of
  sigma ``r * s`` after it);
* each proposal becomes two coverage masks in the frame — the sharp window (exact per-pixel
  area coverage of the rectangle) and the marker ring (supersampled) — so compositing is a few
  broadcast multiply-adds over ``(P, V, 3, S, S)``, with no per-proposal Python loop.

The result matches the PIL pipeline up to resampling differences; the parity test checks that
the method's decisions do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from refground.errors import ConfigError, ImageError
from refground.vision.preprocess import ClipPreprocessConfig, resized_size

BACKGROUNDS = ("none", "blur", "gray", "blur-gray")
MARKERS = ("ellipse", "rectangle", "none")
# ITU-R 601-2 luma, as PIL's convert("L") uses.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class PromptStyle:
    """How a proposal is shown. Defaults: the best settings of the CLIP notebook."""

    marker: str = "ellipse"
    color: tuple[int, int, int] = (255, 0, 0)
    stroke: float = 3.0  # marker line width in original-image pixels
    blur_radius: float = 20.0  # Gaussian sigma in original-image pixels (PIL's "radius")
    backgrounds: tuple[str, ...] = ("blur", "blur-gray")  # one view per entry
    sharp_window: bool = True  # paste the box's rectangle back sharp

    def __post_init__(self) -> None:
        if self.marker not in MARKERS:
            raise ConfigError(f"marker must be one of {MARKERS}, got {self.marker!r}")
        unknown = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown or not self.backgrounds:
            raise ConfigError(f"backgrounds must be a non-empty subset of {BACKGROUNDS}, "
                              f"got {self.backgrounds!r}")
        if self.stroke <= 0 or self.blur_radius < 0:
            raise ConfigError("stroke must be > 0 and blur_radius >= 0")


@dataclass(frozen=True)
class Frame:
    """Where the original image lands in CLIP's input: a scale, then a crop at an offset."""

    scale_x: float
    scale_y: float
    left: int
    top: int
    resized_height: int
    resized_width: int
    height: int
    width: int

    @classmethod
    def for_image(cls, width: int, height: int, config: ClipPreprocessConfig) -> Frame:
        """The frame CLIP preprocessing (``config``) puts a ``width x height`` image in."""
        new_h, new_w = resized_size(height, width, config)
        out_h, out_w = config.crop_size or (new_h, new_w)
        if out_h > new_h or out_w > new_w:
            raise ImageError(
                f"a {width}x{height} image resized to {new_w}x{new_h} is smaller than the "
                f"{out_w}x{out_h} crop; visual prompts need the crop inside the image")
        return cls(new_w / width, new_h / height, (new_w - out_w) // 2, (new_h - out_h) // 2,
                   new_h, new_w, out_h, out_w)

    def map_boxes(self, boxes: Tensor) -> Tensor:
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        offset = boxes.new_tensor([self.left, self.top, self.left, self.top])
        return boxes * scale - offset

    def resize(self, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` float images in [0, 1] -> resized (bicubic, antialiased), uncropped."""
        return F.interpolate(images, size=(self.resized_height, self.resized_width),
                             mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    def crop(self, resized: Tensor) -> Tensor:
        return resized[..., self.top:self.top + self.height, self.left:self.left + self.width]


def _box_radius(sigma: float, passes: int) -> tuple[int, float]:
    """PIL's extended-box radius for a Gaussian of ``sigma`` made of ``passes`` box blurs:
    ``whole`` full-weight pixels each side plus one edge pixel of weight ``edge``."""
    variance = sigma * sigma / passes
    length = math.sqrt(12 * variance + 1)
    whole = math.floor((length - 1) / 2)
    edge = ((2 * whole + 1) * (whole * (whole + 1) - 3 * variance)
            / (6 * (variance - (whole + 1) * (whole + 1))))
    return whole, edge


def _box_blur(images: Tensor, whole: int, edge: float, dim: int) -> Tensor:
    """One extended box blur along ``dim`` with cumulative sums: O(1) per pixel at any radius.

    Output pixel ``i`` averages pixels ``i - whole .. i + whole`` at weight 1 and the pair
    ``i -+ (whole + 1)`` at weight ``edge``; borders repeat the edge pixels, as PIL does.
    """
    reach = whole + 1
    pad = [0, 0, 0, 0]
    pad[(3 - dim) * 2:(3 - dim) * 2 + 2] = [reach + 1, reach]  # one extra for the difference
    padded = F.pad(images, pad, mode="replicate")
    sums = padded.cumsum(dim)
    length = images.shape[dim]
    window = sums.narrow(dim, 2 * reach + 1, length) - sums.narrow(dim, 0, length)
    outer = padded.narrow(dim, 1, length) + padded.narrow(dim, 2 * reach + 1, length)
    return (window - (1 - edge) * outer) / (2 * whole + 1 + 2 * edge)


def gaussian_blur(images: Tensor, sigma: float, passes: int = 3) -> Tensor:
    """Gaussian blur of ``(N, C, H, W)`` as PIL computes ``GaussianBlur(radius=sigma)``:
    ``passes`` extended box blurs per axis, borders extended with the edge pixels."""
    if sigma <= 0:
        return images
    whole, edge = _box_radius(sigma, passes)
    out = images
    for dim in (2, 3):
        for _ in range(passes):
            out = _box_blur(out, whole, edge, dim)
    return out


def grayscale(images: Tensor) -> Tensor:
    luma = (images * _LUMA.to(images).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return luma.expand_as(images)


def rectangle_coverage(boxes: Tensor, height: int, width: int) -> Tensor:
    """Exact share of each frame pixel covered by each box: ``(P, 4) -> (P, H, W)``."""

    def along(lo: Tensor, hi: Tensor, length: int) -> Tensor:
        pixels = torch.arange(length, dtype=boxes.dtype, device=boxes.device)
        return (torch.minimum(hi[:, None], pixels + 1) - torch.maximum(lo[:, None], pixels)
                ).clamp(0, 1)

    cover_x = along(boxes[:, 0], boxes[:, 2], width)
    cover_y = along(boxes[:, 1], boxes[:, 3], height)
    return cover_y[:, :, None] * cover_x[:, None, :]


def _ellipse_distance(xs: Tensor, ys: Tensor, cx: Tensor, cy: Tensor, ax: Tensor, ay: Tensor
                      ) -> Tensor:
    """Approximate signed distance (pixels, negative inside) to an axis-aligned ellipse.

    First-order: ``(f - 1) / |grad f|`` with ``f`` the normalised radius; exact on the axes
    and within a fraction of a pixel near the boundary, which is all anti-aliasing needs.
    """
    u, v = (xs - cx) / ax, (ys - cy) / ay
    radius = torch.sqrt(u * u + v * v).clamp(min=1e-6)
    gradient = torch.sqrt((u / ax) ** 2 + (v / ay) ** 2).clamp(min=1e-6) / radius
    return (radius - 1) / gradient


def ellipse_ring_coverage(boxes: Tensor, stroke: float, height: int, width: int) -> Tensor:
    """Anti-aliased coverage of the ring inscribed in each box, ``stroke`` frame pixels wide:
    ``(P, 4) -> (P, H, W)``. One distance evaluation per pixel, no supersampling."""
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None, None]
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None, None]
    ax = ((boxes[:, 2] - boxes[:, 0]) / 2).clamp(min=0.5)[:, None, None]
    ay = ((boxes[:, 3] - boxes[:, 1]) / 2).clamp(min=0.5)[:, None, None]
    xs = torch.arange(width, dtype=boxes.dtype, device=boxes.device)[None, None, :] + 0.5
    ys = torch.arange(height, dtype=boxes.dtype, device=boxes.device)[None, :, None] + 0.5
    inside_outer = (0.5 - _ellipse_distance(xs, ys, cx, cy, ax, ay)).clamp(0, 1)
    inner_x, inner_y = ax - stroke, ay - stroke
    hollow = (inner_x > 0) & (inner_y > 0)  # else the stroke fills the whole ellipse
    outside_inner = (0.5 + _ellipse_distance(xs, ys, cx, cy, inner_x.clamp(min=1e-3),
                                             inner_y.clamp(min=1e-3))).clamp(0, 1)
    return inside_outer * torch.where(hollow, outside_inner, torch.ones_like(outside_inner))


def rectangle_ring_coverage(boxes: Tensor, stroke: float, height: int, width: int) -> Tensor:
    inner = boxes + boxes.new_tensor([stroke, stroke, -stroke, -stroke])
    inner = torch.stack((inner[:, 0], inner[:, 1], torch.maximum(inner[:, 0], inner[:, 2]),
                         torch.maximum(inner[:, 1], inner[:, 3])), dim=-1)
    return rectangle_coverage(boxes, height, width) - rectangle_coverage(inner, height, width)


def render_views(image: Tensor, boxes: Tensor, style: PromptStyle,
                 config: ClipPreprocessConfig, normalize: bool = False) -> Tensor:
    """All prompt views of one image, in CLIP's frame.

    ``image``: ``(3, H, W)`` float in [0, 1]; ``boxes``: ``(P, 4)`` xyxy pixels. Returns
    ``(P, V, 3, h, w)``, one view per entry of ``style.backgrounds``: in [0, 1], or with
    ``normalize`` already normalised with the config's mean and std. Views are convex blends of
    a few per-image layers (sharp image, backgrounds, marker colour), and normalisation is
    affine, so the layers are normalised once and blended in normalised space.
    """
    _, height, width = image.shape
    frame = Frame.for_image(width, height, config)
    scale = (frame.scale_x + frame.scale_y) / 2
    resized = frame.resize(image[None])
    needs_blur = any("blur" in b for b in style.backgrounds)
    blurred = gaussian_blur(resized, style.blur_radius * scale) if needs_blur else resized
    treatments = {
        "none": lambda: resized,
        "blur": lambda: blurred,
        "gray": lambda: grayscale(resized),
        "blur-gray": lambda: grayscale(blurred),
    }
    backgrounds = torch.cat([frame.crop(treatments[b]()) for b in style.backgrounds])
    sharp = frame.crop(resized)
    color = torch.tensor(style.color, dtype=image.dtype, device=image.device).view(3, 1, 1) / 255
    if normalize:
        mean = image.new_tensor(config.image_mean).view(3, 1, 1)
        std = image.new_tensor(config.image_std).view(3, 1, 1)
        backgrounds, sharp, color = ((x - mean) / std for x in (backgrounds, sharp, color))

    frame_boxes = frame.map_boxes(boxes.to(image.dtype))
    views = backgrounds[None].repeat(len(boxes), 1, 1, 1, 1)  # (P, V, 3, h, w)
    if style.sharp_window:
        window = rectangle_coverage(frame_boxes, frame.height, frame.width)[:, None, None]
        views.lerp_(sharp.expand_as(views), window.expand_as(views))
    if style.marker != "none":
        ring_coverage = ellipse_ring_coverage if style.marker == "ellipse" else (
            rectangle_ring_coverage)
        ring = ring_coverage(frame_boxes, style.stroke * scale, frame.height, frame.width)
        views.lerp_(color.expand_as(views), ring[:, None, None].expand_as(views))
    return views
