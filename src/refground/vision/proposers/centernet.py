"""``centernet``: refground's own class-agnostic detector, and the default one (``auto``).

It loads a directory written by ``refground train-detector`` / ``export-detector``
(:mod:`refground.vision.centernet`), by default the shipped ``synthref-det``, trained on
SynthRef: the one detector that works offline here, so text-only grounding works out of the box.
On real photos use a detector trained on them (``owlvit``, ``grounding-dino``, ``yolo``, or a
CenterNet trained with ``refground train-detector`` on your data).

``auto`` names the default detector: today this one with ``synthref-det``. Every box is labelled
``object`` (the detector has no classes); queries are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from refground import boxes as B
from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.errors import ConfigError
from refground.types import Sample
from refground.vision.centernet import (
    WEIGHTS_FILE,
    CenterNet,
    decode,
    image_batch,
    load_centernet,
)
from refground.vision.proposals import PROPOSERS, PostProcess, Proposals, check_batch

#: The shipped detector ``centernet`` and ``auto`` load unless told otherwise.
SHIPPED_DETECTOR = "synthref-det"
LABEL = "object"


def detector_directory(model: str | os.PathLike[str]) -> Path:
    """A shipped detector's name or a local directory, as the directory to load."""
    from refground.vision.shipped import shipped_path

    path = shipped_path(str(model)) or Path(model)
    if not path.is_dir():
        raise ConfigError(f"no detector {str(model)!r}: give a shipped name ({SHIPPED_DETECTOR}) "
                          "or a directory written by refground export-detector")
    return path


def load_detector(directory: Path, device: torch.device) -> CenterNet:
    """The detector in ``directory`` on ``device``, loaded once per process (per file version:
    a re-exported directory is read again)."""
    weights = directory / WEIGHTS_FILE
    version = weights.stat().st_mtime_ns if weights.exists() else 0
    return _load(str(directory.resolve()), version, str(device))


@lru_cache(maxsize=4)
def _load(directory: str, version: int, device: str) -> CenterNet:
    return load_centernet(directory).to(device)


@PROPOSERS.register("auto")
@PROPOSERS.register("centernet")
class CenterNetProposer:
    """Top-scoring heatmap peaks as boxes. Defaults: score >= 0.1, top 50, no NMS (the peak
    extraction is CenterNet's NMS). On SynthRef test the shipped detector scores its objects
    0.5-0.99 and the strongest background peaks about 0.05, so the threshold keeps the
    objects and spares the methods dozens of empty candidates."""

    name: ClassVar[str] = "centernet"
    default_postprocess: ClassVar[PostProcess] = PostProcess(score_threshold=0.1, top_k=50)

    def __init__(self, model: str | os.PathLike[str] = SHIPPED_DETECTOR, *,
                 device: DeviceSpec = AUTO, batch_size: int = 16,
                 postprocess: PostProcess | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_name = str(model)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.postprocess = postprocess or self.default_postprocess
        self.model = load_detector(detector_directory(model), self.device)

    def propose(self, images: Sequence[Image.Image], samples: Sequence[Sample],
                queries: Sequence[Sequence[str]] | None = None) -> list[Proposals]:
        images = check_batch(images, samples)
        peaks = max(100, self.postprocess.top_k or 0)
        found: list[Proposals] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = image_batch(chunk, self.model.config.image_size).to(self.device)
            with torch.inference_mode():  # eval mode: safe from several threads
                boxes, scores = decode(self.model(pixels), self.model.config, peaks)
            for image, image_boxes, image_scores in zip(chunk, boxes.cpu(), scores.cpu(),
                                                        strict=True):
                pixels_xyxy = B.denormalize(image_boxes, image.width, image.height)
                found.append(self.postprocess(pixels_xyxy, image_scores,
                                              [LABEL] * len(image_scores), image.width,
                                              image.height))
        return found
