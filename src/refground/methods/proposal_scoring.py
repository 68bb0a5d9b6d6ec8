"""The shape every zero-shot CLIP method shares: propose boxes, score each, rank.

Subclasses only say how a batch's proposals are scored (crops, marked views, ...); loading
images, calling the proposer, ranking, and the whole-image fallback live here once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from refground import boxes as B
from refground.devices import AUTO, resolve_device
from refground.errors import ConfigError
from refground.images import decode_images
from refground.methods.base import Method
from refground.methods.options import MethodConfig, parse_config
from refground.types import Prediction, Sample
from refground.vision.preprocess import pil_to_tensor
from refground.vision.proposals import (
    GroundTruthProposer,
    Proposals,
    build_proposer,
    proposer_takes_device,
)
from refground.vision.shipped import SHIPPED_CLIP, load_clip


@dataclass(frozen=True)
class ScoringItem:
    """One sample ready for scoring: its image as ``(3, H, W)`` float in [0, 1], and proposals."""

    sample: Sample
    pixels: Tensor
    proposals: Proposals


#: The proposer a scoring method uses unless told otherwise: the annotated boxes.
DEFAULT_PROPOSALS = "gt"


def as_name_list(value: str | Sequence[str]) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"clip must be a model name or a list of names, got {value!r}")
    return names


class ScoringOptions(MethodConfig):
    """Options every proposal-scoring method shares (graph-resolve forwards them to its scorer).

    ``clip`` names one or more backbones (several: their scores are averaged); ``encoders``
    passes already built ones instead (e.g. a model being trained), and then the method computes
    where the first of them is. ``device`` (default ``"auto"``: the GPU when there is one) is
    also the detector's, unless ``proposal_options`` names one; :func:`resolve_device` checks
    it, as it checks every device.
    """

    clip: str | list[str] = SHIPPED_CLIP
    proposals: str = DEFAULT_PROPOSALS
    proposal_options: dict[str, Any] | None = None
    device: Any = AUTO  # a DeviceSpec, checked by resolve_device
    clip_batch_size: int = 64
    text_cache_dir: str | Path | None = None
    dtype: str = "float32"
    encoders: list[Any] | None = None  # ClipEncoders


class ProposalScoringMethod(Method):
    """Base of ``crop-rank`` and ``visual-prompt``; see the module docstring."""

    config_type: ClassVar[type[ScoringOptions]] = ScoringOptions

    def __init__(self, **options: Any) -> None:
        """Validate ``options`` as :attr:`config_type` (kept as ``self.options``), then load
        the CLIP backbones and build the proposer."""
        self.options = config = parse_config(self.config_type, options, self.name)
        if config.encoders is not None:
            self.encoders = list(config.encoders)
            self.device = (self.encoders[0].device if self.encoders
                           else resolve_device(config.device))
        else:
            self.device = resolve_device(config.device)
            self.encoders = [load_clip(name, self.device, config.clip_batch_size,
                                       config.text_cache_dir, config.dtype)
                             for name in as_name_list(config.clip)]
        proposal_options = dict(config.proposal_options or {})
        if "device" not in proposal_options and proposer_takes_device(config.proposals):
            proposal_options["device"] = self.device
        self.proposer = build_proposer(config.proposals, **proposal_options)

    @property
    def needs_annotations(self) -> bool:
        return isinstance(self.proposer, GroundTruthProposer)

    @abstractmethod
    def score(self, items: Sequence[ScoringItem]) -> list[Tensor]:
        """One score per proposal for each item (higher is better)."""

    def prepare_items(self, samples: Sequence[Sample],
                      queries: Sequence[Sequence[str]] | None = None) -> list[ScoringItem]:
        """Load each distinct image of the batch once and propose boxes for every sample.

        ``queries`` go to a text-conditioned proposer (one list per sample); ``None`` lets it
        derive them from each expression's parsed graph. A caller holding its own graphs
        (another parser backend, a dataset's graph cache) passes their heads here
        (:func:`~refground.vision.proposals.graph_queries`).
        """
        images = decode_images(samples)
        pixels = {id(image): pil_to_tensor(image).float() / 255 for image in images}
        proposals = self.proposer.propose(images, samples, queries)
        return [
            ScoringItem(sample, pixels[id(image)], props)
            for sample, image, props in zip(samples, images, proposals, strict=True)
        ]

    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        items = self.prepare_items(samples)
        scores = self.score(items)
        return [rank(item, item_scores) for item, item_scores in zip(items, scores, strict=True)]

    def ensemble(self, per_encoder: Sequence[list[Tensor]]) -> list[Tensor]:
        """Average each sample's scores over backbones (docs/methods.md: the backbone ensemble)."""
        return [torch.stack(scores).mean(0) for scores in zip(*per_encoder, strict=True)]


def features_per_item(items: Sequence[ScoringItem],
                      encode: Callable[[Sequence[ScoringItem]], Tensor]) -> list[Tensor]:
    """Image-side features of each item, computed once per distinct (image, proposals).

    What CLIP sees of a proposal (its crop, its marked views) does not depend on the
    expression, and the protocol evaluates several expressions per image; so items that share
    an image and boxes share one encoding. ``encode(unique_items)`` returns the stacked
    features of those items, in order, the same number of rows (views) per proposal.
    """
    keys = [B.image_boxes_key(item.sample.image.key, item.proposals.boxes) for item in items]
    index: dict[str, int] = {}
    unique: list[ScoringItem] = []
    for key, item in zip(keys, items, strict=True):
        if key not in index:
            index[key] = len(unique)
            unique.append(item)
    stacked = encode(unique).cpu()
    sizes = [len(item.proposals) for item in unique]
    rows = stacked.shape[0] // sum(sizes)
    chunks = torch.split(stacked, [size * rows for size in sizes])
    return [chunks[index[key]] for key in keys]


def rank(item: ScoringItem, scores: Tensor) -> Prediction:
    """The prediction: proposals ranked by score, best first, best box as the answer."""
    proposals = item.proposals
    order = scores.argsort(descending=True, stable=True).tolist()
    ranked = Proposals(proposals.boxes[order], scores[order].float(),
                       tuple(proposals.labels[i] for i in order), proposals.fallback)
    candidates = ranked.candidates()
    best = candidates[0]
    return Prediction(item.sample.sample_id, B.to_tuple(best.box), best.score, candidates,
                      fallback=proposals.fallback)
