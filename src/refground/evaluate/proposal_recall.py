"""How good a proposer is for grounding: is the referent among its top-k boxes?

A grounding method that chooses among proposals can be right only when one of them covers the
referent, so recall of the referent at k bounds its accuracy. Counted per expression (as
Acc@0.5 is), at each IoU threshold and each k; proposals are best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from refground import boxes as B
from refground.types import Sample


def referent_recall(proposals: Sequence[torch.Tensor], referents: Sequence[Sequence[float]],
                    ks: Sequence[int] = (10, 50), thresholds: Sequence[float] = (0.5, 0.75)
                    ) -> dict[str, Any]:
    """``recall@{t}@{k}``: share of expressions whose referent box has IoU >= t with one of the
    first k of its image's proposals (``proposals[i]``: ``(K_i, 4)`` xyxy, best first).

    Also ``n`` and ``mean_proposals`` (per expression)."""
    if len(proposals) != len(referents):
        raise ValueError(f"{len(proposals)} proposal sets for {len(referents)} referents")
    n = len(referents)
    hits = {(t, k): 0 for t in thresholds for k in ks}
    total = 0
    for boxes, referent in zip(proposals, referents, strict=True):
        total += len(boxes)
        if not len(boxes):
            continue
        ious = B.iou_matrix(torch.tensor([list(referent)], dtype=torch.float32),
                              boxes.float())[0]
        for t in thresholds:
            for k in ks:
                hits[t, k] += bool((ious[:k] >= t).any())
    result: dict[str, Any] = {"n": n, "mean_proposals": total / n if n else 0.0}
    for (t, k), count in hits.items():
        result[f"recall@{t}@{k}"] = count / n if n else 0.0
    return result


def proposer_recall(proposer: Any, samples: Sequence[Sample], ks: Sequence[int] = (10, 50),
                    thresholds: Sequence[float] = (0.5, 0.75), batch_size: int = 16
                    ) -> dict[str, Any]:
    """:func:`referent_recall` of a proposer on ``samples``, each image proposed once; adds
    ``images``, ``proposals_per_image`` and ``images_per_s`` (detection time only, images
    decoded beforehand)."""
    import time

    from refground.images import decode_images

    by_image: dict[str, Sample] = {}
    for sample in samples:
        by_image.setdefault(sample.image.key, sample)
    images = list(by_image.values())
    found: dict[str, torch.Tensor] = {}
    seconds = 0.0
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pils = decode_images(chunk)
        began = time.perf_counter()
        proposals = proposer.propose(pils, chunk)
        seconds += time.perf_counter() - began
        for sample, props in zip(chunk, proposals, strict=True):
            found[sample.image.key] = props.boxes
    scored = [s for s in samples if s.gt_box is not None]
    result = referent_recall([found[s.image.key] for s in scored], [s.gt_box for s in scored],
                             ks, thresholds)
    result["images"] = len(images)
    result["proposals_per_image"] = (sum(len(b) for b in found.values()) / len(images)
                                     if images else 0.0)
    result["images_per_s"] = len(images) / seconds if seconds else 0.0
    return result
