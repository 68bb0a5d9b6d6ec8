"""Parsing throughput: one expression at a time vs batched, per backend.

    .venv/bin/python bench/parse_speed.py [--data /tmp/synth_lang --split train] [-n 1000]
        [--backends spacy rules] [--batch-size 256] [--processes 2]

* one-by-one -- ``parse(text)`` in a loop, as a method would without batching: spaCy runs its
  whole pipeline per call;
* batched -- ``parse_many(texts)``: spaCy's ``nlp.pipe`` in batches of ``--batch-size``;
* batched xP -- the same with ``processes=P`` worker processes (spaCy's ``n_process``; a
  process pool for the rules). Worth it only with many expressions and free cores.

Expressions come from a SynthRef split when ``--data`` is given, else from a built-in list of
RefCOCO-style phrases, repeated up to ``-n``. Parsers are loaded and warmed up before timing.
Prints sentences/s of each and the ratios to one-by-one, side by side.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refground.language import get_parser

BUILT_IN = (
    "man on left", "the girl looking at the table full of drinks", "second from the right",
    "the bigger of the two elephants", "guy in white shirt holding a bat", "far right zebra",
    "the cup left of the plate next to the laptop", "bowl at the very top", "left guy",
    "woman in red on the right", "the dog that is lying on the couch", "chair under the table",
)


def expressions(data: Path | None, split: str, count: int) -> list[str]:
    if data is None:
        texts: Sequence[str] = BUILT_IN
    else:
        from refground.data.synth import synthref_dataset

        texts = synthref_dataset(data).expressions(split)
    # distinct strings even when repeated, so no layer can answer from a cache
    return [f"{text} {index // len(texts)}" if index >= len(texts) else text
            for index, text in zip(range(count), itertools.cycle(texts))]


def rate(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="SynthRef root (optional)")
    parser.add_argument("--split", default="train")
    parser.add_argument("-n", type=int, default=1000, help="expressions to parse")
    parser.add_argument("--backends", nargs="+", default=["spacy", "rules"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    texts = expressions(args.data, args.split, args.n)
    source = f"SynthRef {args.split}" if args.data else "built-in phrases"
    print(f"{len(texts)} expressions ({source}); sentences/s, higher is better")
    header = (f"{'backend':<8} {'one-by-one':>11} {'batched':>9} "
              f"{f'batched x{args.processes}':>12} {'batched/one':>12} "
              f"{f'x{args.processes}/one':>9}")
    print(header)
    for backend in args.backends:
        expression_parser = get_parser(backend)
        expression_parser.parse_many(texts[:50])  # load and warm up
        single = rate(lambda p=expression_parser: [p.parse(t) for t in texts], len(texts))
        batched = rate(lambda p=expression_parser: p.parse_many(
            texts, batch_size=args.batch_size), len(texts))
        pooled = rate(lambda p=expression_parser: p.parse_many(
            texts, batch_size=args.batch_size, processes=args.processes), len(texts))
        print(f"{expression_parser.backend:<8} {single:>11.0f} {batched:>9.0f} {pooled:>12.0f} "
              f"{batched / single:>11.2f}x {pooled / single:>8.2f}x")


if __name__ == "__main__":
    main()
