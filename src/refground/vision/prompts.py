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
from collections.abc import Callable
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


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with edge-replicating borders."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = images
    for dim in (2, 3):
        shape = [1, 1, 1, 1]
        shape[dim] = len(kernel)
        weight = kernel.reshape(shape).expand(channels, -1, -1, -1)
        pad = (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0)
        out = F.conv2d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
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


def _supersampled(inside: Callable[[Tensor, Tensor], Tensor], boxes: Tensor, height: int,
                  width: int, samples: int = 3) -> Tensor:
    """Average of ``inside(xs, ys)`` over ``samples**2`` points per pixel: ``(P, H, W)``."""
    offsets = (torch.arange(samples, dtype=boxes.dtype, device=boxes.device) + 0.5) / samples

    def coords(length: int) -> Tensor:
        pixels = torch.arange(length, dtype=boxes.dtype, device=boxes.device)
        return (pixels[:, None] + offsets[None, :]).reshape(-1)

    hits = inside(coords(width)[None, None, :], coords(height)[None, :, None]).to(boxes.dtype)
    return F.avg_pool2d(hits[:, None], samples)[:, 0]


def ellipse_ring_coverage(boxes: Tensor, stroke: float, height: int, width: int) -> Tensor:
    """Coverage of the ring inscribed in each box, ``stroke`` frame pixels wide."""
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None, None]
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None, None]
    ax = ((boxes[:, 2] - boxes[:, 0]) / 2).clamp(min=1e-3)[:, None, None]
    ay = ((boxes[:, 3] - boxes[:, 1]) / 2).clamp(min=1e-3)[:, None, None]
    inner_x, inner_y = (ax - stroke).clamp(min=1e-3), (ay - stroke).clamp(min=1e-3)

    def inside(xs: Tensor, ys: Tensor) -> Tensor:
        outer = ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1
        hole = ((xs - cx) / inner_x) ** 2 + ((ys - cy) / inner_y) ** 2 < 1
        return outer & ~hole

    return _supersampled(inside, boxes, height, width)


def rectangle_ring_coverage(boxes: Tensor, stroke: float, height: int, width: int) -> Tensor:
    inner = boxes + boxes.new_tensor([stroke, stroke, -stroke, -stroke])
    inner = torch.stack((inner[:, 0], inner[:, 1], torch.maximum(inner[:, 0], inner[:, 2]),
                         torch.maximum(inner[:, 1], inner[:, 3])), dim=-1)
    return rectangle_coverage(boxes, height, width) - rectangle_coverage(inner, height, width)


def render_views(image: Tensor, boxes: Tensor, style: PromptStyle,
                 config: ClipPreprocessConfig) -> Tensor:
    """All prompt views of one image, in CLIP's frame, before normalisation.

    ``image``: ``(3, H, W)`` float in [0, 1]; ``boxes``: ``(P, 4)`` xyxy pixels. Returns
    ``(P, V, 3, h, w)`` in [0, 1], one view per entry of ``style.backgrounds``.
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
    views = torch.cat([frame.crop(treatments[b]()) for b in style.backgrounds])  # (V, 3, h, w)
    frame_boxes = frame.map_boxes(boxes.to(image.dtype))
    if style.sharp_window:
        window = rectangle_coverage(frame_boxes, frame.height, frame.width)[:, None, None]
        composed = window * frame.crop(resized) + (1 - window) * views[None]
    else:
        composed = views[None].expand(len(boxes), -1, -1, -1, -1)
    if style.marker == "none":
        return composed.contiguous()
    ring_coverage = ellipse_ring_coverage if style.marker == "ellipse" else (
        rectangle_ring_coverage)
    ring = ring_coverage(frame_boxes, style.stroke * scale, frame.height, frame.width)
    color = torch.tensor(style.color, dtype=image.dtype, device=image.device).view(3, 1, 1) / 255
    return ring[:, None, None] * color + (1 - ring[:, None, None]) * composed
