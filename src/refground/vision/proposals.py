"""Candidate boxes for grounding: the ``Proposer`` interface, shared post-processing, ``gt``.

A proposer turns a batch of images into scored, labelled boxes; methods then choose among them.
Every proposer's raw output goes through the same :func:`postprocess` (score threshold, area
filter, NMS, top-k, clipping, whole-image fallback), so "owlvit with top_k=10" means the same
thing as "detr with top_k=10", and the whole-image fallback is decided in one place and recorded
in :attr:`Proposals.fallback` instead of being silently indistinguishable from a detection.

Implementations register in :data:`PROPOSERS` under these names:

* ``gt``: the sample's annotated boxes (the "ground-truth proposals" REC setting), here;
* ``owlvit`` / ``owlv2``: text-conditioned OWL-ViT (``proposers.owlvit``);
* ``grounding-dino``: text-conditioned Grounding DINO (``proposers.grounding_dino``);
* ``detr``: closed-vocabulary DETR, COCO classes (``proposers.detr``);
* ``yolo``: ultralytics YOLO, optional extra ``refground[yolo]`` (``proposers.yolo``);
* ``centernet``: refground's own class-agnostic detector, by default the shipped
  ``synthref-det`` (``proposers.centernet``); ``auto`` names the default detector, this one.

Detector modules import their heavy libraries only when a proposer is built, so listing names
(``PROPOSERS.names()``) never needs transformers or ultralytics.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor

from refground import boxes as B
from refground.errors import ConfigError, ModelLoadError
from refground.registry import Registry
from refground.types import Candidate, Sample, SceneGraph

#: ``Proposals.fallback`` when nothing survived and the whole image stands in as the one box.
WHOLE_IMAGE = "whole-image"
#: The label of that stand-in box.
WHOLE_IMAGE_LABEL = "image"


class ProposerLoadError(ModelLoadError):
    """A detector checkpoint or its processor could not be loaded (bad name, offline, broken)."""


@dataclass(frozen=True, eq=False)
class Proposals:
    """The candidate boxes of one image, best first.

    ``boxes`` is ``(K, 4)`` float32 xyxy in pixels of the image given to the proposer, inside the
    image; ``scores`` is ``(K,)`` sorted descending; ``labels[i]`` names what box ``i`` was
    detected as (the text query for text-conditioned detectors, the class name otherwise, the
    category for ``gt``). ``fallback`` is :data:`WHOLE_IMAGE` when nothing survived filtering and
    the single box is the whole image with score 0 - methods report it in their predictions.

    ``eq=False``: tensors have no single truth value, so equality is identity.
    """

    boxes: Tensor
    scores: Tensor
    labels: tuple[str, ...]
    fallback: str | None = None

    def __post_init__(self) -> None:
        B.check_boxes(self.boxes, "proposal boxes")
        count = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.scores.shape != (count,) or len(self.labels) != count:
            raise ConfigError(
                f"proposals need boxes (K, 4), scores (K,) and K labels; got boxes "
                f"{tuple(self.boxes.shape)}, scores {tuple(self.scores.shape)}, "
                f"{len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def whole_image(cls, width: float, height: float) -> Proposals:
        """The fallback: one box covering the image, score 0, flagged as a fallback."""
        return cls(
            boxes=torch.tensor([[0.0, 0.0, float(width), float(height)]]),
            scores=torch.zeros(1),
            labels=(WHOLE_IMAGE_LABEL,),
            fallback=WHOLE_IMAGE,
        )

    def candidates(self) -> tuple[Candidate, ...]:
        """The proposals as :class:`~refground.types.Candidate` values (for a Prediction)."""
        return tuple(
            Candidate(B.to_tuple(box), float(score), label)
            for box, score, label in zip(self.boxes, self.scores.tolist(), self.labels,
                                         strict=True)
        )


@dataclass(frozen=True)
class PostProcess:
    """Filtering shared by every proposer, applied to its raw detections in this order.

    1. clip boxes to the image, drop boxes left with zero area (they can never be a hit);
    2. keep ``score >= score_threshold`` (for Grounding DINO this is its "box threshold");
    3. drop boxes covering ``>= max_area_fraction`` of the image (``None``: keep all) - large
       boxes are usually "the whole scene" detections that crowd out objects;
    4. class-agnostic greedy NMS at ``nms_iou`` (``None``: none; DETR-style detectors and YOLO
       need none, OWL-ViT emits one box per patch and may);
    5. keep the ``top_k`` best (``None``: all);
    6. nothing left: the whole image, score 0, ``fallback="whole-image"``.
    """

    score_threshold: float = 0.0
    top_k: int | None = None
    nms_iou: float | None = None
    max_area_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.nms_iou is not None and not 0.0 <= self.nms_iou <= 1.0:
            raise ConfigError(f"nms_iou must be in [0, 1] or None, got {self.nms_iou!r}")
        if self.max_area_fraction is not None and not 0.0 < self.max_area_fraction <= 1.0:
            raise ConfigError(
                f"max_area_fraction must be in (0, 1] or None, got {self.max_area_fraction!r}")

    def __call__(self, boxes: Tensor, scores: Tensor, labels: Sequence[str], width: float,
                 height: float) -> Proposals:
        return postprocess(boxes, scores, labels, width, height, self)


POSTPROCESS_OPTIONS: frozenset[str] = frozenset(f.name for f in fields(PostProcess))


def postprocess(boxes: Tensor, scores: Tensor, labels: Sequence[str], width: float,
                height: float, options: PostProcess | None = None) -> Proposals:
    """Turn one image's raw detections into :class:`Proposals` (see :class:`PostProcess`).

    ``boxes`` are xyxy pixels of a ``width`` x ``height`` image; NaN or inverted boxes raise
    :class:`~refground.errors.BoxError` (a broken detector should be loud, not filtered).
    """
    options = options or PostProcess()
    boxes = B.check_boxes(boxes.detach().to("cpu", torch.float32), "detector boxes")
    scores = scores.detach().to("cpu", torch.float32).reshape(-1)
    if boxes.ndim != 2 or len(scores) != len(boxes) or len(labels) != len(boxes):
        raise ConfigError(
            f"raw detections need boxes (K, 4), scores (K,) and K labels; got boxes "
            f"{tuple(boxes.shape)}, scores {tuple(scores.shape)}, {len(labels)} labels")
    boxes = B.clip_to_image(boxes, width, height)
    areas = B.area(boxes)
    keep = (areas > 0) & (scores >= options.score_threshold)
    if options.max_area_fraction is not None:
        keep &= areas < options.max_area_fraction * float(width) * float(height)
    index = keep.nonzero().flatten()
    index = index[scores[index].argsort(descending=True, stable=True)]
    if options.nms_iou is not None:
        index = index[B.nms(boxes[index], scores[index], options.nms_iou)]
    if options.top_k is not None:
        index = index[: options.top_k]
    if len(index) == 0:
        return Proposals.whole_image(width, height)
    kept = index.tolist()
    return Proposals(boxes[index].contiguous(), scores[index].contiguous(),
                     tuple(labels[i] for i in kept))


@runtime_checkable
class Proposer(Protocol):
    """Anything that proposes boxes for a batch of images.

    ``images[i]`` is the image of ``samples[i]``; boxes come back in its pixel coordinates.
    ``queries[i]`` are the texts to detect in image ``i`` (e.g. the head nouns of the
    expression's entities) for text-conditioned detectors; ``None`` lets the proposer derive
    them from the sample's expression (:func:`default_queries`); closed-vocabulary proposers
    ignore them.

    A proposer runs at predict time, so it reads only what a user could supply: the image, the
    sample's ``width``/``height`` and ``expression``, and (``gt``) the annotation boxes - never
    ``gt_box``, ids, ``expression_type`` or the gold ``graph``.
    """

    name: str

    def propose(self, images: Sequence[Image.Image], samples: Sequence[Sample],
                queries: Sequence[Sequence[str]] | None = None) -> list[Proposals]:
        """One :class:`Proposals` per image, in order."""
        ...


#: Every module of :mod:`refground.vision.proposers` is imported on first lookup; a proposer
#: registers itself with ``@PROPOSERS.register("name")``.
PROPOSERS: Registry[Proposer] = Registry("proposer", packages=("refground.vision.proposers",))


def build_proposer(name: str, **options: Any) -> Proposer:
    """Construct a registered proposer by name.

    Options named like :class:`PostProcess` fields (``score_threshold``, ``top_k``, ``nms_iou``,
    ``max_area_fraction``) override that proposer's defaults (or a ``postprocess=PostProcess``
    given here); the rest go to its constructor.
    An option the proposer does not take raises :class:`~refground.errors.ConfigError` naming
    the ones it does, so a typo in a config file fails loudly.
    """
    factory = PROPOSERS.get(name)
    overrides = {key: options.pop(key) for key in list(options) if key in POSTPROCESS_OPTIONS}
    defaults: PostProcess = (options.pop("postprocess", None)
                             or getattr(factory, "default_postprocess", PostProcess()))
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as exc:
        accepted = sorted(set(signature.parameters) - {"postprocess"} | POSTPROCESS_OPTIONS)
        raise ConfigError(
            f"proposer {name!r}: {exc}. Accepted options: {', '.join(accepted)}") from None
    return factory(postprocess=replace(defaults, **overrides), **options)


def proposer_takes_device(name: str) -> bool:
    """Whether the proposer registered as ``name`` runs a model on a ``device`` it is given
    (the detectors do; ``gt`` does not). Methods pass theirs on to such proposers."""
    return "device" in inspect.signature(PROPOSERS.get(name)).parameters


# --- queries ---------------------------------------------------------------------------------

def default_queries(sample: Sample, backend: str = "auto") -> tuple[str, ...]:
    """What a text-conditioned proposer looks for when no queries are given.

    The head nouns of the expression's *parsed* entities ("the man left of the car" -> man,
    car: each entity gets detections), else the expression. Parsed, never ``Sample.graph``: on
    SynthRef that is the generator's gold graph, and queries built from it would hand every
    detector-backed method gold structure at predict time. See :func:`parsed_queries`.
    """
    return parsed_queries([sample.expression], backend)[0]


def parsed_queries(expressions: Sequence[str], backend: str = "auto") -> list[tuple[str, ...]]:
    """:func:`graph_queries` of each expression's parsed scene graph, parsed in one batch.

    :func:`refground.language.graphs_for` memoises per process, so a detector asked about the
    same expression again does not parse it again. An expression the parser refuses (empty,
    too long) has no entities and is its own query. Imported lazily: listing proposers must not
    load the parser.
    """
    from refground.language import graphs_for

    graphs = graphs_for(expressions, backend=backend)
    return [graph_queries(graph, expression)
            for graph, expression in zip(graphs, expressions, strict=True)]


def graph_queries(graph: SceneGraph | None, expression: str) -> tuple[str, ...]:
    """The head nouns of ``graph``'s entities, cleaned; ``expression`` itself when there are none.

    For callers that already hold the expression's graph (a method with its own parser cache
    or backend) and pass the result as ``queries``.
    """
    if graph is not None and graph.entities:
        heads = clean_queries(entity.head for entity in graph.entities)
        if heads:
            return heads
    return clean_queries([expression])


def clean_queries(queries: Sequence[str] | Any) -> tuple[str, ...]:
    """Strip, drop empty strings and duplicates (first occurrence wins, order kept).

    Duplicates would compete for the same boxes and split their scores between two labels.
    """
    seen: dict[str, None] = {}
    for query in queries:
        text = " ".join(str(query).split())
        if text:
            seen.setdefault(text, None)
    return tuple(seen)


def resolve_queries(samples: Sequence[Sample], queries: Sequence[Sequence[str]] | None
                    ) -> list[tuple[str, ...]]:
    """Per-image queries: the given ones cleaned, or :func:`default_queries` of each sample
    (their expressions parsed together)."""
    if queries is None:
        return parsed_queries([sample.expression for sample in samples])
    if isinstance(queries, str) or len(queries) != len(samples):
        raise ConfigError(
            f"queries must be one list of strings per image ({len(samples)} images), got "
            f"{queries!r}")
    return [clean_queries([q] if isinstance(q, str) else q) for q in queries]


def check_batch(images: Sequence[Image.Image], samples: Sequence[Sample]) -> list[Image.Image]:
    """Validate a propose() batch; return the images as RGB (detectors expect 3 channels)."""
    if len(images) != len(samples):
        raise ConfigError(f"propose() got {len(images)} images for {len(samples)} samples")
    rgb = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise ConfigError(f"propose() needs PIL images, got {type(image).__name__}")
        rgb.append(image if image.mode == "RGB" else image.convert("RGB"))
    return rgb


# --- gt --------------------------------------------------------------------------------------

@PROPOSERS.register("gt")
@dataclass(frozen=True)
class GroundTruthProposer:
    """The sample's annotated boxes, score 1, labelled with their category.

    The standard "ground-truth proposals" setting of REC papers: it isolates the grounding step
    from detection errors. The boxes are the candidates; the categories are gold annotations,
    carried only as the candidates' display labels: no method may score with them
    (``visual-prompt`` refuses ``category_prior`` with ``gt``). Annotation order is kept (all
    scores tie). A sample without annotations gets the whole-image fallback. Queries are
    ignored. Annotations are in the sample's ``width`` x ``height`` pixels; when the image given
    is another size (a method resized it), they are scaled to it, like every proposer's boxes.
    """

    postprocess: PostProcess = field(default_factory=PostProcess)
    name: ClassVar[str] = "gt"
    default_postprocess: ClassVar[PostProcess] = PostProcess()

    def propose(self, images: Sequence[Image.Image], samples: Sequence[Sample],
                queries: Sequence[Sequence[str]] | None = None) -> list[Proposals]:
        images = check_batch(images, samples)
        return [self.propose_sample(sample, image.width, image.height)
                for image, sample in zip(images, samples, strict=True)]

    def propose_sample(self, sample: Sample, width: int | None = None,
                       height: int | None = None) -> Proposals:
        """The sample's boxes for an image of ``width`` x ``height`` (default: its own size);
        needs no pixels, so a method reading cached features never decodes the image."""
        width = sample.width if width is None else width
        height = sample.height if height is None else height
        annotations = sample.annotations
        boxes = B.as_tensor([a.box for a in annotations], f"annotations of {sample.sample_id}")
        if (width, height) != (sample.width, sample.height):
            boxes = B.denormalize(B.normalize(boxes, sample.width, sample.height), width, height)
        return self.postprocess(boxes, torch.ones(len(annotations)),
                                [a.category for a in annotations], width, height)
