"""The feature tables the trainable methods cache (:mod:`refground.vision.feature_cache`).

Each factory names what its values depend on (the model's full fingerprint, the
preprocessing) and computes rows with the same code the methods run without a cache --
:meth:`ClipEncoder.image_features` / :meth:`ClipEncoder.text_features` and the methods' own
pixel preprocessing -- so a cached batch and a computed one hold the same numbers (up to the
float16 storage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from refground import boxes as B
from refground.images import load_image
from refground.types import Sample
from refground.vision.feature_cache import FeatureGroup, image_row_key, module_fingerprint
from refground.vision.preprocess import (
    ClipPreprocessConfig,
    crop_box,
    pil_to_tensor,
    preprocess_tensor,
)

if TYPE_CHECKING:  # transformers (2.6 s to import) only when a CLIP group is built
    from refground.vision.clip import ClipEncoder

CLIP_IMAGES = "clip-images"
CLIP_CROPS = "clip-crops"
CLIP_TEXTS = "clip-texts"


def clip_identity(encoder: ClipEncoder) -> dict[str, Any]:
    return {"name": encoder.name, "weights": module_fingerprint(encoder.model),
            "text": encoder.identity}


def decode(path: Path) -> Tensor:
    return pil_to_tensor(load_image(path))


def image_rows(samples: Sequence[Sample]) -> dict[str, Path]:
    """The rows of a per-image table: each distinct image's key and its path."""
    return {image_row_key(s.image_path): s.image_path for s in samples}


def clip_image_group(encoder: ClipEncoder, preprocess: ClipPreprocessConfig,
                     identity: dict[str, Any] | None = None) -> FeatureGroup:
    """Per image: patch tokens ``(P, hidden)`` and the normalised embedding, after
    ``preprocess`` (the method's squash, not CLIP's crop)."""

    def compute(paths: list[Path]) -> dict[str, Tensor]:
        pixels = preprocess_tensor([decode(p) for p in paths], preprocess, device=encoder.device)
        patches, embeds = encoder.image_features(pixels)
        return {"patches": patches, "embeds": embeds}

    return FeatureGroup(CLIP_IMAGES, {"clip": identity or clip_identity(encoder),
                                      "preprocess": dataclasses.asdict(preprocess)},
                        image_rows, compute, batch_size=encoder.batch_size)


def clip_crop_group(encoder: ClipEncoder, boxes_of: Callable[[Sample], Tensor],
                    identity: dict[str, Any] | None = None) -> FeatureGroup:
    """Per (image, box): the crop's normalised CLIP embedding (CLIP's own preprocessing)."""

    def rows(samples: Sequence[Sample]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sample in samples:
            key = image_row_key(sample.image_path)
            for box in boxes_of(sample):
                out.setdefault(B.image_boxes_key(key, box), (sample.image_path, box))
        return out

    def compute(payloads: list[tuple[Path, Tensor]]) -> dict[str, Tensor]:
        images: dict[Path, Tensor] = {}
        crops = []
        for path, box in payloads:
            if path not in images:
                images[path] = decode(path)
            crops.append(crop_box(images[path], box))
        pixels = preprocess_tensor(crops, encoder.preprocess_config, device=encoder.device)
        return {"embeds": encoder.image_features(pixels)[1]}

    return FeatureGroup(CLIP_CROPS, {"clip": identity or clip_identity(encoder),
                                     "preprocess": dataclasses.asdict(encoder.preprocess_config)},
                        rows, compute, batch_size=encoder.batch_size)


def clip_text_group(encoder: ClipEncoder, texts_of: Callable[[Sequence[Sample]], Iterable[str]],
                    identity: dict[str, Any] | None = None) -> FeatureGroup:
    """Per text: pooled states before the projection and the normalised embedding."""

    def rows(samples: Sequence[Sample]) -> dict[str, Any]:
        return {text: text for text in texts_of(samples)}

    def compute(texts: list[str]) -> dict[str, Tensor]:
        pooled, embeds = encoder.text_features(texts)
        return {"pooled": pooled, "embeds": embeds}

    return FeatureGroup(CLIP_TEXTS, {"clip": identity or clip_identity(encoder),
                                     "max_length": encoder.max_length},
                        rows, compute, batch_size=encoder.batch_size)


def pixel_group(name: str, identity: dict[str, Any],
                to_pixels: Callable[[Sequence[Path]], Tensor]) -> FeatureGroup:
    """Per image: a trainable CNN's input, already decoded, resized and normalised."""
    return FeatureGroup(name, identity, image_rows, lambda paths: {"pixels": to_pixels(paths)})


def token_group(name: str, tower: nn.Module, tokenizer: Any, max_length: int,
                identity: dict[str, Any]) -> FeatureGroup:
    """Per expression: a frozen text tower's token states ``(L, hidden)`` and their mask."""

    def rows(samples: Sequence[Sample]) -> dict[str, Any]:
        return {s.expression: s.expression for s in samples}

    def compute(texts: list[str]) -> dict[str, Tensor]:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")
        device = next(tower.parameters()).device
        with torch.inference_mode():
            states = tower(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        return {"states": states.float().clone(), "mask": tokens["attention_mask"].to(torch.uint8)}

    return FeatureGroup(name, {"tower": module_fingerprint(tower), "max_length": max_length,
                               **identity}, rows, compute)
