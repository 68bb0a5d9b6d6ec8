"""``crop-rank``: the zero-shot baseline. Crop every proposal, score the crop against the
expression with CLIP, answer the best crop.

Cropping throws away everything outside the box, so this sees attributes ("the red circle")
well and spatial context ("left of the car") not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import field_validator
from torch import Tensor

from refground.methods.base import METHODS
from refground.methods.proposal_scoring import (
    ProposalScoringMethod,
    ScoringItem,
    ScoringOptions,
    features_per_item,
)
from refground.vision.clip import ClipEncoder
from refground.vision.preprocess import crop_box


def crop_pixels(item: ScoringItem) -> list[Tensor]:
    """The proposals' crops of the item's image, at least one pixel each side."""
    return [crop_box(item.pixels, box) for box in item.proposals.boxes]


class CropRankOptions(ScoringOptions):
    """crop-rank's options: the shared ones and the text CLIP reads, ``template`` with ``{}``
    where the expression goes."""

    template: str = "{}"

    @field_validator("template")
    @classmethod
    def _has_slot(cls, template: str) -> str:
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' for the expression, got {template!r}")
        return template


@METHODS.register("crop-rank")
class CropRank(ProposalScoringMethod):
    name = "crop-rank"
    summary = "each candidate box cropped and ranked by CLIP similarity to the expression"
    config_type = CropRankOptions
    options: CropRankOptions
    demo_order = 40

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.template = self.options.template

    def score(self, items: Sequence[ScoringItem]) -> list[Tensor]:
        return self.ensemble([self._score_with(encoder, items) for encoder in self.encoders])

    def _score_with(self, encoder: ClipEncoder, items: Sequence[ScoringItem]) -> list[Tensor]:
        crop_features = features_per_item(items, lambda unique: encoder.encode_images(
            [crop for item in unique for crop in crop_pixels(item)]))
        texts = encoder.encode_texts([self.template.format(i.sample.expression) for i in items])
        return [features @ text for features, text in zip(crop_features, texts.cpu(),
                                                          strict=True)]
