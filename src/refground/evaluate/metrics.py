"""Grounding metrics: Acc@k (share of samples with IoU >= k), mean IoU, and breakdowns.

Acc@0.5 is the headline number of REC papers. Breakdowns answer "where does it fail": by
expression type (SynthRef records it), by referent category, and by how many other objects of
the referent's category are in the image (the classic difficulty axis of RefCOCO testA/testB).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from refground.evaluate.records import EvalRecord
from refground.types import GraphUse

THRESHOLDS = (0.5, 0.75, 0.9)
#: The overall quality numbers of :func:`compute_metrics` a run can pick its best checkpoint by.
QUALITY_METRICS = (*(f"acc@{threshold}" for threshold in THRESHOLDS), "miou")


def summarize(ious: Sequence[float], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Count, Acc@t for each threshold and mean IoU of a list of per-sample IoUs."""
    n = len(ious)
    summary: dict[str, Any] = {"n": n}
    for threshold in thresholds:
        hits = sum(1 for value in ious if value >= threshold)
        summary[f"acc@{threshold}"] = hits / n if n else 0.0
    summary["miou"] = sum(ious) / n if n else 0.0
    return summary


def _breakdown(records: Sequence[EvalRecord], key: Callable[[EvalRecord], str | None]
               ) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for record in records:
        group = key(record)
        if group is not None:
            groups[group].append(record.iou)
    return {name: summarize(groups[name]) for name in sorted(groups)}


def distractor_bucket(count: int) -> str:
    return str(count) if count < 3 else "3+"


def graph_use_counts(uses: Sequence[GraphUse]) -> dict[str, Any]:
    """What structured methods dropped of the scene graphs, so no fallback goes unseen:
    totals, samples affected, and how often each predicate / modifier was dropped."""
    dropped_names: Counter[str] = Counter()
    for use in uses:
        dropped_names.update(f"relation: {name}" for name in use.dropped_relations)
        dropped_names.update(f"modifier: {name}" for name in use.dropped_modifiers)
    return {
        "dropped_relations": sum(len(u.dropped_relations) for u in uses),
        "dropped_modifiers": sum(len(u.dropped_modifiers) for u in uses),
        "used_relations": sum(len(u.used_relations) for u in uses),
        "used_modifiers": sum(len(u.used_modifiers) for u in uses),
        "samples_with_dropped_parts": sum(1 for u in uses if u.dropped_relations
                                          or u.dropped_modifiers),
        "unstructured_samples": sum(1 for u in uses if not u.structured),
        "dropped_by_name": dict(dropped_names.most_common()),
    }


def compute_metrics(records: Sequence[EvalRecord]) -> dict[str, Any]:
    """The content of ``metrics.json``: overall numbers and the three breakdowns."""
    metrics = summarize([r.iou for r in records])
    metrics["fallbacks"] = sum(1 for r in records if r.fallback)
    uses = [r.graph_use for r in records if r.graph_use is not None]
    if uses:
        metrics.update(graph_use_counts(uses))
    metrics["by_type"] = _breakdown(records, lambda r: r.expression_type)
    metrics["by_category"] = _breakdown(records, lambda r: r.category)
    metrics["by_distractors"] = _breakdown(records, lambda r: distractor_bucket(r.distractors))
    return metrics
