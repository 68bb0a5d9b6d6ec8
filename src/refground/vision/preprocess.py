"""CLIP image preprocessing on tensors: batched, on any device, no PIL round trip per view.

Methods such as visual-prompt render many views of one image (one per proposal and prompt
style); sending each through PIL and the Hugging Face image processor would dominate the run
time. :func:`preprocess_tensor` does the same steps as ``CLIPImageProcessor`` — resize the
shorter side (bicubic, antialiased), center crop, rescale to [0, 1], normalise — as a few
batched torch ops. The reference path through the processor itself is :func:`preprocess_pil`;
a test keeps the two close (they differ only by PIL's uint8 rounding and resampler details).

This module needs torch, numpy and pillow only, so importing it never pulls in transformers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import ceil
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from refground.errors import ImageError

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_IMAGE_SIZE = 224

ImageTensorInput = Tensor | Sequence[Tensor]


@dataclass(frozen=True)
class ClipPreprocessConfig:
    """The numbers CLIP preprocessing needs, read once from an image processor's config.

    ``shortest_edge`` set: the shorter side is resized to it (aspect kept); otherwise
    ``resize_to`` ``(height, width)`` is used as is (ViT-style processors). ``crop_size`` is
    ``(height, width)``, or ``None`` to skip the crop.
    """

    shortest_edge: int | None = DEFAULT_IMAGE_SIZE
    resize_to: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_normalize: bool = True

    def __post_init__(self) -> None:
        if self.do_resize and self.shortest_edge is None and self.resize_to is None:
            raise ImageError("preprocessing needs shortest_edge or resize_to when do_resize is set")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ImageError(
                f"image_mean and image_std need 3 values (RGB), got {self.image_mean} and "
                f"{self.image_std}"
            )
        if any(s <= 0 for s in self.image_std):
            raise ImageError(f"image_std must be positive, got {self.image_std}")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every output, or ``None`` when it depends on the input."""
        if self.crop_size is not None:
            return self.crop_size
        if self.do_resize and self.resize_to is not None:
            return self.resize_to
        return None

    @classmethod
    def for_image_size(cls, image_size: int) -> ClipPreprocessConfig:
        """OpenAI CLIP defaults for a model whose vision tower takes ``image_size`` squares."""
        return cls(shortest_edge=image_size, crop_size=(image_size, image_size))

    @classmethod
    def from_image_processor(cls, processor: Any) -> ClipPreprocessConfig:
        """Read the settings of a Hugging Face image processor (``CLIPImageProcessor`` & co).

        Works on the processor object or its ``to_dict()``, so it is independent of the
        processor's backend (PIL or torchvision) and of the transformers version.
        """
        config: Mapping[str, Any] = (
            processor if isinstance(processor, Mapping) else processor.to_dict()
        )
        size = config.get("size") or {"shortest_edge": DEFAULT_IMAGE_SIZE}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        shortest_edge: int | None = None
        resize_to: tuple[int, int] | None = None
        if size.get("shortest_edge"):
            shortest_edge = int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):
            resize_to = (int(size["height"]), int(size["width"]))
        else:
            raise ImageError(f"unsupported image processor size setting {size!r}")
        crop: tuple[int, int] | None = None
        if config.get("do_center_crop", True):
            crop_size = config.get("crop_size") or shortest_edge or DEFAULT_IMAGE_SIZE
            if isinstance(crop_size, int):
                crop = (crop_size, crop_size)
            else:
                crop = (int(crop_size["height"]), int(crop_size["width"]))
        mean = config.get("image_mean") or OPENAI_CLIP_MEAN
        std = config.get("image_std") or OPENAI_CLIP_STD
        return cls(
            shortest_edge=shortest_edge,
            resize_to=resize_to,
            crop_size=crop,
            image_mean=_three(mean),
            image_std=_three(std),
            do_resize=bool(config.get("do_resize", True)),
            do_normalize=bool(config.get("do_normalize", True)),
        )


