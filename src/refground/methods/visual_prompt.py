"""``visual-prompt``: CLIP sees each proposal marked, after Shtedritski et al., "What does CLIP
know about a red circle?" (ICCV 2023), with the settings of docs/methods.md.

For each proposal CLIP sees the whole image with the box marked (red ellipse), the rest blurred (one
view) and blurred + grayscale (another), against the text "This is <expression>". Raw CLIP
similarities favour some views regardless of the text (big, central, salient boxes), so each view's
similarity is *debiased*: from the expression's row we subtract the view's mean similarity over the
rows [expression; N random training expressions] — a view that matches any text well gets no credit
for it. Views are then aggregated per proposal (the zero-shot write-up of docs/methods.md
describes the mean, its code took the max: an option, default max), optionally plus a category
prior, and the best proposal wins.

The category prior (``category_prior`` > 0) adds the similarity of the expression to "A picture
of a <label>" for each proposal's label. Only a detector's own labels may feed it (its text
queries, parsed from the expression, or its class names): with ``proposals="gt"`` the labels are
the annotations' gold categories, so that combination is refused with a ConfigError.

Speed: views are rendered on tensors directly in CLIP's frame (:mod:`refground.vision.prompts`),
all views of a batch go through CLIP together, and the debias term needs only the *mean* of the
debias text features, computed once: mean_r(t_r . v) = (mean_r t_r) . v.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import field_validator, model_validator
from torch import Tensor

from refground.data.dataset import Dataset
from refground.errors import ConfigError, DatasetError
from refground.methods.base import METHODS
from refground.methods.proposal_scoring import (
    ProposalScoringMethod,
    ScoringItem,
    ScoringOptions,
    features_per_item,
)
from refground.vision.clip import ClipEncoder
from refground.vision.prompts import PromptStyle, render_views
from refground.vision.proposals import GroundTruthProposer
from refground.vision.shipped import bundled_debias_expressions

AGGREGATIONS = ("max", "mean")


def debiased_similarity(text: Tensor, debias_mean: Tensor | None, debias_count: int,
                        views: Tensor) -> Tensor:
    """``t . v`` minus the mean over rows [t; debias texts] of ``row . v``, per view."""
    raw = views @ text
    if debias_mean is None or debias_count == 0:
        return raw
    column_mean = views @ ((text + debias_count * debias_mean) / (debias_count + 1))
    return raw - column_mean


def sample_debias_expressions(expressions: Sequence[str], count: int, seed: int) -> list[str]:
    unique = sorted(set(expressions))
    if len(unique) <= count:
        return unique
    return random.Random(seed).sample(unique, count)


class VisualPromptOptions(ScoringOptions):
    """visual-prompt's options: the shared ones, how each proposal is marked (``marker``,
    ``color``, ``stroke``, ``blur_radius``, ``backgrounds``, ``sharp_window``; see
    :class:`~refground.vision.prompts.PromptStyle`), the text (``prefix``), how views are
    aggregated, the debiasing texts (``debias`` of them, from ``debias_file`` or the benchmark's
    train split, sampled with ``debias_seed``) and the category prior (see the module
    docstring)."""

    prefix: str = "This is "
    marker: str = "ellipse"
    color: tuple[int, int, int] = (255, 0, 0)
    stroke: float = 3.0
    blur_radius: float = 20.0
    backgrounds: tuple[str, ...] = ("blur", "blur-gray")
    sharp_window: bool = True
    aggregate: str = "max"
    debias: int = 5000
    debias_file: str | Path | None = None
    debias_seed: int = 0
    category_prior: float = 0.0
    category_template: str = "A picture of a {}"

    @field_validator("aggregate")
    @classmethod
    def _aggregation(cls, aggregate: str) -> str:
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        return aggregate

    @field_validator("debias")
    @classmethod
    def _debias_count(cls, debias: int) -> int:
        if debias < 0:
            raise ValueError(f"debias (number of expressions) must be >= 0, got {debias}")
        return debias

    @model_validator(mode="after")
    def _no_gold_prior(self) -> VisualPromptOptions:
        # Checked before any model loads: with gt proposals the labels are gold categories.
        if self.category_prior and self.proposals == GroundTruthProposer.name:
            raise ValueError(
                f"category_prior={self.category_prior!r} with proposals='gt' would score each "
                "box by its annotated category, a gold label no method may see; use a detector "
                "whose own labels feed the prior (proposals='owlvit', 'grounding-dino', 'detr' "
                "or 'yolo') or set category_prior=0")
        return self


@METHODS.register("visual-prompt")
class VisualPrompt(ProposalScoringMethod):
    name = "visual-prompt"
    summary = "each candidate marked in the whole image (ellipse, blurred rest) and ranked by CLIP"
    config_type = VisualPromptOptions
    options: VisualPromptOptions
    demo_order = 50

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = self.options
        self.style = PromptStyle(marker=config.marker, color=config.color,
                                 stroke=config.stroke, blur_radius=config.blur_radius,
                                 backgrounds=config.backgrounds,
                                 sharp_window=config.sharp_window)
        self.prefix = config.prefix
        self.aggregate = config.aggregate
        self.debias = config.debias
        self.debias_seed = config.debias_seed
        self.category_prior = config.category_prior
        self.category_template = config.category_template
        self.debias_texts: list[str] | None = None
        self._debias_means: dict[int, Tensor] = {}  # per encoder, mean debias text feature
        if config.debias and config.debias_file is not None:
            with open(config.debias_file, encoding="utf-8") as stream:
                lines = [line.strip() for line in stream if line.strip()]
            self.set_debias_expressions(lines)

    # --- debiasing expressions ----------------------------------------------------------------

    def set_debias_expressions(self, expressions: Sequence[str]) -> None:
        """Use (a seeded sample of at most ``debias`` of) these expressions for debiasing."""
        self.debias_texts = sample_debias_expressions(expressions, self.debias, self.debias_seed)
        self._debias_means = {}

    def prepare(self, dataset: Dataset) -> None:
        """Draw debias expressions from the benchmark's train split (never the eval split);
        only its sentences are read, not its images."""
        if not self.debias or self.debias_texts is not None:
            return
        try:
            train = dataset.expressions("train")
        except DatasetError as exc:
            warnings.warn(f"visual-prompt: no train split to debias with ({exc}); "
                          "falling back to the CLIP checkpoint's bundled expressions",
                          stacklevel=2)
            return
        self.set_debias_expressions(train)

    def _debias_mean(self, encoder: ClipEncoder) -> Tensor | None:
        if not self.debias:
            return None
        if self.debias_texts is None:
            bundled = bundled_debias_expressions(encoder.name)
            if bundled is None:
                raise ConfigError(
                    "visual-prompt needs debiasing expressions: evaluate on a dataset with a "
                    "train split, pass -o debias_file=PATH (one expression per line), or "
                    "-o debias=0 to switch debiasing off")
            self.set_debias_expressions(bundled)
        key = id(encoder)
        if key not in self._debias_means:
            assert self.debias_texts is not None
            texts = [self.prefix + text for text in self.debias_texts]
            self._debias_means[key] = encoder.encode_texts(texts).mean(0).cpu()
        return self._debias_means[key]

    # --- scoring ------------------------------------------------------------------------------

    def score(self, items: Sequence[ScoringItem]) -> list[Tensor]:
        scores = self.ensemble([self._score_with(encoder, items) for encoder in self.encoders])
        if self.category_prior:
            priors = self.ensemble([self._category_prior(encoder, items)
                                    for encoder in self.encoders])
            scores = [s + self.category_prior * p for s, p in zip(scores, priors, strict=True)]
        return scores

    def render(self, encoder: ClipEncoder, items: Sequence[ScoringItem]) -> Tensor:
        """All views of all items, normalised: ``(sum_i P_i * V, 3, S, S)``."""
        config = encoder.preprocess_config
        return torch.cat([
            render_views(item.pixels, item.proposals.boxes, self.style, config, normalize=True
                         ).flatten(0, 1)
            for item in items])

    def _score_with(self, encoder: ClipEncoder, items: Sequence[ScoringItem]) -> list[Tensor]:
        view_features = features_per_item(
            items, lambda unique: encoder.encode_image_tensors(self.render(encoder, unique)))
        texts = encoder.encode_texts([self.prefix + i.sample.expression for i in items]).cpu()
        debias_mean = self._debias_mean(encoder)
        count = len(self.debias_texts or ())
        scores = []
        for item, text, views in zip(items, texts, view_features, strict=True):
            similarity = debiased_similarity(text, debias_mean, count, views)
            grouped = similarity.view(len(item.proposals), len(self.style.backgrounds))
            scores.append(grouped.amax(1) if self.aggregate == "max" else grouped.mean(1))
        return scores

    def _category_prior(self, encoder: ClipEncoder, items: Sequence[ScoringItem]
                        ) -> list[Tensor]:
        """Similarity of the expression to "A picture of a {label}" for each proposal."""
        expressions = encoder.encode_texts([i.sample.expression for i in items]).cpu()
        priors = []
        for item, expression in zip(items, expressions, strict=True):
            labels = encoder.encode_texts(
                [self.category_template.format(label) for label in item.proposals.labels]).cpu()
            priors.append(labels @ expression)
        return priors
