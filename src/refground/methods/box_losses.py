"""Box-regression losses shared by the methods that regress one box per expression.

``erpa`` and ``regressor`` both train a box head with a coordinate distance plus the GIoU loss
(Rezatofighi et al. 2019), on normalised ``cxcywh`` boxes. The distance keeps gradients alive
for far-off boxes and the GIoU term makes the loss care about overlap rather than raw
coordinates, as in DETR (Carion et al. 2020). They differ only in the distance: ``erpa`` uses
plain L1 (DETR's choice), ``regressor`` a smooth-L1 (Huber) with a small ``beta``, which keeps
the early large errors from dominating. ``detr``'s set loss uses :func:`giou_loss` per matched
box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor

from refground import boxes as B


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per box ``1 - GIoU`` of two aligned ``(N, 4)`` normalised ``cxcywh`` batches."""
    return 1.0 - B.giou(B.cxcywh_to_xyxy(pred), B.cxcywh_to_xyxy(target))


class BoxDistance(Protocol):
    """A coordinate distance averaged over boxes and coordinates; ``key`` names it in logs."""

    @property
    def key(self) -> str: ...

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class L1:
    """Mean absolute coordinate error."""

    key: str = "l1"

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(pred, target)


@dataclass(frozen=True)
class SmoothL1:
    """Mean Huber error: quadratic below ``beta``, linear above."""

    beta: float
    key: str = "huber"

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(pred, target, beta=self.beta)


def box_regression_loss(pred: Tensor, target: Tensor, distance: BoxDistance, *,
                        giou_weight: float, distance_weight: float = 1.0) -> dict[str, Tensor]:
    """``distance_weight * distance + giou_weight * mean(1 - GIoU)`` on normalised cxcywh.

    ``target`` is moved to ``pred``'s device and dtype (callers choose the dtype by casting
    ``pred``). Returns ``{"loss", distance.key, "giou"}``; ``"giou"`` is the GIoU *loss*.
    """
    target = target.to(pred.device, pred.dtype)
    dist = distance(pred, target)
    giou = giou_loss(pred, target).mean()
    return {"loss": distance_weight * dist + giou_weight * giou, distance.key: dist,
            "giou": giou}
