"""The ``refer`` dataset format: RefCOCO, RefCOCO+, RefCOCOg, and SynthRef, through one loader.

Layout (as distributed with the REFER toolkit)::

    <root>/<dataset>/refs(<split_by>).p     pickle: list of refs
    <root>/<dataset>/instances.json         COCO images / annotations / categories
    <images_dir>/<file name from instances.json>

A ref's own ``file_name`` carries an annotation-id suffix (``COCO_train2014_000000581857_16.jpg``)
and is not a real file: the image's file name comes from ``instances.json``. Each ref has one or
more sentences; the papers' protocol evaluates every (ref, sentence) pair, so each becomes one
:class:`~refground.types.Sample`. COCO boxes are xywh; they become xyxy here and nowhere else.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from refground import boxes as B
from refground.data.dataset import DATASET_FORMATS, Dataset, Split
from refground.data.safe_pickle import load_plain_pickle
from refground.errors import BoxError, DatasetError
from refground.types import Annotation, BoxTuple, Sample, SceneGraph


@dataclass(frozen=True)
class _Image:
    file_name: str
    width: int
    height: int


class _Invalid(Exception):
    """A record is malformed; carries the message naming the file and record."""


#: What reading a record of the wrong shape raises (an int that is a list, a float that is
#: infinite, a box that is not four numbers); such a record is reported, never raised raw.
MALFORMED = (KeyError, TypeError, ValueError, OverflowError, IndexError, AttributeError,
             BoxError)


def refs_path(dataset: Dataset) -> Path:
    """``<root>/<name>/refs(<split_by>).p``: the refs (with their sentences) of one partition."""
    return dataset.directory / f"refs({dataset.split_by}).p"


@DATASET_FORMATS.register("refer")
class ReferFormat:
    """The REFER layout (module docstring): RefCOCO, RefCOCO+, RefCOCOg and SynthRef."""

    def split(self, dataset: Dataset, name: str, skip_invalid: bool) -> Split:
        """Load split ``name`` as samples.

        With ``skip_invalid`` malformed refs, unknown annotations and missing images are
        skipped and listed in ``Split.skipped``; without it the first one raises
        :class:`DatasetError` naming the file and the record.
        """
        pickle_path = _existing_refs_path(dataset)
        images_root = dataset.images_root
        if not images_root.is_dir():
            raise DatasetError(f"image directory not found: {images_root} (set --images)")

        instances_path = dataset.directory / "instances.json"
        images, annotations, categories, skipped = _load_instances(instances_path, skip_invalid)
        refs = _load_refs(pickle_path, name)

        by_image = _annotations_by_image(annotations, categories)
        checked_images: dict[int, bool] = {}
        samples: list[Sample] = []
        for index, ref in enumerate(refs):
            if not isinstance(ref, Mapping) or ref.get("split") != name:
                continue
            try:
                samples.extend(_samples_of_ref(
                    ref, index, pickle_path, images, annotations, by_image, images_root,
                    checked_images))
            except (_Invalid, *MALFORMED) as exc:  # MALFORMED: a wrong type deep in the record
                problem = str(exc) if isinstance(exc, _Invalid) else (
                    f"{pickle_path}, ref #{index}: malformed ({type(exc).__name__}: {exc})")
                if not skip_invalid:
                    raise DatasetError(problem) from None
                skipped.append(problem)
        return Split(dataset.name, dataset.split_by, name, tuple(samples), tuple(skipped))

    def expressions(self, dataset: Dataset, split: str | None) -> list[str]:
        """Every non-empty ``sent`` (stripped, as a sample carries it) of the split's refs, or
        of all refs; reads the refs pickle only, neither instances.json nor the images."""
        refs = _load_refs(_existing_refs_path(dataset), split)
        texts: list[str] = []
        for ref in refs:
            if not isinstance(ref, Mapping) or (split is not None and ref.get("split") != split):
                continue
            sentences = ref.get("sentences")
            for sentence in sentences if isinstance(sentences, list) else ():
                if isinstance(sentence, Mapping) and "sent" in sentence:
                    text = str(sentence["sent"]).strip()  # as a sample's expression is read
                    if text:
                        texts.append(text)
        return texts

    def annotation_files(self, dataset: Dataset) -> list[Path]:
        return [refs_path(dataset), dataset.directory / "instances.json"]


def _existing_refs_path(dataset: Dataset) -> Path:
    """The refs file, or a :class:`DatasetError` saying which partitions the folder has."""
    dataset_dir = dataset.directory
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset directory not found: {dataset_dir} (check --data/--dataset)")
    pickle_path = refs_path(dataset)
    if not pickle_path.is_file():
        available = sorted(p.name for p in dataset_dir.glob("refs(*).p"))
        raise DatasetError(
            f"{pickle_path} not found; split-by options here: {', '.join(available) or 'none'}")
    return pickle_path


def _load_refs(pickle_path: Path, split: str | None) -> list[Any]:
    """The refs list of ``pickle_path``; with ``split``, checked to have that split."""
    refs = load_plain_pickle(pickle_path)
    if not isinstance(refs, list):
        raise DatasetError(f"{pickle_path}: expected a list of refs, got {type(refs).__name__}")
    if split is not None:
        present_splits = sorted({str(r.get("split")) for r in refs if isinstance(r, Mapping)})
        if split not in present_splits:
            raise DatasetError(
                f"split {split!r} not in {pickle_path}; it has: {', '.join(present_splits)}")
    return refs


def _samples_of_ref(
    ref: Mapping[str, Any],
    index: int,
    pickle_path: Path,
    images: dict[int, _Image],
    annotations: dict[int, dict[str, Any]],
    by_image: dict[int, tuple[Annotation, ...]],
    images_root: Path,
    checked_images: dict[int, bool],
) -> list[Sample]:
    where = f"{pickle_path}, ref #{index} (ref_id={ref.get('ref_id')!r})"
    for key in ("ref_id", "ann_id", "image_id", "sentences"):
        if key not in ref:
            raise _Invalid(f"{where}: missing key {key!r}")
    ann = annotations.get(ref["ann_id"])
    if ann is None:
        raise _Invalid(f"{where}: ann_id {ref['ann_id']!r} is not in instances.json")
    image_id = ref["image_id"]
    if ann["image_id"] != image_id:
        raise _Invalid(
            f"{where}: ann_id {ref['ann_id']} belongs to image {ann['image_id']}, not {image_id}")
    image = images.get(image_id)
    if image is None:
        raise _Invalid(f"{where}: image_id {image_id!r} is not in instances.json")
    image_path = images_root / image.file_name
    if image_id not in checked_images:
        checked_images[image_id] = image_path.is_file()
    if not checked_images[image_id]:
        raise _Invalid(f"{where}: image file missing: {image_path}")

    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not sentences:
        raise _Invalid(f"{where}: 'sentences' must be a non-empty list")
    samples = []
    for sentence in sentences:
        if not isinstance(sentence, Mapping) or "sent" not in sentence:
            raise _Invalid(f"{where}: a sentence lacks its 'sent' text: {sentence!r}")
        text = str(sentence["sent"]).strip()
        if not text:
            raise _Invalid(f"{where}: sentence {sentence.get('sent_id')!r} is empty")
        graph = sentence.get("graph")
        sent_id = sentence.get("sent_id")
        samples.append(Sample(
            sample_id=f"{ref['ref_id']}:{sent_id}",
            image=image_path,
            width=image.width,
            height=image.height,
            expression=text,
            gt_box=ann["box"],
            image_id=image_id,
            ann_id=ref["ann_id"],
            ref_id=ref["ref_id"],
            sent_id=sent_id,
            category_id=ann["category_id"],
            annotations=by_image.get(image_id, ()),
            expression_type=sentence.get("type"),
            graph=SceneGraph.from_dict(graph) if isinstance(graph, Mapping) else None,
        ))
    return samples


def _load_instances(
    path: Path, skip_invalid: bool
) -> tuple[dict[int, _Image], dict[int, dict[str, Any]], dict[int, str], list[str]]:
    """Parse instances.json into images, annotations (with xyxy boxes) and category names."""
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise DatasetError(f"{path}: not valid instances JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing list {key!r}")

    skipped: list[str] = []

    def parse_all(key: str, parse: Any) -> dict[int, Any]:
        parsed: dict[int, Any] = {}
        for index, record in enumerate(data[key]):
            try:
                record_id, value = parse(record)
            except MALFORMED as exc:
                problem = f"{path}: {key}[{index}] is malformed ({type(exc).__name__}: {exc})"
                if not skip_invalid:
                    raise DatasetError(problem) from None
                skipped.append(problem)
                continue
            parsed[record_id] = value
        return parsed

    images = parse_all("images", _parse_image)
    categories = parse_all("categories", lambda c: (int(c["id"]), str(c["name"])))
    annotations = parse_all("annotations", _parse_annotation)
    return images, annotations, categories, skipped


def _parse_image(record: Mapping[str, Any]) -> tuple[int, _Image]:
    width, height = int(record["width"]), int(record["height"])
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return int(record["id"]), _Image(relative_file_name(record["file_name"]), width, height)


def relative_file_name(name: object) -> str:
    """``name`` if it is a plain relative path that stays inside the image folder.

    Annotation files come from elsewhere: an absolute path or a ``..`` would make loading a
    split read (and show) any image on the machine, so both are refused, in POSIX and Windows
    spelling alike.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"file_name must be a non-empty string, got {name!r}")
    if "\0" in name:
        raise ValueError(f"file_name contains a NUL character: {name!r}")
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(name)
        if path.is_absolute() or path.anchor or ".." in path.parts:
            raise ValueError(f"file_name must be a path inside the image folder, without "
                             f"'..' or a leading '/' or drive: {name!r}")
    return name


