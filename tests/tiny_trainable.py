"""A deliberately small trainable method for testing the Trainer's mechanics in seconds.

It is a real model (conv + bag of hashed words + MLP with dropout, trained with smooth-L1),
just tiny; the Trainer sees it exactly as it sees ``regressor`` or ``detr``. ``nan_word``
makes the loss non-finite on expressions containing that word, to test step skipping.

Run as a script it trains from a YAML config, which is how the SIGKILL test gets a child
process: ``python tests/tiny_trainable.py CONFIG [--resume] [--kill-at-step N]``.
"""

from __future__ import annotations

import os
import signal
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refground.devices import AUTO, DeviceSpec
from refground.images import ImageInput, decode_images
from refground.methods.options import MethodConfig
from refground.methods.trainable import (
    Batch,
    TrainableMethod,
    image_sizes,
    image_tensor,
    target_boxes,
)
from refground.types import Sample
from refground.vision.feature_cache import FeatureGroup, FeatureTable, image_row_keys
from refground.vision.feature_groups import pixel_group


class TinyConfig(MethodConfig):
    image_size: int = 16
    hidden: int = 16
    vocab: int = 64
    dropout: float = 0.1
    nan_word: str | None = None
    cache_pixels: bool = False  # read the pixels from a feature cache (as regressor does)


@dataclass(frozen=True)
class TinyCollator:
    image_size: int
    vocab: int
    nan_word: str | None
    features: dict[str, FeatureTable] = field(default_factory=dict)

    def pixels(self, images: Sequence[ImageInput]) -> Tensor:
        return torch.stack([image_tensor(image, self.image_size) for image in images])

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        words = [s.expression.lower().split() for s in samples]
        length = max(len(w) for w in words)
        ids = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sentence in enumerate(words):
            for col, word in enumerate(sentence):
                ids[row, col] = 1 + zlib.crc32(word.encode()) % (self.vocab - 1)
        batch: Batch = {
            "pixels": self.cached_pixels(samples),
            "ids": ids, "size": image_sizes(samples),
            "poison": torch.tensor([self.nan_word in w for w in words]),
        }
        target = target_boxes(samples)
        if target is not None:
            batch["target"] = target
        return batch

    def cached_pixels(self, samples: Sequence[Sample]) -> Tensor:
        table = self.features.get("tiny-pixels")
        keys = image_row_keys(samples)
        if table is not None and keys is not None and table.has_all(keys):
            return table.gather(keys)["pixels"]
        return self.pixels(decode_images(samples))


class TinyModel(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.words = nn.EmbeddingBag(config.vocab, config.hidden, padding_idx=0)
        flat = 8 * ((config.image_size + 1) // 2) ** 2
        self.head = nn.Sequential(nn.Linear(flat + config.hidden, config.hidden), nn.ReLU(),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden, 4))

    def forward(self, batch: Batch) -> Tensor:
        image = F.relu(self.conv(batch["pixels"])).flatten(1)
        text = self.words(batch["ids"])
        return torch.sigmoid(self.head(torch.cat([image, text], dim=1)))


class TinyMethod(TrainableMethod):
    name = "tiny-test"
    config_type = TinyConfig

    def __init__(self, config: TinyConfig, model: TinyModel, device: DeviceSpec = AUTO) -> None:
        super().__init__(config, model, device)
        self.features: dict[str, FeatureTable] = {}

    @classmethod
    def build(cls, config: Any, device: DeviceSpec = AUTO) -> TinyMethod:
        return cls(config, TinyModel(config), device)

    def collator(self) -> TinyCollator:
        return TinyCollator(self.config.image_size, self.config.vocab, self.config.nan_word,
                            self.features)

    def feature_groups(self) -> list[FeatureGroup]:
        if not self.config.cache_pixels:
            return []
        return [pixel_group("tiny-pixels", {"size": self.config.image_size},
                            self.collator().pixels)]

    def use_features(self, tables: Mapping[str, FeatureTable]) -> None:
        self.features.update(tables)

    def loss(self, batch: Batch, outputs: Tensor) -> dict[str, Tensor]:
        loss = F.smooth_l1_loss(outputs.float(), batch["target"], beta=0.1)
        if bool(batch["poison"].any()):
            loss = loss * float("nan")
        return {"loss": loss}

    def decode(self, batch: Batch, outputs: Tensor) -> tuple[Tensor, Tensor]:
        return outputs.float(), torch.ones(outputs.shape[0])


def register() -> None:
    """Make ``tiny-test`` buildable by name (the Trainer builds methods from the registry)."""
    from refground.methods.base import METHODS
    from refground.methods.trainable import trainable_factory

    if "tiny-test" not in METHODS.names():
        METHODS.register("tiny-test")(trainable_factory(TinyMethod))


def main(argv: list[str]) -> None:
    from refground.train.config import load_config
    from refground.train.trainer import Trainer

    register()
    config = load_config(Path(argv[0]))
    kill_at = int(argv[argv.index("--kill-at-step") + 1]) if "--kill-at-step" in argv else None

    def hook(step: int, metrics: dict[str, Any]) -> None:
        if kill_at is not None and step >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: a real crash

    Trainer(config, on_validation=hook, progress=False).fit(resume="--resume" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
