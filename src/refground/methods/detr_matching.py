"""Hungarian matching and the DETR set loss, for one-referent (or few-target) box prediction.

A set predictor outputs ``Q`` (logit, box) pairs per image and is trained against ``T`` targets
(``T = 1`` for referring expressions). Which query answers which target is decided per sample
by the minimum-cost one-to-one assignment (Carion et al. 2020), so queries do not compete for
the same target and the model learns to put exactly one confident box on the referent.

The costs of all samples are computed in one batched torch call; only the assignment itself
runs in scipy, once per sample, on a small CPU matrix. Boxes are normalised ``cxcywh``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from refground import boxes as B
from refground.errors import ConfigError, MissingDependencyError
from refground.methods.box_losses import giou_loss

ClassLoss = Literal["focal", "bce"]
Targets = Tensor | Sequence[Tensor]
Match = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class MatchWeights:
    """Weights of the three matching costs (DETR matches with the loss weights)."""

    cost_class: float = 2.0
    cost_l1: float = 5.0
    cost_giou: float = 2.0


def _target_list(targets: Targets, batch: int) -> list[Tensor]:
    """Targets as one ``(T_i, 4)`` tensor per sample, whatever form they came in."""
    if isinstance(targets, Tensor):
        if targets.ndim == 2:
            targets = targets[:, None, :]
        if targets.ndim != 3 or targets.shape[-1] != 4:
            raise ConfigError(f"targets must be (B, T, 4) or (B, 4), got {tuple(targets.shape)}")
        items = list(targets.unbind(0))
    else:
        items = [t.reshape(-1, 4) for t in targets]
    if len(items) != batch:
        raise ConfigError(f"{len(items)} target sets for a batch of {batch} predictions")
    return items


def match_costs(pred_logits: Tensor, pred_boxes: Tensor, targets: Targets,
                weights: MatchWeights = MatchWeights()) -> list[Tensor]:
    """Per sample, the ``(Q, T_i)`` cost of assigning each query to each target.

    ``cost = -w_class * sigmoid(logit) + w_l1 * |box - target|_1 - w_giou * GIoU``. All samples
    are scored against the concatenated targets in one call, then each keeps its own columns.
    """
    batch, queries = pred_logits.shape
    items = _target_list(targets, batch)
    sizes = [int(t.shape[0]) for t in items]
    with torch.no_grad():
        prob = pred_logits.float().sigmoid().reshape(batch * queries, 1)
        boxes = pred_boxes.float().reshape(batch * queries, 4)
        if sum(sizes) == 0:
            return [boxes.new_zeros((queries, 0)).cpu() for _ in items]
        flat = torch.cat(items).to(boxes)
        cost = (weights.cost_l1 * torch.cdist(boxes, flat, p=1)
                - weights.cost_class * prob
                - weights.cost_giou * B.giou_matrix(B.cxcywh_to_xyxy(boxes),
                                                    B.cxcywh_to_xyxy(flat)))
        cost = cost.reshape(batch, queries, -1).cpu()
    return [c[i] for i, c in enumerate(cost.split(sizes, dim=-1))]


def hungarian_match(pred_logits: Tensor, pred_boxes: Tensor, targets: Targets,
                    cost_class: float = 2.0, cost_l1: float = 5.0,
                    cost_giou: float = 2.0) -> list[Match]:
    """The minimum-cost one-to-one assignment of queries to targets, per sample.

    ``pred_logits`` ``(B, Q)``, ``pred_boxes`` ``(B, Q, 4)``, ``targets`` ``(B, T, 4)`` or a list
    of ``(T_i, 4)``. Returns ``(query_idx, target_idx)`` int64 CPU tensors per sample, sorted by
    query; ``min(Q, T_i)`` pairs each.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            "Hungarian matching needs scipy: pip install 'refground[train]'") from exc
    weights = MatchWeights(cost_class, cost_l1, cost_giou)
    matches: list[Match] = []
    for cost in match_costs(pred_logits, pred_boxes, targets, weights):
        rows, cols = linear_sum_assignment(cost.numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long),
                        torch.as_tensor(cols, dtype=torch.long)))
    return matches


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al. 2017): BCE down-weighted on easy examples.

    With one positive among ``Q`` queries, plain BCE is dominated by the easy negatives; the
    focal term keeps their gradient small. ``alpha < 0`` disables the class balancing.
    """
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = prob * labels + (1 - prob) * (1 - labels)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * labels + (1 - alpha) * (1 - labels))
    return loss


def set_loss(pred_logits: Tensor, pred_boxes: Tensor, targets: Targets,
             matches: Sequence[Match], *, class_loss: ClassLoss = "focal",
             focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> dict[str, Tensor]:
    """Unweighted DETR losses given a matching: ``{"class", "l1", "giou"}`` scalars.

    * ``class``: focal (or BCE) over *all* queries, matched ones labelled 1, summed;
    * ``l1``: L1 distance of matched boxes (cxcywh), summed over the 4 coordinates;
    * ``giou``: ``1 - GIoU`` of matched boxes.

    Each is divided by the number of targets, so it does not grow with the batch size.
    """
    batch = pred_logits.shape[0]
    items = _target_list(targets, batch)
    logits = pred_logits.float()
    boxes = pred_boxes.float()
    num_targets = max(sum(int(t.shape[0]) for t in items), 1)
    device = logits.device
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(device)
    query_idx = torch.cat([q for q, _ in matches]).to(device)
    matched = boxes[batch_idx, query_idx]
    wanted = torch.cat([t[j.to(t.device)] for t, (_, j) in zip(items, matches, strict=True)])
    wanted = wanted.to(device=device, dtype=torch.float32)

    labels = torch.zeros_like(logits)
    labels[batch_idx, query_idx] = 1.0
    if class_loss == "focal":
        per_query = sigmoid_focal_loss(logits, labels, focal_alpha, focal_gamma)
    elif class_loss == "bce":
        per_query = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    else:
        raise ConfigError(f"class_loss must be 'focal' or 'bce', got {class_loss!r}")
    l1 = (matched - wanted).abs().sum()
    giou = giou_loss(matched, wanted).sum()
    return {"class": per_query.sum() / num_targets, "l1": l1 / num_targets,
            "giou": giou / num_targets}
