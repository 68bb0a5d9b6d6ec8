"""bench/graph_use.py: what graph-resolve drops on a file of expressions, counted right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from refground.types import GraphUse

ROOT = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
    name = "bench_graph_use"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "graph_use.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bench = _load_bench()


def test_summary_counts_against_a_hand_count() -> None:
    uses = [GraphUse(used_relations=("left of",), dropped_relations=("holding",)),
            GraphUse(used_modifiers=("leftmost",), dropped_modifiers=("shiniest", "shiniest")),
            GraphUse()]
    summary = bench.Summary.of(uses)
    assert (summary.expressions, summary.with_drop, summary.relations, summary.modifiers) == (
        3, 2, 2, 3)
    assert summary.dropped_relations == {"holding": 1}
    assert summary.dropped_modifiers == {"shiniest": 2}
    row = summary.row("rules", 4)
    assert "1/2" in row and "2/3" in row and "shiniest x2" in row


@pytest.mark.parametrize(("pairs", "dropped"), [(4, 0), (0, 1)])
def test_relations_without_geometry_are_dropped_only_without_pair_scoring(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pairs: int, dropped: int) -> None:
    """The real method (shipped CLIP): "holding" has no geometry; pair scoring uses it."""
    gold = tmp_path / "set.jsonl"
    gold.write_text("\n".join(json.dumps({"expression": text}) for text in (
        "the man holding an umbrella", "the cup left of the plate", "the red circle")),
        encoding="utf-8")
    bench.main(["--gold", str(gold), "--backends", "rules", "--pair-candidates", str(pairs),
                "--boxes", "4"])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:2] == ["rules", str(pairs)]
    assert row[2] == f"{dropped}/3" and row[3] == f"{dropped}/2"
