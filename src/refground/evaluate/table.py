"""How metrics are shown: their labels, the breakdowns reported, percentages; and the rich
tables that print them in the terminal.

``refground report`` (:mod:`refground.viz.report`) renders the same breakdowns, labels and
percentages in Markdown, so a run's terminal table and its report agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from refground.evaluate.metrics import QUALITY_METRICS

#: The columns of every results table: the papers' Acc@k thresholds and mIoU.
HEADLINE = QUALITY_METRICS
LABELS = {key: key.replace("acc", "Acc").replace("miou", "mIoU") for key in QUALITY_METRICS}
#: Breakdowns reported per group: (metrics key, what the groups are).
BREAKDOWNS = (("by_type", "expression type"), ("by_distractors", "same-category distractors"))
#: The metrics shown for each group of a breakdown.
BREAKDOWN_METRICS = ("acc@0.5", "miou")


def percent(value: float) -> str:
    """A fraction as a percentage with one decimal, as every table prints it."""
    return f"{100 * value:.1f}"


def comparison_table(runs: Mapping[str, Mapping[str, Any]], title: str = "") -> Table:
    """One row per run: n, Acc@0.5/0.75/0.9 and mIoU in percent."""
    table = Table(title=title or None)
    table.add_column("method")
    table.add_column("n", justify="right")
    for key in HEADLINE:
        table.add_column(LABELS[key], justify="right")
    for name, metrics in runs.items():
        table.add_row(name, str(metrics["n"]), *(percent(metrics[k]) for k in HEADLINE))
    return table


def breakdown_table(metrics: Mapping[str, Any], key: str, title: str) -> Table:
    """The :data:`BREAKDOWN_METRICS` per group of one breakdown (``by_type``, ...) of one run."""
    table = Table(title=title)
    table.add_column(key.removeprefix("by_"))
    table.add_column("n", justify="right")
    for metric in BREAKDOWN_METRICS:
        table.add_column(LABELS[metric], justify="right")
    for group, values in metrics.get(key, {}).items():
        table.add_row(group, str(values["n"]), *(percent(values[m]) for m in BREAKDOWN_METRICS))
    return table


def graph_use_line(name: str, metrics: dict[str, Any]) -> str:
    """One line saying what a structured method dropped of the graphs, so it is never silent."""
    dropped = metrics["dropped_relations"] + metrics["dropped_modifiers"]
    line = (f"{name}: dropped {metrics['dropped_relations']} relation(s) and "
            f"{metrics['dropped_modifiers']} modifier(s) it could not use, in "
            f"{metrics['samples_with_dropped_parts']} of {metrics['n']} samples")
    if dropped:
        top = list(metrics["dropped_by_name"].items())[:5]
        line += " (most: " + ", ".join(f"{part} x{count}" for part, count in top) + ")"
    unstructured = metrics["unstructured_samples"]
    if unstructured:
        line += f"; {unstructured} sample(s) had no graph and used the whole expression"
    return line
