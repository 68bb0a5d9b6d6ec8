"""Compare evaluation runs: a Markdown table of their ``metrics.json`` files and grouped bar
charts (one bar per run), overall and per breakdown (expression type, same-category distractors).

Markdown because it pastes into an issue, a pull request or a paper draft unchanged; numbers are
percentages with one decimal, as the terminal tables print them, and the best run of each
column is bold. Every file is validated first: a file that is not a ``metrics.json`` is named
in the error instead of failing halfway through a table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refground.errors import InputError
from refground.evaluate.runner import METRICS_FILE
from refground.evaluate.table import BREAKDOWN_METRICS, BREAKDOWNS, HEADLINE, LABELS, percent
from refground.viz.plotting import new_figure, save_png


@dataclass(frozen=True)
class Run:
    """One evaluation run: its display name, where its metrics came from, and the metrics."""

    name: str
    path: Path
    metrics: Mapping[str, Any]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


def _check_summary(path: Path, where: str, summary: object) -> None:
    if not isinstance(summary, dict):
        raise InputError(f"{path}: {where or 'the file'} must be a JSON object of metrics, got "
                         f"{type(summary).__name__}; is it a {METRICS_FILE} written by "
                         "`refground eval`?")
    for key in ("n", *HEADLINE):
        if key not in summary:
            raise InputError(f"{path}: {where}{'.' if where else ''}{key} is missing; is it a "
                             f"{METRICS_FILE} written by `refground eval`?")
        if not _is_number(summary[key]):
            raise InputError(f"{path}: {where}{'.' if where else ''}{key} must be a number, got "
                             f"{summary[key]!r}")


def load_metrics(path: Path) -> dict[str, Any]:
    """A ``metrics.json`` (or a run directory holding one), validated: headline numbers
    present and numeric, breakdowns (when present) shaped like the headline."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise InputError(f"{path}: no such metrics file")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    _check_summary(path, "", metrics)
    for key, _ in BREAKDOWNS:
        groups = metrics.get(key, {})
        if not isinstance(groups, dict):
            raise InputError(f"{path}: {key} must be an object of groups, got "
                             f"{type(groups).__name__}")
        for group, summary in groups.items():
            _check_summary(path, f"{key}.{group}", summary)
    return metrics


def run_names(paths: Sequence[Path], names: Sequence[str] = ()) -> list[str]:
    """``names`` when given (one per file), else each run's directory name, made unique by
    adding parent directories where two runs share one."""
    if names:
        if len(names) != len(paths):
            raise InputError(f"--names gives {len(names)} names for {len(paths)} metrics files")
        return list(names)
    dirs = [(p if p.is_dir() else p.parent).resolve() for p in paths]
    depth = 1
    while True:
        chosen = ["/".join(d.parts[-depth:]) for d in dirs]
        if len(set(chosen)) == len(chosen) or depth > max(len(d.parts) for d in dirs):
            return chosen
        depth += 1


