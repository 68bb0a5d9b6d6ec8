"""Acc@0.5 of an evaluation run split by the size words its expressions use.

    .venv/bin/python bench/size_words.py runs/eval/crop-rank-test [runs/eval/graph-resolve-test ...]

A crop shows no size (crop-rank squashes every proposal to the CLIP's input), so "the large red
circle" is out of reach of crop-rank by design; issue 12's crop-rank target (>= 95%) is on
attribute expressions *without* size words. For each run (a directory holding
``predictions.jsonl``, or the file) this prints, side by side, Acc@0.5 on: all expressions,
attribute expressions with no size word, attribute expressions with one, and every expression
by the size word it holds (large/big, small/little, medium).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refground.evaluate.records import EvalRecord
from refground.evaluate.runner import read_predictions

SIZE_WORDS = {"large": "large/big", "big": "large/big", "small": "small/little",
              "little": "small/little", "medium": "medium"}


def size_word(expression: str) -> str | None:
    words = [SIZE_WORDS[w] for w in expression.lower().split() if w in SIZE_WORDS]
    return words[0] if words else None


def load_records(path: Path) -> list[EvalRecord]:
    return read_predictions(path / "predictions.jsonl" if path.is_dir() else path)


ROWS: dict[str, Callable[[EvalRecord], bool]] = {
    "all": lambda r: True,
    "attribute, no size word": lambda r: r.expression_type == "attribute"
    and size_word(r.expression) is None,
    "attribute, a size word": lambda r: r.expression_type == "attribute"
    and size_word(r.expression) is not None,
    **{f"any type, {word}": (lambda r, w=word: size_word(r.expression) == w)
       for word in dict.fromkeys(SIZE_WORDS.values())},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    runs = {str(path): load_records(path) for path in args.runs}
    width = max(len(name) for name in ROWS)
    print(" " * width + "".join(f" | {Path(name).name[-24:]:>24}" for name in runs))
    for row, wanted in ROWS.items():
        cells = []
        for records in runs.values():
            chosen = [r for r in records if wanted(r)]
            hits = sum(r.iou >= 0.5 for r in chosen)
            cells.append(f"{100 * hits / len(chosen):5.1f}% of {len(chosen):5d}" if chosen
                         else "-")
        print(f"{row:<{width}}" + "".join(f" | {cell:>24}" for cell in cells))


if __name__ == "__main__":
    main()
