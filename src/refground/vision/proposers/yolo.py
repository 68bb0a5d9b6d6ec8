"""YOLO through ultralytics (optional extra ``refground[yolo]``): the crop-rank baseline's detector.

docs/methods.md: the small variant at confidence 0.5; YOLOv8s gave about 4 points over YOLOv5s, so
``yolov8s.pt`` is the default. ultralytics is imported only when the proposer is built, and it
needs torchvision, which the CPU torch pinned here does not ship: install both to match your
torch build. Queries are ignored (YOLO is closed-vocabulary); labels are its class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.errors import ConfigError, MissingDependencyError
from refground.types import Sample
from refground.vision.proposals import (
    PROPOSERS,
    PostProcess,
    Proposals,
    ProposerLoadError,
    check_batch,
)

INSTALL_HINT = (
    "the yolo proposer needs ultralytics: pip install 'refground[yolo]' (ultralytics also "
    "needs torchvision built for your torch version; install the matching pair)"
)


def _import_yolo() -> Any:
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise MissingDependencyError(f"{INSTALL_HINT}. Import failed: {exc}") from exc
    return YOLO


@PROPOSERS.register("yolo")
class YoloProposer:
    """ultralytics YOLO proposals. Defaults: confidence >= 0.5, no top-k, YOLO's own NMS."""

    name: ClassVar[str] = "yolo"
    default_model: ClassVar[str] = "yolov8s.pt"
    default_postprocess: ClassVar[PostProcess] = PostProcess(score_threshold=0.5)

    def __init__(self, model: str = default_model, *, image_size: int = 640,
                 device: DeviceSpec = AUTO, batch_size: int = 16,
                 postprocess: PostProcess | None = None) -> None:
        if image_size < 32 or batch_size < 1:
            raise ConfigError(
                f"image_size must be >= 32 and batch_size >= 1, got {image_size}, {batch_size}")
        yolo = _import_yolo()
        self.model_name = model
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.postprocess = postprocess or self.default_postprocess
        try:
            self.model = yolo(model)
        except (OSError, ValueError, RuntimeError, FileNotFoundError) as exc:
            raise ProposerLoadError(f"cannot load YOLO model {model!r}: {exc}") from exc

    def propose(self, images: Sequence[Image.Image], samples: Sequence[Sample],
                queries: Sequence[Sequence[str]] | None = None) -> list[Proposals]:
        """One :class:`Proposals` per image; queries are ignored."""
        images = check_batch(images, samples)
        # ultralytics drops boxes under ``conf`` itself; PostProcess applies the same threshold.
        conf = min(max(self.postprocess.score_threshold, 0.0), 1.0)
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            predictions = self.model.predict(list(chunk), conf=conf, imgsz=self.image_size,
                                             device=str(self.device), verbose=False)
            for image, prediction in zip(chunk, predictions, strict=True):
                found = prediction.boxes
                names = prediction.names
                results.append(self.postprocess(
                    found.xyxy.float().cpu(), found.conf.float().cpu(),
                    [str(names[int(c)]) for c in found.cls.tolist()],
                    image.width, image.height))
        return results
