"""Box operations in pure torch (torchvision is not available with the CPU torch we pin).

Conventions: a box tensor has shape ``(..., 4)``; ``xyxy`` is ``(x0, y0, x1, y1)`` in absolute
pixels unless a name says otherwise (``cxcywh``, ``_norm``).

Degenerate boxes, decided once for the whole library:

* zero width or height is **valid** (a point or a line); its area is 0 and its IoU with
  anything, itself included, is 0 — so a collapsed prediction never counts as a hit;
* inverted boxes (``x1 < x0`` or ``y1 < y0``), NaN and infinities are **errors**: they are never
  silently "repaired", because swapping corners would hide a bug upstream. :func:`as_tensor`
  and :func:`check_boxes` raise :class:`~refground.errors.BoxError` naming the offending row;
* boxes partly or wholly outside the image are valid geometry; :func:`clip_to_image` clamps
  them when a caller needs them inside (a box wholly outside becomes zero-area on the border).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from refground.errors import BoxError
from refground.types import BoxTuple

_EPS = 1e-9


def check_boxes(boxes: Tensor, what: str = "boxes") -> Tensor:
    """Raise :class:`BoxError` unless ``boxes`` is a finite ``(..., 4)`` xyxy tensor."""
    if boxes.shape[-1:] != (4,):
        raise BoxError(f"{what} must have shape (..., 4), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        bad = (~torch.isfinite(boxes)).any(-1).nonzero()[0].tolist()
        raise BoxError(f"{what} contain NaN or infinite values (first at index {bad})")
    inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if inverted.any():
        index = inverted.nonzero()[0].tolist()
        raise BoxError(
            f"{what} must be xyxy with x1 >= x0 and y1 >= y0; row {index} is "
            f"{boxes[tuple(index)].tolist()} (did you pass xywh? convert with xywh_to_xyxy)"
        )
    return boxes


def as_tensor(boxes: Tensor | Sequence[float] | Sequence[Sequence[float]], what: str = "boxes"
              ) -> Tensor:
    """Turn a box or a list of boxes into a validated float32 xyxy tensor."""
    tensor = torch.as_tensor(boxes, dtype=torch.float32)
    if tensor.ndim == 1 and tensor.numel() == 0:
        tensor = tensor.reshape(0, 4)
    return check_boxes(tensor, what)


def to_tuple(box: Tensor | Sequence[float]) -> BoxTuple:
    """One box as a plain ``(x0, y0, x1, y1)`` tuple of Python floats."""
    values = box.tolist() if isinstance(box, Tensor) else list(box)
    if len(values) != 4:
        raise BoxError(f"a box has 4 numbers, got {values!r}")
    x0, y0, x1, y1 = (float(v) for v in values)
    return (x0, y0, x1, y1)


def image_boxes_key(image: str, boxes: Tensor) -> str:
    """The identity of some boxes on one image: the image's key and the boxes' float32 bytes.

    What CLIP sees of a box (its crop, its marked view) depends on the image and the box, not
    on the expression, and the protocol asks several expressions of each image; work keyed by
    this is done once. One box ``(4,)`` or several ``(N, 4)``; also the row key of the crop
    feature tables, so it must not change.
    """
    return f"{image}|{boxes.detach().to('cpu', torch.float32).numpy().tobytes().hex()}"


# --- format conversions -----------------------------------------------------------------------

def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def normalize(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """Pixels -> fractions of the image size (same box format in and out)."""
    scale = _scale(boxes, width, height)
    return boxes / scale


def denormalize(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """Fractions of the image size -> pixels (same box format in and out)."""
    return boxes * _scale(boxes, width, height)


def _scale(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    return torch.stack((w, h, w, h), dim=-1)


# --- geometry ---------------------------------------------------------------------------------

def area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0)


def _intersection_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcasting intersection and union areas of ``a`` and ``b``."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = area(a) + area(b) - inter
    return inter, union


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > _EPS, num / den.clamp(min=_EPS), torch.zeros_like(num))


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise IoU of two broadcastable box tensors (0 where the union is empty)."""
    inter, union = _intersection_union(a, b)
    return _safe_ratio(inter, union)


def iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: ``(N, 4) x (M, 4) -> (N, M)``."""
    return iou(a[:, None, :], b[None, :, :])


def enclosing_box(a: Tensor, b: Tensor) -> Tensor:
    """Smallest box containing both ``a`` and ``b`` (element-wise, broadcasting)."""
    return torch.cat(
        (torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])), dim=-1)


def giou(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise generalised IoU (Rezatofighi et al. 2019), in [-1, 1]."""
    inter, union = _intersection_union(a, b)
    hull = area(enclosing_box(a, b))
    return _safe_ratio(inter, union) - _safe_ratio(hull - union, hull)


def giou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU: ``(N, 4) x (M, 4) -> (N, M)``."""
    return giou(a[:, None, :], b[None, :, :])


def union_box(boxes: Tensor) -> Tensor:
    """Smallest box containing all boxes along dimension -2: ``(..., K, 4) -> (..., 4)``."""
    if boxes.shape[-2] == 0:
        raise BoxError("union_box needs at least one box")
    return torch.cat((boxes[..., :2].amin(-2), boxes[..., 2:].amax(-2)), dim=-1)


def clip_to_image(boxes: Tensor, width: float, height: float) -> Tensor:
    """Clamp boxes into ``[0, width] x [0, height]``."""
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    Computes the IoU matrix once and walks it in score order, so the Python loop runs over the
    kept boxes only (proposal sets are tens to hundreds of boxes).
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    overlaps = iou_matrix(boxes[order], boxes[order])
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def gaussian_heatmaps(boxes: Tensor, grid: int, sigma_scale: float, min_sigma: float) -> Tensor:
    """``(..., grid * grid)`` Gaussian of each normalised cxcywh box over the patch centres.

    The standard deviation along each axis is ``sigma_scale`` times the box's side (at least
    ``min_sigma``), so the heatmap covers the box and fades outside it.
    """
    centres = (torch.arange(grid, device=boxes.device, dtype=boxes.dtype) + 0.5) / grid
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    cx, cy, w, h = boxes.unsqueeze(-1).unbind(-2)
    sx = (w * sigma_scale).clamp_min(min_sigma)
    sy = (h * sigma_scale).clamp_min(min_sigma)
    return torch.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