def _parse_annotation(record: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    bbox = record["bbox"]
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")
    box = _xyxy_float32(bbox)
    if box is None:  # something is wrong: the tensor path raises the one error users see
        xywh = torch.tensor([float(v) for v in bbox])
        if (xywh[2:] < 0).any():
            raise BoxError(f"bbox has negative width or height: {bbox!r}")
        box = B.to_tuple(B.as_tensor(B.xywh_to_xyxy(xywh)))
    return int(record["id"]), {
        "image_id": int(record["image_id"]),
        "category_id": int(record["category_id"]),
        "box": box,
    }


def _xyxy_float32(bbox: list[Any] | tuple[Any, ...]) -> BoxTuple | None:
    """``bbox`` (xywh) as the xyxy tuple the float32 tensor path gives, or None when that path
    would raise. A plain-Python twin of it: a dataset has 10^5 annotations, and tensor
    operations on one box at a time took most of a load. ``array("f")`` rounds to float32, as
    ``torch.tensor`` does; the sum of two float32 values rounded from a double equals their
    float32 sum."""
    x, y, w, h = array("f", [float(v) for v in bbox])
    x1, y1 = array("f", [x + w, y + h])
    box = (x, y, x1, y1)
    if w >= 0 and h >= 0 and all(math.isfinite(v) for v in box):
        return box
    return None


def _annotations_by_image(
    annotations: dict[int, dict[str, Any]], categories: dict[int, str]
) -> dict[int, tuple[Annotation, ...]]:
    grouped: dict[int, list[Annotation]] = {}
    for ann_id, ann in annotations.items():
        grouped.setdefault(ann["image_id"], []).append(Annotation(
            ann_id=ann_id,
            box=ann["box"],
            category_id=ann["category_id"],
            category=categories.get(ann["category_id"], str(ann["category_id"])),
        ))
    return {image_id: tuple(anns) for image_id, anns in grouped.items()}
