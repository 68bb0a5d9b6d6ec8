"""Contact sheets of an evaluation: a grid of images per PNG, ground truth (green) against the
prediction (red), each captioned with its IoU and expression, worst cases first.

Metrics say *how often* a method fails; sheets sorted by IoU show *how*: the failures that
matter come first, before any summary hides them. Records are read from ``predictions.jsonl``;
each one names its image, and when that path is stale (the run was copied from another
machine) the images are taken from the dataset split instead, joined on ``sample_id``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from refground.errors import DatasetError, ImageError, InputError
from refground.evaluate.records import EvalRecord
from refground.images import load_image
from refground.types import Sample
from refground.viz.draw import draw_gt_vs_pred, font

SHEET_PATTERN = re.compile(r"sheet-\d{3,}\.png")
BACKGROUND = (245, 245, 245)
GAP = 8


@dataclass(frozen=True)
class SheetItem:
    """One tile: a prediction record and the image file it is drawn on."""

    record: EvalRecord
    image_path: Path


def order_records(records: Sequence[EvalRecord], worst_first: bool = True) -> list[EvalRecord]:
    """Sorted by IoU (lowest first, or highest first); ties keep the file's order."""
    return sorted(records, key=lambda r: r.iou if worst_first else -r.iou)


def locate_images(records: Sequence[EvalRecord],
                  samples: Mapping[str, Sample] | None = None) -> list[SheetItem]:
    """Each record with its image: from the dataset split when ``samples`` is given (joined on
    ``sample_id``), else the path the record carries. Every image is checked before anything
    is drawn, so a missing one stops the run at once with a message saying what to pass."""
    items = []
    for record in records:
        if samples is not None:
            sample = samples.get(record.sample_id)
            if sample is None:
                raise DatasetError(f"sample {record.sample_id} of the predictions is not in the "
                                   "dataset split given by --data/--dataset/--split-by/--split;"
                                   " pick the split the run evaluated")
            path = Path(sample.image_path)
        elif record.image_path:
            path = Path(record.image_path)
        else:
            raise InputError(f"prediction {record.sample_id} does not name its image; pass "
                             "--data ROOT (with --dataset/--split-by/--split) to take images "
                             "from the dataset")
        if not path.is_file():
            hint = ("check --images" if samples is not None else
                    "pass --data ROOT (with --dataset/--split-by/--split/--images) to take "
                    "images from the dataset")
            raise ImageError(f"image of sample {record.sample_id} not found: {path}; {hint}")
        items.append(SheetItem(record, path))
    return items


def caption(record: EvalRecord) -> str:
    kind = f" [{record.expression_type}]" if record.expression_type else ""
    return f"IoU {record.iou:.2f}{kind} “{record.expression}”"


def tile(item: SheetItem, size: int) -> Image.Image:
    """The record drawn on its image, scaled to fit ``size`` x ``size`` before drawing (so
    lines and captions have the same weight in every tile)."""
    image = load_image(item.image_path)
    scale = min(size / image.width, size / image.height)
    thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    record = item.record
    gt = tuple(v * scale for v in record.gt_box)
    pred = tuple(v * scale for v in record.pred_box)
    return draw_gt_vs_pred(thumb, gt, pred, caption(record), max_caption_lines=3)


def compose(tiles: Sequence[Image.Image], columns: int, header: str) -> Image.Image:
    """Tiles in rows of ``columns`` under a one-line header; rows as tall as their tallest."""
    cell_w = max(t.width for t in tiles)
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    row_heights = [max(t.height for t in row) for row in rows]
    face = font(16)
    header_h = 16 + 2 * GAP
    width = GAP + columns * (cell_w + GAP)
    height = header_h + sum(h + GAP for h in row_heights)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    ImageDraw.Draw(sheet).text((GAP, GAP), header, fill=(0, 0, 0), font=face)
    y = header_h
    for row, row_h in zip(rows, row_heights, strict=True):
        for column, picture in enumerate(row):
            sheet.paste(picture, (GAP + column * (cell_w + GAP), y))
        y += row_h + GAP
    return sheet


def contact_sheets(items: Sequence[SheetItem], out_dir: Path, per_page: int = 12,
                   tile_size: int = 320, title: str = "", worst_first: bool = True) -> list[Path]:
    """Write ``out_dir/sheet-001.png``, ... with ``per_page`` tiles each, in the given order.

    Sheets a previous call left beyond the new count are deleted, so the directory always
    shows one consistent run.
    """
    if per_page < 1:
        raise InputError(f"per_page must be at least 1, got {per_page}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = math.ceil(len(items) / per_page)
    columns = min(per_page, math.ceil(math.sqrt(per_page)))
    order = "worst first" if worst_first else "best first"
    written = []
    for page in range(pages):
        chunk = items[page * per_page:(page + 1) * per_page]
        header = (f"{title} · page {page + 1}/{pages} · {order} · "
                  "green: ground truth, red: prediction").lstrip(" ·")
        sheet = compose([tile(item, tile_size) for item in chunk], columns, header)
        path = out_dir / f"sheet-{page + 1:03d}.png"
        sheet.save(path)
        written.append(path)
    keep = {p.name for p in written}
    for stale in out_dir.iterdir():
        if SHEET_PATTERN.fullmatch(stale.name) and stale.name not in keep:
            stale.unlink()
    return written