def _three(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, int | float):
        return (float(values),) * 3  # type: ignore[return-value]
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def pil_to_tensor(image: Image.Image) -> Tensor:
    """An RGB ``uint8`` tensor ``(3, H, W)`` of a PIL image (converted to RGB first)."""
    array = np.array(image.convert("RGB"), dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def check_image_tensor(image: Tensor, what: str = "image") -> Tensor:
    """Return ``image`` as ``(3, H, W)``; grey ``(1, H, W)`` is repeated to 3 channels.

    Raises :class:`ImageError` for other shapes, naming the likely mistake (channels last).
    """
    if image.ndim != 3:
        raise ImageError(f"{what} must be a (3, H, W) tensor, got shape {tuple(image.shape)}")
    if image.shape[0] == 1:
        return image.expand(3, -1, -1)
    if image.shape[0] != 3:
        hint = " (channels last? use .permute(2, 0, 1))" if image.shape[-1] in (1, 3, 4) else ""
        raise ImageError(
            f"{what} must be a (3, H, W) RGB tensor, got shape {tuple(image.shape)}{hint}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ImageError(f"{what} is empty: shape {tuple(image.shape)}")
    return image


def resized_size(height: int, width: int, config: ClipPreprocessConfig) -> tuple[int, int]:
    """The ``(height, width)`` after the resize step, with the processor's own rounding.

    Hugging Face's rule (``get_resize_output_image_size``): the short side becomes exactly
    ``shortest_edge``, the long side ``int(shortest_edge * long / short)`` (truncated).
    """
    if not config.do_resize:
        return height, width
    if config.shortest_edge is None:
        assert config.resize_to is not None
        return config.resize_to
    size = config.shortest_edge
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _center_crop(batch: Tensor, crop: tuple[int, int]) -> Tensor:
    """Center crop ``(N, C, H, W)`` like HF's ``center_crop``, zero-padding when too small."""
    height, width = batch.shape[-2:]
    crop_h, crop_w = crop
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        top, left = ceil(pad_h / 2), ceil(pad_w / 2)
        batch = F.pad(batch, (left, pad_w - left, top, pad_h - top))
        height, width = batch.shape[-2:]
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return batch[..., top:top + crop_h, left:left + crop_w]


def _preprocess_same_size(batch: Tensor, config: ClipPreprocessConfig) -> Tensor:
    """Preprocess one ``(N, 3, H, W)`` batch whose images share a size."""
    is_uint8 = batch.dtype == torch.uint8
    if not (is_uint8 or batch.is_floating_point()):
        raise ImageError(f"images must be uint8 in [0, 255] or float in [0, 1], got {batch.dtype}")
    upper = 255.0 if is_uint8 else 1.0
    x = batch.float()
    height, width = x.shape[-2:]
    new_h, new_w = resized_size(height, width, config)
    if (new_h, new_w) != (height, width):
        # Bicubic with antialias uses PIL's kernel (a = -0.5) and widens it when shrinking,
        # which is what PIL does; the clamp stands in for PIL's saturation to uint8.
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                          align_corners=False).clamp_(0.0, upper)
    if config.crop_size is not None:
        x = _center_crop(x, config.crop_size)
    x = x / upper
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def preprocess_tensor(images: ImageTensorInput, config: ClipPreprocessConfig | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """CLIP-preprocess images given as tensors; returns float32 ``(N, 3, h, w)``.

    ``images`` is a ``(N, 3, H, W)`` batch or a list of ``(3, H, W)`` images of any sizes;
    ``uint8`` values are taken as [0, 255], floating values as [0, 1]. A list is grouped by
    size so each group is resized by one ``interpolate`` call. Work happens on ``device``
    (default: where the images are), so moving ``uint8`` images to a GPU first is cheapest.
    """
    config = config or ClipPreprocessConfig()
    if isinstance(images, Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise ImageError(
                f"images must be (N, 3, H, W) or a list of (3, H, W), got {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            return _empty(config, device or images.device)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        check_image_tensor(images[0])
        return _preprocess_same_size(images.to(device) if device else images, config)
    items = [check_image_tensor(img, f"image {i}") for i, img in enumerate(images)]
    if not items:
        return _empty(config, device or "cpu")
    groups: dict[tuple[int, int, torch.dtype], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((item.shape[1], item.shape[2], item.dtype), []).append(index)
    if len(groups) == 1:
        batch = torch.stack(items)
        return _preprocess_same_size(batch.to(device) if device else batch, config)
    output: Tensor | None = None
    for indices in groups.values():
        batch = torch.stack([items[i] for i in indices])
        done = _preprocess_same_size(batch.to(device) if device else batch, config)
        if output is None:
            if config.output_size is None:
                raise ImageError(
                    "images of different sizes need a crop or a fixed resize to be batched"
                )
            output = done.new_empty((len(items), *done.shape[1:]))
        output[torch.tensor(indices, device=done.device)] = done
    assert output is not None
    return output


def _empty(config: ClipPreprocessConfig, device: torch.device | str) -> Tensor:
    height, width = config.output_size or (0, 0)
    return torch.empty((0, 3, height, width), device=device)


def preprocess_pil(images: Sequence[Image.Image], image_processor: Any) -> Tensor:
    """Reference path: the Hugging Face image processor itself, one PIL image at a time.

    Slower than :func:`preprocess_tensor` but exactly what transformers does; use it to check
    parity or when a model ships a processor whose steps are not plain CLIP ones.
    """
    if not images:
        raise ImageError("preprocess_pil needs at least one image")
    rgb = [image.convert("RGB") for image in images]
    output = image_processor(images=rgb, return_tensors="pt")
    return output["pixel_values"].float()


def squash_config(size: int, mean: Sequence[float], std: Sequence[float]) -> ClipPreprocessConfig:
    """Preprocessing that squashes the whole image to ``size x size`` (no crop) and normalises.

    A crop would cut off objects at the image's edges, and boxes are predicted normalised to
    the whole image, so the aspect change is undone when they are scaled back to pixels.
    """
    m0, m1, m2 = (float(v) for v in mean)
    s0, s1, s2 = (float(v) for v in std)
    return ClipPreprocessConfig(shortest_edge=None, resize_to=(size, size), crop_size=None,
                                image_mean=(m0, m1, m2), image_std=(s0, s1, s2))


def crop_box(image: Tensor, box: Sequence[float] | Tensor) -> Tensor:
    """``image[:, y0:y1, x0:x1]`` of a pixel xyxy box (rounded), clamped into the image and at
    least one pixel each side, so a degenerate proposal still gives CLIP something to see."""
    _, height, width = image.shape
    x0, y0, x1, y1 = (int(v) for v in torch.as_tensor(box).round().tolist())
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return image[:, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
