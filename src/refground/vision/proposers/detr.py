"""DETR: closed-vocabulary detection (COCO classes); labels come from the checkpoint's id2label.

Loaded through ``AutoModelForObjectDetection`` + ``AutoImageProcessor`` and post-processed with
the image processor's ``post_process_object_detection``, so other transformers object detectors
(Deformable DETR, Conditional DETR, ...) load through the same proposer; DETR is the one the
tests exercise. Queries are ignored.

The hub DETR checkpoints (``facebook/detr-resnet-50``) declare a timm ResNet backbone
(``use_timm_backbone``); without timm transformers fails deep inside model construction, so the
config is checked first and a :class:`~refground.errors.MissingDependencyError` says what to
install. Checkpoints with a transformers backbone (``use_timm_backbone=False``) need no timm.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from refground.devices import AUTO, DeviceSpec
from refground.errors import MissingDependencyError
from refground.vision.proposals import PROPOSERS, PostProcess
from refground.vision.proposers._hf import (
    RawDetections,
    TransformersProposer,
    load_config,
    load_model,
    load_step,
)


def _needs_timm(config: Any) -> bool:
    backbone = getattr(config, "backbone_config", None)
    model_type = getattr(backbone, "model_type", None) if backbone is not None else None
    return model_type == "timm_backbone" or bool(getattr(config, "use_timm_backbone", False))


@PROPOSERS.register("detr")
class DetrProposer(TransformersProposer):
    """DETR proposals. Defaults: score >= 0.5 (as YOLO's confidence in docs/methods.md), top 50."""

    name: ClassVar[str] = "detr"
    default_model: ClassVar[str] = "facebook/detr-resnet-50"
    default_postprocess: ClassVar[PostProcess] = PostProcess(score_threshold=0.5, top_k=50)
    text_conditioned: ClassVar[bool] = False

    def __init__(self, model: str | os.PathLike[str] | None = None, *,
                 device: DeviceSpec = AUTO, batch_size: int = 8,
                 strict: bool = True, postprocess: PostProcess | None = None) -> None:
        super().__init__(model, device=device, batch_size=batch_size, strict=strict,
                         postprocess=postprocess)

    def _load(self, source: str, strict: bool) -> None:
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        config = load_config(source, self.name, ())
        if _needs_timm(config) and importlib.util.find_spec("timm") is None:
            raise MissingDependencyError(
                f"{source!r} uses a timm backbone (use_timm_backbone): pip install timm, or use "
                "a checkpoint saved with a transformers backbone (use_timm_backbone=False)")
        self.processor: Any = load_step(
            "image processor", source, lambda: AutoImageProcessor.from_pretrained(source))
        self.model: Any = load_model(AutoModelForObjectDetection, source, config,
                                     strict=strict, device=self.device)
        self.id2label: dict[int, str] = {
            int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}

    def _detect(self, images: Sequence[Image.Image], queries: Sequence[tuple[str, ...]]
                ) -> list[RawDetections]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        # threshold -1 keeps every query's box; PostProcess does all filtering.
        results = self.processor.post_process_object_detection(
            outputs, threshold=-1.0, target_sizes=[(image.height, image.width) for image in images])
        return [
            RawDetections(
                boxes=result["boxes"].float().cpu(),
                scores=result["scores"].float().cpu(),
                labels=tuple(self.id2label.get(int(i), str(int(i))) for i in result["labels"]),
            )
            for result in results
        ]
