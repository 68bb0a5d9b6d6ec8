"""The Python API for grounding your own images: ``Grounder.load(...).ground(image, text)``.

Methods work on :class:`~refground.types.Sample` values, the same values the evaluation
harness feeds them. Each input image is decoded once, here, and travels in its sample
(:class:`~refground.types.ImageSource`: the file when there is one, and the decoded pixels),
so the detector and the method use those pixels instead of decoding again, and an image given
in memory (PIL, numpy array, encoded bytes) never touches the disk. Nothing else about a
method changes between ``refground eval`` and ``Grounder.ground``.

Methods that choose among proposals need candidate boxes. Pass them as ``boxes=``; without
them the Grounder's ``detector`` (``"auto"``: the default detector, the shipped
``synthref-det``) finds them in the image, so ``ground(image, text)`` works from text alone.
A method built with its own detector proposer (``proposals="owlvit"``, ...) detects by itself.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refground import boxes as B
from refground.defaults import DEFAULT_DETECTOR, DEFAULT_METHOD
from refground.errors import BoxError, ImageError, InputError
from refground.images import decode_images, load_image, open_image
from refground.methods.base import Method, build_method
from refground.types import Annotation, ImageSource, Prediction, Sample

#: Longest expression accepted: referring expressions are a sentence, not a document.
MAX_TEXT_CHARS = 1000


GroundImage = str | Path | bytes | Image.Image | np.ndarray | ImageSource
BoxLike = Sequence[float]


def check_text(text: object) -> str:
    """The expression with whitespace collapsed; empty, non-string or overlong text raises."""
    if not isinstance(text, str):
        raise InputError(f"the expression must be a string, got {type(text).__name__}")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InputError("the expression is empty; describe the object to find")
    if len(cleaned) > MAX_TEXT_CHARS:
        raise InputError(f"the expression has {len(cleaned)} characters, more than the limit of "
                         f"{MAX_TEXT_CHARS}; shorten it")
    return cleaned


def as_pil(image: GroundImage) -> Image.Image:
    """Any accepted image input as an RGB PIL image (arrays: HxW or HxWxC, uint8 or [0, 1])."""
    if isinstance(image, ImageSource):
        return open_image(image)
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ImageError(f"an image array must be HxW, HxWx3 or HxWx4, got {array.shape}")
        if array.dtype != np.uint8:
            if not np.isfinite(array).all():
                raise ImageError("the image array holds NaN or infinite values")
            scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
            # round, not truncate: ``uint8 / 255`` must come back as the same uint8 image
            # (33 * (1 / 255) * 255 is 32.99999999999999, which truncates to 32)
            array = np.rint(np.clip(array * scale, 0, 255)).astype(np.uint8)
        return load_image(Image.fromarray(array))
    if isinstance(image, (str, Path, bytes, Image.Image)):
        return load_image(image)
    raise ImageError(f"cannot use a {type(image).__name__} as an image; give a path, PIL image, "
                     "numpy array or encoded bytes")


def check_boxes(boxes: Sequence[BoxLike], width: int, height: int) -> list[tuple[float, ...]]:
    """Candidate boxes (xyxy pixels) validated against the image: inside it, not inverted."""
    if isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise BoxError(f"boxes must be a list of [x0, y0, x1, y1] boxes, got "
                       f"{type(boxes).__name__}")
    if len(boxes) and all(isinstance(v, (int, float)) for v in boxes):
        raise BoxError(f"boxes must be a list of boxes, got one flat list {list(boxes)!r}; "
                       "wrap a single box in a list: [[x0, y0, x1, y1]]")
    try:
        tensor = B.as_tensor([list(b) for b in boxes], "candidate boxes")
    except BoxError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:  # ragged, nested, not numbers
        raise BoxError(f"boxes must be a list of [x0, y0, x1, y1] boxes of numbers: {exc}"
                       ) from None
    outside = ((tensor[:, 0] < 0) | (tensor[:, 1] < 0) | (tensor[:, 2] > width)
               | (tensor[:, 3] > height))
    if outside.any():
        row = int(outside.nonzero()[0, 0])
        raise BoxError(f"candidate box {row} {tuple(tensor[row].tolist())} lies outside the "
                       f"{width}x{height} image; boxes are xyxy pixels")
    return [B.to_tuple(box) for box in tensor]


@dataclass(frozen=True)
class Grounder:
    """A loaded method plus the plumbing from user inputs to samples. Safe to share between
    threads: calls into the model are serialised by a lock (one model, one forward at a time)."""

    method: Method
    method_name: str
    _lock: Any
    #: Proposer name for candidate boxes when none are given (None: boxes are required).
    detector: str | None = DEFAULT_DETECTOR
    #: Options of that proposer (``model``, ``top_k``, ...).
    detector_options: dict[str, Any] = field(default_factory=dict)
    _built: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, method: str = DEFAULT_METHOD, *, detector: str | None = DEFAULT_DETECTOR,
             detector_options: dict[str, Any] | None = None, **options: Any) -> Grounder:
        """Build a registered method (``refground methods`` lists them) with its options;
        ``detector`` (a proposer name, with ``detector_options``) finds candidate boxes for
        inputs given without them."""
        built = build_method(method, **options)
        return cls(built, method, threading.Lock(), detector, dict(detector_options or {}))

    def ground(self, image: GroundImage, text: str,
               boxes: Sequence[BoxLike] | None = None) -> Prediction:
        """The box ``text`` refers to in ``image``, with score and ranked candidates."""
        return self.ground_batch([image], [text], None if boxes is None else [boxes])[0]

    def ground_batch(self, images: Sequence[GroundImage], texts: Sequence[str],
                     boxes: Sequence[Sequence[BoxLike] | None] | None = None) -> list[Prediction]:
        """One prediction per (image, text) pair; the same image may appear several times."""
        if isinstance(texts, str) or len(images) != len(texts):
            raise InputError(f"ground_batch needs one text per image: got {len(images)} images "
                             f"and {1 if isinstance(texts, str) else len(texts)} texts")
        if boxes is not None and len(boxes) != len(images):
            raise InputError(f"boxes must be None or one list per image ({len(images)})")
        samples = [self.sample(i, image, text, None if boxes is None else boxes[i])
                   for i, (image, text) in enumerate(zip(images, texts, strict=True))]
        if not samples:
            return []
        missing = [i for i in range(len(samples)) if boxes is None or boxes[i] is None]
        with self._lock:
            return self.method.predict(self.detect_missing(samples, missing))

    def detect_missing(self, samples: list[Sample], missing: Sequence[int]) -> list[Sample]:
        """``samples[i]`` for ``i`` in ``missing`` were given without boxes: for a method that
        needs candidate boxes they get the detector's (each image detected once)."""
        if not self.method.needs_annotations or not missing:
            return samples
        detector = self.detector_proposer()
        by_image: dict[str, Sample] = {}
        for i in missing:
            by_image.setdefault(samples[i].image.key, samples[i])
        distinct = list(by_image.values())
        found = detector.propose(decode_images(distinct), distinct)
        # nothing detected: no candidates, so the method's own whole-image fallback (recorded
        # in the prediction) applies, not a whole-image box posing as a detection
        detected = {key: () if props.fallback is not None else tuple(
                        Annotation(ann_id=k, box=c.box, category_id=0, category=c.label)
                        for k, c in enumerate(props.candidates()))
                    for key, props in zip(by_image, found, strict=True)}
        out = list(samples)
        for i in missing:
            out[i] = replace(samples[i], annotations=detected[samples[i].image.key])
        return out

    def detector_proposer(self) -> Any:
        """The detector, built on first use (on the method's device when it has one)."""
        if self.detector is None:
            raise InputError(f"{self.method_name} chooses among candidate boxes and this "
                             "Grounder has no detector: pass boxes=[[x0, y0, x1, y1], ...] or "
                             f"load it with detector={DEFAULT_DETECTOR!r}")
        if "detector" not in self._built:
            from refground.vision.proposals import build_proposer, proposer_takes_device

            options = dict(self.detector_options)
            device = getattr(self.method, "device", None)
            if device is not None and proposer_takes_device(self.detector):
                options.setdefault("device", device)
            self._built["detector"] = build_proposer(self.detector, **options)
        return self._built["detector"]

    def sample(self, index: int, image: GroundImage, text: str,
               boxes: Sequence[BoxLike] | None) -> Sample:
        """A Sample for one input: image decoded (once; the sample carries the pixels), text
        and boxes checked."""
        expression = check_text(text)
        if isinstance(image, ImageSource):  # a caller that may have decoded it (the CLI)
            source = image
        elif isinstance(image, (str, Path)):
            source = ImageSource.file(image)
        else:
            source = ImageSource.memory(as_pil(image))
        pil = open_image(source)
        source = replace(source, decoded=pil)
        annotations: tuple[Annotation, ...] = ()
        if boxes is not None:
            annotations = tuple(Annotation(ann_id=k, box=box, category_id=0, category="object")
                                for k, box in enumerate(check_boxes(boxes, pil.width,
                                                                    pil.height)))
        elif self.method.needs_annotations and self.detector is None:
            self.detector_proposer()  # raises: boxes are needed
        return Sample(sample_id=str(index), image=source, width=pil.width, height=pil.height,
                      expression=expression, annotations=annotations)

    def close(self) -> None:
        """Nothing to release: images stay in memory and no temporary files are written any
        more. Kept, with a DeprecationWarning, so code written for earlier versions runs."""
        warnings.warn("Grounder.close() is no longer needed (the Grounder writes no temporary "
                      "files); remove the call", DeprecationWarning, stacklevel=2)
