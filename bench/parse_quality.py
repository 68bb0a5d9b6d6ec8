"""How close parsed scene graphs come to SynthRef's gold graphs, per parser backend.

    .venv/bin/python bench/parse_quality.py --data /tmp/synth_lang [--dataset synthref]
        [--split-by synth] [--split test] [--backends spacy rules] [--show-errors 5]

SynthRef stores each sentence's gold graph (``Sample.graph``), written in the canonical
vocabulary of :mod:`refground.language.lexicon`. Scores, micro-averaged over expressions:

* head F1 -- the multiset of entity heads of an expression vs the gold multiset;
* relation F1 -- multisets of (subject head, predicate, object head) triples;
* spatial F1 -- the set of spatial modifiers of entity 0 (the referent), exact strings;
* covered -- the share of expressions whose graph has at least one entity.

Prints one table per backend, overall and by expression type.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refground.data.refer import load_refer_split
from refground.language import get_parser
from refground.types import SceneGraph


@dataclass
class Counts:
    """True positives, predicted and gold totals of one F1."""

    tp: int = 0
    predicted: int = 0
    gold: int = 0

    def add(self, predicted: Iterable[Hashable], gold: Iterable[Hashable]) -> bool:
        ours, theirs = Counter(predicted), Counter(gold)
        self.tp += sum((ours & theirs).values())
        self.predicted += sum(ours.values())
        self.gold += sum(theirs.values())
        return ours == theirs

    @property
    def f1(self) -> float:
        total = self.predicted + self.gold
        return 2 * self.tp / total if total else 1.0


@dataclass
class Scores:
    heads: Counts = field(default_factory=Counts)
    relations: Counts = field(default_factory=Counts)
    spatial: Counts = field(default_factory=Counts)
    covered: int = 0
    n: int = 0


def heads(graph: SceneGraph) -> list[str]:
    return [entity.head for entity in graph.entities]


def triples(graph: SceneGraph) -> list[tuple[str, str, str]]:
    return [(graph.entities[r.subject].head, r.predicate, graph.entities[r.object].head)
            for r in graph.relations]


def referent_spatial(graph: SceneGraph) -> set[str]:
    return set(graph.entities[0].spatial) if graph.entities else set()


def score(parsed: Sequence[SceneGraph], gold: Sequence[SceneGraph], types: Sequence[str],
          texts: Sequence[str], show_errors: int) -> dict[str, Scores]:
    by_type: dict[str, Scores] = defaultdict(Scores)
    shown = 0
    for graph, truth, kind, text in zip(parsed, gold, types, texts, strict=True):
        wrong = False
        for key in ("all", kind):
            scores = by_type[key]
            same = [scores.heads.add(heads(graph), heads(truth)),
                    scores.relations.add(triples(graph), triples(truth)),
                    scores.spatial.add(referent_spatial(graph), referent_spatial(truth))]
            scores.covered += bool(graph.entities)
            scores.n += 1
            wrong = not all(same)
        if wrong and shown < show_errors:
            shown += 1
            print(f"  [{kind}] {text!r}\n    parsed: {heads(graph)} {triples(graph)} "
                  f"{sorted(referent_spatial(graph))}\n    gold:   {heads(truth)} "
                  f"{triples(truth)} {sorted(referent_spatial(truth))}")
    return dict(by_type)


def table(backend: str, scores: dict[str, Scores], seconds: float) -> str:
    rows = [f"backend {backend}: {scores['all'].n} expressions parsed in {seconds:.2f} s",
            f"  {'type':<12} {'n':>5} {'head F1':>8} {'rel F1':>8} {'spatial F1':>10} "
            f"{'covered':>8}"]
    for key in ["all", *sorted(k for k in scores if k != "all")]:
        s = scores[key]
        rows.append(f"  {key:<12} {s.n:>5} {s.heads.f1:>8.3f} {s.relations.f1:>8.3f} "
                    f"{s.spatial.f1:>10.3f} {s.covered / max(s.n, 1):>8.3f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="data root (refground synth)")
    parser.add_argument("--dataset", default="synthref")
    parser.add_argument("--split-by", default="synth")
    parser.add_argument("--split", default="test")
    parser.add_argument("--backends", nargs="+", default=["spacy", "rules"])
    parser.add_argument("--show-errors", type=int, default=0,
                        help="print up to N mismatching expressions per backend")
    args = parser.parse_args()

    samples = [s for s in load_refer_split(args.data, args.dataset, args.split_by, args.split)
               if s.graph is not None]
    if not samples:
        raise SystemExit(f"no gold graphs in {args.dataset} {args.split} (SynthRef has them)")
    texts = [s.expression for s in samples]
    gold = [s.graph for s in samples if s.graph is not None]
    types = [s.expression_type or "-" for s in samples]
    for backend in args.backends:
        expression_parser = get_parser(backend)
        start = time.perf_counter()
        parsed = expression_parser.parse_many(texts)
        seconds = time.perf_counter() - start
        scores = score(parsed, gold, types, texts, args.show_errors)
        print(table(expression_parser.backend, scores, seconds))


if __name__ == "__main__":
    main()
