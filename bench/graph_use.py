"""How much of free-form expressions' graphs graph-resolve acts on, and what it drops.

    .venv/bin/python bench/graph_use.py --gold tests/data/freeform_gold.jsonl
        [--backends spacy rules] [--pair-candidates 4 0] [--boxes 8]

graph-resolve records in every prediction which relations and spatial modifiers it used and
which it dropped (``Prediction.graph_use``). This runs the real method (its shipped CLIP
scorer, parsed graphs) over each expression of a gold file on one synthetic image with
``--boxes`` random boxes, and prints, per parser backend and ``pair_candidates`` setting side
by side, the share of relations and modifiers dropped and the most frequent dropped names.
``pair_candidates 0`` is the behaviour before relations without geometry were scored.
The image's content does not matter: what is dropped depends on the graph, not the pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
from PIL import Image

from refground.api import Grounder
from refground.types import GraphUse

SIZE = 320


def random_boxes(count: int, seed: int = 0) -> list[tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(count):
        w, h = rng.uniform(30, 120, size=2)
        x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
        boxes.append((float(x), float(y), float(x + w), float(y + h)))
    return boxes


def graph_uses(texts: list[str], backend: str, pair_candidates: int, image: Path,
               boxes: list[tuple[float, float, float, float]]) -> list[GraphUse]:
    grounder = Grounder.load("graph-resolve", detector=None, parser_backend=backend,
                             pair_candidates=pair_candidates)
    predictions = grounder.ground_batch([image] * len(texts), texts, [boxes] * len(texts))
    return [p.graph_use for p in predictions if p.graph_use is not None]


@dataclass(frozen=True)
class Summary:
    expressions: int
    with_drop: int  # expressions with at least one dropped relation or modifier
    relations: int
    dropped_relations: Counter[str]
    modifiers: int
    dropped_modifiers: Counter[str]

    @classmethod
    def of(cls, uses: list[GraphUse]) -> Summary:
        return cls(
            len(uses), sum(u.dropped_any for u in uses),
            sum(len(u.used_relations) + len(u.dropped_relations) for u in uses),
            Counter(name for u in uses for name in u.dropped_relations),
            sum(len(u.used_modifiers) + len(u.dropped_modifiers) for u in uses),
            Counter(name for u in uses for name in u.dropped_modifiers))

    def row(self, backend: str, pairs: int) -> str:
        rel = f"{self.dropped_relations.total()}/{self.relations}"
        mod = f"{self.dropped_modifiers.total()}/{self.modifiers}"
        top = ", ".join(f"{name} x{count}" for name, count in (
            *self.dropped_relations.most_common(5), *self.dropped_modifiers.most_common(5)))
        return (f"  {backend:<8} {pairs:>5} {self.with_drop:>5}/{self.expressions:<4} "
                f"{rel:>16} {mod:>16}  {top}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gold", type=Path, required=True,
                        help="JSONL with an 'expression' per line (bench/parse_quality.py)")
    parser.add_argument("--backends", nargs="+", default=["spacy", "rules"])
    parser.add_argument("--pair-candidates", nargs="+", type=int, default=[4, 0])
    parser.add_argument("--boxes", type=int, default=8)
    args = parser.parse_args(argv)
    lines = args.gold.read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["expression"] for line in lines if line.strip()]
    boxes = random_boxes(args.boxes)
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "blank.png"
        pixels = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image)
        print(f"{len(texts)} expressions from {args.gold}, {len(boxes)} boxes")
        print(f"  {'backend':<8} {'pairs':>5} {'with drop':>10} {'relations':>16} "
              f"{'modifiers':>16}  most dropped")
        for backend in args.backends:
            for pairs in args.pair_candidates:
                print(Summary.of(graph_uses(texts, backend, pairs, image, boxes))
                      .row(backend, pairs))

if __name__ == "__main__":
    main()
