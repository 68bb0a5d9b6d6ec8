"""How big SynthRef's referents are relative to their images, and what else a scale changes.

    .venv/bin/python bench/synth_stats.py --data data/synth [data/synth-refcoco ...]
    .venv/bin/python bench/synth_stats.py --scale refcoco --images 500 --seed 0
    .venv/bin/python bench/synth_stats.py --compare --images 2000 --seed 0
    .venv/bin/python bench/synth_stats.py --renderings --images 500 --seed 0

``--data`` reads datasets already written; otherwise SynthRef is generated (into a temporary
directory, or ``--out``) at ``--scale`` (``--compare``: every scale with the same seed, side by
side) and the generation time is reported too. Per dataset, over all referents (one per ref,
every split):

* area share -- the referent's box area / the image area: median, 10/25/75/90th percentiles,
  and the share of referents above 2% and above 20%;
* side share -- sqrt(area share), the side of a square of that area relative to the image's;
* objects per image -- mean and the count of images with 3, 4, ... 8 objects;
* sentences per split and expression type;
* how the images are drawn (``--rendering``; ``--renderings``: every rendering of one seed side
  by side): the share of objects drawn with a look of their own (rotated, hollow, rimmed,
  shrunk, shade-jittered), the median turn and shape scale, background kinds, and the share of
  images blurred or JPEG-compressed. Read back from ``instances.json``, where a non-standard
  rendering records each object's ``look`` and each image's ``drawing``.

RefCOCOg's referents are people, animals, vehicles and furniture covering a large part of the
photo; SynthRef's ``refcoco`` scale is meant to match that, ``small`` is the original layout.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refground.data.synth import (
    DEFAULT_SCALE,
    EXPRESSION_TYPES,
    SCALES,
    SPLITS,
    generate_synthref,
    scale_of,
)
from refground.data.synth.rendering import RENDERINGS
from refground.data.synth.writer import dataset_rendering, default_workers

DATASET, SPLIT_BY = "synthref", "synth"
QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)


@dataclass(frozen=True)
class DatasetStats:
    """What one SynthRef directory holds, reduced to the numbers this script prints."""

    name: str
    area_shares: np.ndarray  # one per referent
    objects_per_image: Counter[int]
    sentences: dict[tuple[str, str], int]  # (split, type) -> sentences
    seconds: float | None  # generation time, when this script generated it
    rendering: str = "standard"
    looks: tuple[dict[str, Any] | None, ...] = ()  # per object: its look (None: standard)
    drawings: tuple[dict[str, Any] | None, ...] = ()  # per image: background, blur, JPEG

    @property
    def images(self) -> int:
        return sum(self.objects_per_image.values())


def read_stats(root: Path, seconds: float | None = None) -> DatasetStats:
    """Referent area shares, object counts and sentence counts of the dataset under ``root``."""
    instances = json.loads((root / DATASET / "instances.json").read_text())
    with open(root / DATASET / f"refs({SPLIT_BY}).p", "rb") as stream:
        refs = pickle.load(stream)
    images = {image["id"]: image for image in instances["images"]}
    boxes = {ann["id"]: ann["bbox"] for ann in instances["annotations"]}
    shares = []
    for ref in refs:
        _, _, w, h = boxes[ref["ann_id"]]
        image = images[ref["image_id"]]
        shares.append(w * h / (image["width"] * image["height"]))
    objects = Counter(Counter(a["image_id"] for a in instances["annotations"]).values())
    sentences = Counter((ref["split"], s["type"]) for ref in refs for s in ref["sentences"])
    info = instances["info"]
    scale = scale_of(info["args"]["scene"], info["sizes"]) or "custom"
    rendering = dataset_rendering(root)
    return DatasetStats(f"{scale}:{rendering}:{root.name}", np.asarray(shares), objects,
                        dict(sentences), seconds, rendering,
                        tuple(a.get("look") for a in instances["annotations"]),
                        tuple(i.get("drawing") for i in instances["images"]))


def generate(scale: str, images: int, seed: int, workdir: Path,
             rendering: str = "standard") -> DatasetStats:
    out = workdir / f"{scale}-{rendering}"
    start = time.perf_counter()
    generate_synthref(out, seed=seed, num_images=images, scale=scale, rendering=rendering)
    seconds = time.perf_counter() - start
    stats = read_stats(out, seconds)
    return DatasetStats(f"{scale}:{rendering}", stats.area_shares, stats.objects_per_image,
                        stats.sentences, seconds, rendering, stats.looks, stats.drawings)


def _share(values: list[bool]) -> str:
    return f"{np.mean(values):.1%}" if values else "-"


def _drawing_rows(all_stats: list[DatasetStats]) -> list[tuple[str, list[str]]]:
    """How each dataset is drawn, from the per-object looks and per-image drawings."""
    def looks(s: DatasetStats) -> list[dict[str, Any]]:
        return [look for look in s.looks if look is not None]

    def drawn(s: DatasetStats) -> list[dict[str, Any]]:
        return [d for d in s.drawings if d is not None]

    rows = [("rendering", [s.rendering for s in all_stats]),
            ("objects with a look", [_share([look is not None for look in s.looks])
                                     for s in all_stats])]
    for label, test in (("  rotated", lambda k: k["rotation"] != 0),
                        ("  hollow", lambda k: k["stroke"] > 0),
                        ("  rimmed", lambda k: k["rim"] > 0),
                        ("  shrunk (scale < 1)", lambda k: k["scale"] < 1),
                        ("  other proportions", lambda k: k["proportion"] is not None)):
        rows.append((label, [_share([bool(test(k)) for k in looks(s)]) for s in all_stats]))
    rows += [
        ("  median |turn| (deg)", [f"{np.median([abs(k['rotation']) for k in looks(s)]):.0f}"
                                   if looks(s) else "-" for s in all_stats]),
        ("  median shape scale", [f"{np.median([k['scale'] for k in looks(s)]):.2f}"
                                  if looks(s) else "-" for s in all_stats]),
        ("  max |shade| offset", [str(max(max(abs(v) for v in k["shade"]) for k in looks(s)))
                                  if looks(s) else "-" for s in all_stats]),
        ("images blurred", [_share([d["blur"] > 0 for d in drawn(s)]) for s in all_stats]),
        ("images JPEG-compressed", [_share([d["jpeg_quality"] is not None for d in drawn(s)])
                                    for s in all_stats]),
    ]
    kinds = sorted({d["background"] for s in all_stats for d in drawn(s)})
    rows += [(f"  {kind} backgrounds", [_share([d["background"] == kind for d in drawn(s)])
                                        for s in all_stats]) for kind in kinds]
    return rows


def _rows(all_stats: list[DatasetStats]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = [
        ("images", [str(s.images) for s in all_stats]),
        ("referents", [str(len(s.area_shares)) for s in all_stats]),
    ]
    for q in QUANTILES:
        label = "median area share" if q == 0.5 else f"p{round(q * 100)} area share"
        rows.append((label, [f"{np.quantile(s.area_shares, q):.2%}" for s in all_stats]))
    rows += [
        ("referents > 2% of image", [f"{np.mean(s.area_shares > 0.02):.1%}" for s in all_stats]),
        ("referents > 20% of image", [f"{np.mean(s.area_shares > 0.2):.1%}" for s in all_stats]),
        ("median side share", [f"{np.median(np.sqrt(s.area_shares)):.1%}" for s in all_stats]),
        ("objects per image (mean)", [
            f"{sum(k * v for k, v in s.objects_per_image.items()) / s.images:.2f}"
            for s in all_stats]),
    ]
    counts = range(min(min(s.objects_per_image) for s in all_stats),
                   max(max(s.objects_per_image) for s in all_stats) + 1)
    rows += [(f"  images with {k} objects", [str(s.objects_per_image[k]) for s in all_stats])
             for k in counts]
    rows += _drawing_rows(all_stats)
    if any(s.seconds is not None for s in all_stats):
        rows.append(("generation time (s)", [
            "-" if s.seconds is None else f"{s.seconds:.1f}" for s in all_stats]))
    return rows


def print_table(all_stats: list[DatasetStats]) -> None:
    names = [s.name for s in all_stats]
    width = max(12, *(len(n) for n in names))
    print(f"{'':<28}" + "".join(f"{n:>{width + 2}}" for n in names))
    for label, cells in _rows(all_stats):
        print(f"{label:<28}" + "".join(f"{c:>{width + 2}}" for c in cells))
    for name in dict.fromkeys(s.rendering for s in all_stats):
        print(f"\n{name}: {RENDERINGS[name].summary}")


def print_types(all_stats: list[DatasetStats]) -> None:
    """Sentences per split (rows) and expression type (columns), one column per dataset."""
    names = " / ".join(s.name for s in all_stats)
    print(f"\nsentences per split and type ({names})")
    cell = max(11, 6 * len(all_stats))
    print(f"{'split':<7}" + "".join(f"{t:>{cell + 2}}" for t in EXPRESSION_TYPES))
    for split in SPLITS:
        cells = ["/".join(str(s.sentences.get((split, t), 0)) for s in all_stats)
                 for t in EXPRESSION_TYPES]
        print(f"{split:<7}" + "".join(f"{c:>{cell + 2}}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="+",
                        help="SynthRef roots already written (skips generation)")
    parser.add_argument("--scale", default=None, choices=sorted(SCALES),
                        help="scale to generate (default: the package default)")
    parser.add_argument("--compare", action="store_true",
                        help="generate every scale with the same seed, side by side")
    parser.add_argument("--rendering", default="standard", choices=list(RENDERINGS),
                        help="rendering to generate (default: standard)")
    parser.add_argument("--renderings", action="store_true",
                        help="generate every rendering with the same seed, side by side")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the generated data in OUT/<scale> (default: a temporary "
                             "directory, deleted)")
    args = parser.parse_args()

    if args.data:
        all_stats = [read_stats(root) for root in args.data]
    else:
        scales = list(SCALES) if args.compare else [args.scale or DEFAULT_SCALE]
        renderings = list(RENDERINGS) if args.renderings else [args.rendering]
        with tempfile.TemporaryDirectory(prefix="synth_stats_") as workdir:
            where = args.out or Path(workdir)
            all_stats = [generate(scale, args.images, args.seed, where, rendering)
                         for scale in scales for rendering in renderings]
        print(f"generated {args.images} images per scale, seed {args.seed}, "
              f"{default_workers(args.images)} worker processes")
    print_table(all_stats)
    print_types(all_stats)


if __name__ == "__main__":
    main()
