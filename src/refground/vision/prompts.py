"""Visual prompts rendered on tensors: the whole image with one proposal marked.

For each proposal the visual-prompt method shows CLIP the *whole* image (spatial context is kept)
with the proposal's rectangle sharp, the rest blurred (optionally also grayscale), and a red ellipse
inscribed in the box. The straightforward renderer (tests/reference_visual_prompt.py) does this per
proposal with PIL at full resolution and lets CLIP's preprocessing shrink each view; its cost is one
full-image blur, paste and resize per view. Here:

* each background (blurred, gray, ...) is computed once per image, at full resolution with the
  same extended-box blur PIL uses;
* CLIP's resize (bicubic, antialiased) is linear and separable, so it is a pair of matrices
  ``A_h (h x H)`` and ``A_w (w x W)`` (the crop is a slice of their rows): a view is
  ``A_h (background + delta) A_w^T``, and ``A_h background A_w^T`` is shared by all proposals;
* a proposal changes the background only inside its box (sharp window, marker ring), so its
  ``delta`` is a small full-resolution patch, drawn with PIL's pixel conventions, and costs one
  small matrix product.

So the views equal the PIL pipeline's up to uint8 rounding, while the per-view work is tiny;
the parity test checks that the method's decisions do not change.
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
    """How a proposal is shown. Defaults: the best settings found for it (docs/methods.md)."""

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
    """Where the original image lands in CLIP's input: a resize, then a crop at an offset."""

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
        return cls((new_w - out_w) // 2, (new_h - out_h) // 2, new_h, new_w, out_h, out_w)


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


def resample_matrix(length: int, out_length: int, dtype: torch.dtype = torch.float32
                    ) -> Tensor:
    """``(out_length, length)`` matrix of a 1-D bicubic antialiased resize, read off
    ``interpolate`` applied to one-hot rows (resizing along the width; a tall ``(L, 1)`` input
    does not give the same weights in torch 2.13)."""
    eye = torch.eye(length, dtype=dtype).view(length, 1, 1, length)
    rows = F.interpolate(eye, size=(1, out_length), mode="bicubic", antialias=True,
                         align_corners=False)
    return rows[:, 0, 0, :].T.contiguous()


@dataclass(frozen=True)
class Marks:
    """PIL's pixels of one proposal, within its patch ``[top:bottom, left:right]``."""

    top: int
    bottom: int
    left: int
    right: int
    window: Tensor  # (h, w) bool: pasted back sharp
    ring: Tensor  # (h, w) bool: marker colour


def proposal_marks(box: tuple[int, int, int, int], style: PromptStyle, height: int, width: int
                   ) -> Marks | None:
    """The sharp window and marker pixels of a rounded box, with PIL's conventions: a pasted
    crop covers ``x0 .. x1 - 1``; an outline drawn in ``(x0, y0, x1, y1)`` spans ``x0 .. x1``
    inclusive, ``round(stroke)`` pixels wide. ``None`` when nothing lands in the image."""
    x0, y0, x1, y1 = box
    top, bottom = max(0, y0), min(height, y1 + 1)
    left, right = max(0, x0), min(width, x1 + 1)
    if bottom <= top or right <= left:
        return None
    ys = torch.arange(top, bottom, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(left, right, dtype=torch.float32)[None, :] + 0.5
    if style.sharp_window and x1 > x0 and y1 > y0:
        window = (ys < y1) & (xs < x1) & (ys >= y0) & (xs >= x0)
    else:
        window = torch.zeros(bottom - top, right - left, dtype=torch.bool)
    stroke = max(1, round(style.stroke))
    if style.marker == "ellipse":
        cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
        ax, ay = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
        outer = ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1
        if ax > stroke and ay > stroke:
            hole = ((xs - cx) / (ax - stroke)) ** 2 + ((ys - cy) / (ay - stroke)) ** 2 < 1
            ring = outer & ~hole
        else:
            ring = outer
    elif style.marker == "rectangle":
        inside = (xs >= x0 + stroke) & (xs < x1 + 1 - stroke) & (ys >= y0 + stroke) & (
            ys < y1 + 1 - stroke)
        ring = ~inside
    else:
        ring = torch.zeros_like(window)
    return Marks(top, bottom, left, right, window, ring)


def render_views(image: Tensor, boxes: Tensor, style: PromptStyle,
                 config: ClipPreprocessConfig, normalize: bool = False) -> Tensor:
    """All prompt views of one image, in CLIP's input frame (see the module docstring).

    ``image``: ``(3, H, W)`` float in [0, 1]; ``boxes``: ``(P, 4)`` xyxy pixels (rounded to
    whole pixels, as PIL draws them). Returns ``(P, V, 3, h, w)``, one view per entry of
    ``style.backgrounds``: in [0, 1], or with ``normalize`` normalised with the config's mean
    and std, ready for CLIP.
    """
    _, height, width = image.shape
    frame = Frame.for_image(width, height, config)
    rows = resample_matrix(height, frame.resized_height, image.dtype)[
        frame.top:frame.top + frame.height]
    cols = resample_matrix(width, frame.resized_width, image.dtype)[
        frame.left:frame.left + frame.width]
    needs_blur = any("blur" in b for b in style.backgrounds)
    blurred = gaussian_blur(image[None], style.blur_radius)[0] if needs_blur else image
    treatments = {
        "none": lambda: image,
        "blur": lambda: blurred,
        "gray": lambda: grayscale(image[None])[0],
        "blur-gray": lambda: grayscale(blurred[None])[0],
    }
    layers = torch.stack([treatments[b]() for b in style.backgrounds])  # (V, 3, H, W)
    base = torch.einsum("hH,vcHW,wW->vchw", rows, layers, cols)
    views = base[None].repeat(len(boxes), 1, 1, 1, 1)  # (P, V, 3, h, w)
    color = torch.tensor(style.color, dtype=image.dtype).view(1, 3, 1, 1) / 255
    for index, box in enumerate(boxes.round().int().tolist()):
        marks = proposal_marks(tuple(box), style, height, width)
        if marks is None:
            continue
        patch = (slice(None), slice(None), slice(marks.top, marks.bottom),
                 slice(marks.left, marks.right))
        background = layers[patch]
        drawn = torch.where(marks.window, image[patch[1:]][None], background)
        drawn = torch.where(marks.ring, color, drawn)
        views[index] += torch.einsum("hH,vcHW,wW->vchw", rows[:, marks.top:marks.bottom],
                                     drawn - background, cols[:, marks.left:marks.right])
    views = views.clamp_(0, 1)
    if normalize:
        mean = image.new_tensor(config.image_mean).view(3, 1, 1)
        std = image.new_tensor(config.image_std).view(3, 1, 1)
        views = views.sub_(mean).div_(std)
    return views
