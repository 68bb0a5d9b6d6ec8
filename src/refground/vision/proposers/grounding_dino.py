"""Grounding DINO: one text prompt per image, "head1 . head2 . head3 .", boxes matched to heads.

Settings of ERP-A (Liu et al. 2023; docs/methods.md): box threshold 0.1 (our ``score_threshold``),
text threshold 0.25, at most 50 detections by score.

Phrase-to-query matching is done on tokens, not on decoded strings: the prompt is built here,
so the character span of every query is known, and the tokenizer's offsets map each text token
to the query it belongs to. A box's score is its highest token probability over the whole
prompt (the original "box threshold" score, as transformers'
``post_process_grounded_object_detection`` computes it); its label is the query holding its most
probable token. A box none of whose query tokens passes ``text_threshold`` has an empty phrase
in the original implementation; it names no query, so it is dropped. Decoding phrases and
matching strings (what the transformers post-processor returns) breaks on word pieces and on
phrases that run across a separator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from refground import boxes as B
from refground.devices import AUTO, DeviceSpec
from refground.errors import ConfigError
from refground.vision.loading import check_tokenizer_vocab
from refground.vision.proposals import PROPOSERS, PostProcess, ProposerLoadError
from refground.vision.proposers._hf import (
    RawDetections,
    TransformersProposer,
    load_config,
    load_model,
    load_step,
)

SEPARATOR = " . "


def grounding_prompt(queries: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """``["man", "red car"]`` -> ``("man . red car .", [(0, 3), (6, 13)])``.

    Queries are lowercased (the checkpoints' BERT is uncased) and lose their periods, which
    Grounding DINO reads as separators.
    """
    spans: list[tuple[int, int]] = []
    prompt = ""
    for query in queries:
        text = " ".join(query.replace(".", " ").lower().split())
        if prompt:
            prompt += SEPARATOR
        spans.append((len(prompt), len(prompt) + len(text)))
        prompt += text
    return prompt + " .", spans


def token_query_map(offsets: Tensor, spans: Sequence[Sequence[tuple[int, int]]]) -> Tensor:
    """``(B, T, Q)`` bool: token ``t`` of prompt ``b`` lies inside query ``q``'s characters.

    ``offsets`` is the tokenizer's ``(B, T, 2)`` offset mapping; special and padding tokens have
    empty spans and belong to no query. ``spans[b]`` may be shorter than ``Q`` (fewer queries).
    """
    count = max(len(s) for s in spans)
    bounds = torch.full((len(spans), count, 2), -1, dtype=torch.long)
    for b, image_spans in enumerate(spans):
        if image_spans:
            bounds[b, : len(image_spans)] = torch.tensor(image_spans, dtype=torch.long)
    starts, ends = offsets[..., 0, None], offsets[..., 1, None]  # (B, T, 1)
    return ((ends > starts) & (starts >= bounds[:, None, :, 0])
            & (ends <= bounds[:, None, :, 1]))


@PROPOSERS.register("grounding-dino")
class GroundingDinoProposer(TransformersProposer):
    """Grounding DINO proposals for per-image text queries (ERP-A's stronger detector)."""

    name: ClassVar[str] = "grounding-dino"
    default_model: ClassVar[str] = "IDEA-Research/grounding-dino-tiny"
    default_postprocess: ClassVar[PostProcess] = PostProcess(score_threshold=0.1, top_k=50)
    text_conditioned: ClassVar[bool] = True

    def __init__(self, model: str | os.PathLike[str] | None = None, *,
                 text_threshold: float = 0.25, device: DeviceSpec = AUTO,
                 batch_size: int = 4, strict: bool = True,
                 postprocess: PostProcess | None = None) -> None:
        if not 0.0 <= text_threshold <= 1.0:
            raise ConfigError(f"text_threshold must be in [0, 1], got {text_threshold!r}")
        self.text_threshold = text_threshold
        super().__init__(model, device=device, batch_size=batch_size, strict=strict,
                         postprocess=postprocess)

    def _load(self, source: str, strict: bool) -> None:
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        config = load_config(source, self.name, ("grounding-dino", "mm-grounding-dino"))
        self.max_text_len = int(config.max_text_len)
        self.processor: Any = load_step(
            "processor", source, lambda: GroundingDinoProcessor.from_pretrained(source))
        check_tokenizer_vocab(self.processor.tokenizer, repr(source),
                              config.text_config.vocab_size, ProposerLoadError)
        self.model: Any = load_model(GroundingDinoForObjectDetection, source, config,
                                     strict=strict, device=self.device)

    def _detect(self, images: Sequence[Image.Image], queries: Sequence[tuple[str, ...]]
                ) -> list[RawDetections]:
        prompts, spans = zip(*(grounding_prompt(q) for q in queries), strict=True)
        inputs = self.processor(images=list(images), text=list(prompts), return_tensors="pt",
                                padding="longest", truncation=True, max_length=self.max_text_len,
                                return_offsets_mapping=True)
        offsets = inputs.pop("offset_mapping")
        outputs = self.model(**inputs.to(self.device))
        length = offsets.shape[1]
        # logits: (B, boxes, max_text_len), -inf beyond each prompt -> probability 0.
        probs = outputs.logits[..., :length].float().sigmoid().cpu()
        box_scores = probs.amax(-1)
        in_query = token_query_map(offsets, spans)  # (B, T, Q)
        query_scores = probs[..., None].masked_fill(~in_query[:, None], 0.0).amax(2)
        best, label_index = query_scores.max(-1)  # (B, boxes)
        boxes = B.cxcywh_to_xyxy(outputs.pred_boxes.float().cpu())
        detections = []
        for b, image in enumerate(images):
            keep = best[b] > self.text_threshold
            indices = label_index[b][keep].tolist()
            detections.append(RawDetections(
                boxes=B.denormalize(boxes[b][keep], image.width, image.height),
                scores=box_scores[b][keep],
                labels=tuple(queries[b][i] for i in indices),
            ))
        return detections
