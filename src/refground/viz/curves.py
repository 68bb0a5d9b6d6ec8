"""Training curves from a run's ``metrics.jsonl``: train loss, learning rate and a validation
metric against the optimiser step, as one PNG with three panels.

TensorBoard shows the same scalars interactively; a PNG is what goes into a report or an issue,
and it needs no server. The log may be read while training still appends to it: an unfinished
last line (no newline yet) is left out, any other malformed line is an error naming the line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refground.errors import InputError
from refground.viz.plotting import new_figure, save_png

LOG_FILE = "metrics.jsonl"

Series = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Curves:
    """(step, value) pairs of each panel, in log order."""

    loss: Series
    lr: Series
    val: Series
    val_metric: str


def read_run_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; each must be an object with ``kind`` and ``step``."""
    if path.is_dir():
        path = path / LOG_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; --run must be a training run's output directory "
                         f"(the config's out:), which holds {LOG_FILE}")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        unfinished = number == len(lines)  # no newline after it: still being written
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if unfinished:
                break
            raise InputError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
        if (not isinstance(record, dict) or record.get("kind") not in ("train", "val")
                or not isinstance(record.get("step"), int)):
            raise InputError(f"{path}:{number}: a record needs kind 'train' or 'val' and an "
                             f"integer step, got {line[:80]!r}")
        records.append(record)
    return records


def _series(records: Sequence[dict[str, Any]], kind: str, key: str) -> Series:
    return tuple((int(r["step"]), float(r[key])) for r in records
                 if r["kind"] == kind and isinstance(r.get(key), int | float)
                 and not isinstance(r.get(key), bool) and math.isfinite(r[key]))


def curves_from_log(records: Sequence[dict[str, Any]], val_metric: str = "acc@0.5") -> Curves:
    return Curves(loss=_series(records, "train", "loss"), lr=_series(records, "train", "lr"),
                  val=_series(records, "val", val_metric), val_metric=val_metric)


def _panel(axes: Any, series: Series, title: str, ylabel: str, marker: str = "") -> None:
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if not series:
        axes.text(0.5, 0.5, "no records yet", ha="center", va="center",
                  transform=axes.transAxes, color="gray")
        return
    steps, values = zip(*series, strict=True)
    axes.plot(steps, values, marker=marker)


def plot_curves(curves: Curves, out: Path, title: str = "") -> Path:
    """Write the three panels to ``out`` (PNG); the best validation point is starred."""
    figure = new_figure(13.0, 3.6)
    loss_axes, lr_axes, val_axes = figure.subplots(1, 3)
    _panel(loss_axes, curves.loss, "train loss", "loss")
    _panel(lr_axes, curves.lr, "learning rate", "lr")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    val_title = f"val {curves.val_metric}"
    if curves.val:
        step, best = max(curves.val, key=lambda point: point[1])
        val_title += f" (best {best:.3f} at step {step})"
    _panel(val_axes, curves.val, val_title, curves.val_metric, marker="o")
    if curves.val:
        val_axes.plot([step], [best], marker="*", markersize=12, color="tab:red")
    if title:
        figure.suptitle(title)
    return save_png(figure, out)


def training_curves(run: Path, out: Path | None = None, val_metric: str = "acc@0.5"
                    ) -> tuple[Path, Curves]:
    """Read ``run/metrics.jsonl`` (``run`` may also be the file itself) and write its curves,
    by default to ``curves.png`` next to the log."""
    log = run if run.is_file() else run / LOG_FILE
    curves = curves_from_log(read_run_log(log), val_metric)
    if not curves.loss and not curves.val:
        raise InputError(f"{log}: no train loss or val {val_metric} records to plot yet")
    folder = log.parent
    target = out if out is not None else folder / "curves.png"
    return plot_curves(curves, target, title=folder.resolve().name), curves