def load_runs(paths: Sequence[Path], names: Sequence[str] = ()) -> list[Run]:
    """Validated runs, in the order given."""
    if not paths:
        raise InputError("give at least one metrics.json (or run directory) to report on")
    return [Run(name, Path(path), load_metrics(Path(path)))
            for name, path in zip(run_names(paths, names), paths, strict=True)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _bold_best(values: Sequence[float | None]) -> list[str]:
    """Percentages, the highest in bold when several runs are compared and they differ."""
    present = [percent(v) for v in values if v is not None]
    best = max(v for v in values if v is not None) if len(set(present)) > 1 else None
    cells = []
    for value in values:
        if value is None:
            cells.append("-")
        else:
            text = percent(value)
            cells.append(f"**{text}**" if best is not None and percent(best) == text else text)
    return cells


def headline_table(runs: Sequence[Run]) -> list[str]:
    lines = [_row(["run", "n", *(LABELS[k] for k in HEADLINE)]),
             _row(["---", "---:", *("---:" for _ in HEADLINE)])]
    columns = [_bold_best([run.metrics[key] for run in runs]) for key in HEADLINE]
    for index, run in enumerate(runs):
        lines.append(_row([run.name, str(run.metrics["n"]), *(c[index] for c in columns)]))
    return lines


def groups_of(runs: Sequence[Run], key: str) -> list[str]:
    """Every group any run reports for breakdown ``key``, in the runs' order of appearance."""
    seen: dict[str, None] = {}
    for run in runs:
        for group in run.metrics.get(key, {}):
            seen.setdefault(group, None)
    return list(seen)


def breakdown_rows(runs: Sequence[Run], key: str, metric: str, what: str) -> list[str]:
    """Rows: groups; columns: runs; cells: ``metric`` in percent (n in the group column)."""
    lines = [_row([what, *(run.name for run in runs)]),
             _row(["---", *("---:" for _ in runs)])]
    for group in groups_of(runs, key):
        values = [run.metrics.get(key, {}).get(group, {}).get(metric) for run in runs]
        counts = sorted({run.metrics[key][group]["n"] for run in runs
                         if group in run.metrics.get(key, {})})
        label = f"{group} (n={'/'.join(str(c) for c in counts)})"
        lines.append(_row([label, *_bold_best(values)]))
    return lines


def markdown_report(runs: Sequence[Run], charts: Mapping[str, str] | None = None) -> str:
    """The whole report; ``charts`` maps a section (``overall``, ``by_type``, ...) to the
    relative path of its chart, linked under the section when given."""
    charts = charts or {}
    lines = ["# Run comparison", "",
             "Percent; the best run of each column in bold. Files: "
             + ", ".join(f"{run.name} = `{run.path}`" for run in runs), "",
             *headline_table(runs), ""]
    if "overall" in charts:
        lines += [f"![overall]({charts['overall']})", ""]
    for key, what in BREAKDOWNS:
        if not groups_of(runs, key):
            continue
        for metric in BREAKDOWN_METRICS:
            lines += [f"## {LABELS[metric]} by {what}", "",
                      *breakdown_rows(runs, key, metric, what), ""]
        if key in charts:
            lines += [f"![{key}]({charts[key]})", ""]
    return "\n".join(lines)


def grouped_bars(title: str, groups: Sequence[str], runs: Sequence[Run],
                 values: Sequence[Sequence[float | None]], path: Path) -> Path:
    """One cluster per group, one bar per run (``values[run][group]``, a fraction)."""
    figure = new_figure(max(5.0, 1.1 + 0.35 * len(groups) * (len(runs) + 1)), 3.8)
    axes = figure.add_subplot()
    width = 0.8 / len(runs)
    for index, (run, row) in enumerate(zip(runs, values, strict=True)):
        xs = [g + (index - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        heights = [100 * v if v is not None else 0.0 for v in row]
        bars = axes.bar(xs, heights, width, label=run.name)
        axes.bar_label(bars, labels=[percent(v) if v is not None else "-" for v in row],
                       fontsize=7, padding=1)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylim(0, 105)
    axes.set_ylabel("percent")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_png(figure, path)


def bar_charts(runs: Sequence[Run], out_dir: Path) -> dict[str, Path]:
    """``overall.png`` (the headline metrics) and, per breakdown any run reports,
    ``<breakdown>.png`` with Acc@0.5 per group."""
    charts = {"overall": grouped_bars(
        "headline metrics", [LABELS[k] for k in HEADLINE], runs,
        [[run.metrics[k] for k in HEADLINE] for run in runs], out_dir / "overall.png")}
    for key, what in BREAKDOWNS:
        groups = groups_of(runs, key)
        if groups:
            values = [[run.metrics.get(key, {}).get(g, {}).get("acc@0.5") for g in groups]
                      for run in runs]
            charts[key] = grouped_bars(f"Acc@0.5 by {what}", groups, runs, values,
                                       out_dir / f"{key}.png")
    return charts


def write_report(runs: Sequence[Run], out_dir: Path) -> tuple[Path, dict[str, Path]]:
    """``out_dir/report.md`` linking the charts written next to it."""
    charts = bar_charts(runs, out_dir)
    report = out_dir / "report.md"
    report.write_text(markdown_report(runs, {k: p.name for k, p in charts.items()}) + "\n",
                      encoding="utf-8")
    return report, charts
