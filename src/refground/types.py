"""The values that flow through refground: dataset -> Sample -> Method -> Prediction -> metrics.

All are frozen dataclasses. Boxes inside them are plain ``(x0, y0, x1, y1)`` tuples in absolute
pixels, so values are hashable, picklable and JSON-friendly; code that computes on many boxes
turns them into tensors with :func:`refground.boxes.as_tensor`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PIL only for the annotation: values stay importable without it
    from PIL import Image

BoxTuple = tuple[float, float, float, float]


@dataclass(frozen=True)
class Entity:
    """One noun phrase of an expression: "the large blue square" -> head "square"."""

    span: str
    head: str
    attributes: tuple[str, ...] = ()
    spatial: tuple[str, ...] = ()  # "leftmost", "second from the left", "in the top right"


@dataclass(frozen=True)
class Relation:
    """``entities[subject] --predicate--> entities[object]``, e.g. (0, "left of", 1)."""

    subject: int
    predicate: str
    object: int


@dataclass(frozen=True)
class SceneGraph:
    """The structure of an expression. By convention entity 0 is the referent."""

    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "entities": [
                {"span": e.span, "head": e.head, "attributes": list(e.attributes),
                 "spatial": list(e.spatial)}
                for e in self.entities
            ],
            "relations": [
                {"subject": r.subject, "predicate": r.predicate, "object": r.object}
                for r in self.relations
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneGraph:
        entities = tuple(
            Entity(
                span=str(e["span"]),
                head=str(e["head"]),
                attributes=tuple(e.get("attributes", ())),
                spatial=tuple(e.get("spatial", ())),
            )
            for e in data.get("entities", ())
        )
        relations = tuple(
            Relation(int(r["subject"]), str(r["predicate"]), int(r["object"]))
            for r in data.get("relations", ())
        )
        return cls(entities, relations)


@dataclass(frozen=True)
class Annotation:
    """One annotated object of an image (used as "ground-truth proposals")."""

    ann_id: int
    box: BoxTuple
    category_id: int
    category: str


@dataclass(frozen=True)
class ImageSource:
    """Where a sample's pixels come from: an image file, an image already decoded in memory,
    or both (a file the caller has decoded once, e.g. to learn its size).

    ``key`` is the image's identity within a run: what batches de-duplicate by, so that an
    image shown with several expressions is decoded and encoded once. A file's key is its
    path; an in-memory image's is a digest of its pixels, so the same picture handed twice is
    one image. The decoded pixels take no part in equality or hashing.
    """

    key: str
    path: Path | None = None
    decoded: Image.Image | None = field(default=None, compare=False, hash=False, repr=False)

    @classmethod
    def file(cls, path: str | Path, decoded: Image.Image | None = None) -> ImageSource:
        """An image file (``decoded``: its pixels, when the caller has them already)."""
        return cls(str(path), Path(path), None if decoded is None else _rgb(decoded))

    @classmethod
    def memory(cls, image: Image.Image) -> ImageSource:
        """A decoded image with no file behind it (an upload, a numpy array)."""
        image = _rgb(image)
        digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
        return cls(f"memory:{digest.hexdigest()}", None, image)


def _rgb(image: Image.Image) -> Image.Image:
    """Methods read three channels: a grey or RGBA image is converted once, here."""
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Sample:
    """One evaluation unit: an image, one expression, and (when known) the box it names.

    A REFER ref with three sentences gives three samples, as in the papers' protocol.
    ``image`` may be given as a path; it is stored as an :class:`ImageSource`.
    """

    sample_id: str
    image: ImageSource
    width: int
    height: int
    expression: str
    gt_box: BoxTuple | None = None
    image_id: int | None = None
    ann_id: int | None = None
    ref_id: int | None = None
    sent_id: int | None = None
    category_id: int | None = None
    annotations: tuple[Annotation, ...] = ()
    expression_type: str | None = None
    graph: SceneGraph | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, ImageSource):  # a path: the common case, kept short
            object.__setattr__(self, "image", ImageSource.file(self.image))

    @property
    def image_path(self) -> Path | None:
        """The image's file, or None for an image given in memory."""
        return self.image.path

    @property
    def category(self) -> str | None:
        for ann in self.annotations:
            if ann.ann_id == self.ann_id:
                return ann.category
        return None

    @property
    def distractors(self) -> int:
        """Other objects of the referent's category in the image: the usual difficulty axis."""
        if self.category_id is None:
            return 0
        return sum(
            1 for a in self.annotations
            if a.category_id == self.category_id and a.ann_id != self.ann_id
        )


@dataclass(frozen=True)
class Candidate:
    """A scored box a method considered; predictions keep them ranked best first."""

    box: BoxTuple
    score: float
    label: str | None = None


@dataclass(frozen=True)
class GraphUse:
    """Which parts of an expression's scene graph a structured method could act on.

    A relation such as "holding" or a modifier the method has no geometry for is *dropped*: the
    answer then rests on the rest of the expression. Dropping is legitimate, silent dropping is
    not: every prediction says what it dropped, and metrics count it. ``structured`` is False
    when the graph had no entities and the whole expression went to the scorer instead.
    Entries are predicate or modifier names, one per occurrence in the graph.
    """

    structured: bool = True
    used_relations: tuple[str, ...] = ()
    dropped_relations: tuple[str, ...] = ()
    used_modifiers: tuple[str, ...] = ()
    dropped_modifiers: tuple[str, ...] = ()

    @property
    def dropped_any(self) -> bool:
        return bool(self.dropped_relations or self.dropped_modifiers or not self.structured)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphUse:
        return cls(bool(data.get("structured", True)),
                   *(tuple(str(v) for v in data.get(key, ())) for key in (
                       "used_relations", "dropped_relations", "used_modifiers",
                       "dropped_modifiers")))


@dataclass(frozen=True)
class Prediction:
    """What a method answers for one sample."""

    sample_id: str
    box: BoxTuple
    score: float = 0.0
    candidates: tuple[Candidate, ...] = ()
    fallback: str | None = None  # e.g. "whole-image" when no proposal survived
    graph_use: GraphUse | None = None  # structured methods: what of the graph was used
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
