"""Rich tables of metrics, for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

HEADLINE = ("acc@0.5", "acc@0.75", "acc@0.9", "miou")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def comparison_table(runs: Mapping[str, Mapping[str, Any]], title: str = "") -> Table:
    """One row per run: n, Acc@0.5/0.75/0.9 and mIoU in percent."""
    table = Table(title=title or None)
    table.add_column("method")
    table.add_column("n", justify="right")
    for key in HEADLINE:
        table.add_column(key.replace("acc", "Acc").replace("miou", "mIoU"), justify="right")
    for name, metrics in runs.items():
        table.add_row(name, str(metrics["n"]), *(_percent(metrics[k]) for k in HEADLINE))
    return table


def breakdown_table(metrics: Mapping[str, Any], key: str, title: str) -> Table:
    """Acc@0.5 and mIoU per group of one breakdown (``by_type``, ``by_distractors``, ...)."""
    table = Table(title=title)
    table.add_column(key.removeprefix("by_"))
    table.add_column("n", justify="right")
    table.add_column("Acc@0.5", justify="right")
    table.add_column("mIoU", justify="right")
    for group, values in metrics.get(key, {}).items():
        table.add_row(group, str(values["n"]), _percent(values["acc@0.5"]),
                      _percent(values["miou"]))
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
