"""Run a method over samples, write ``predictions.jsonl`` as it goes, and compute metrics.

Predictions are appended batch by batch, so an interrupted evaluation loses at most one batch:
``resume=True`` reads what is already there (dropping a half-written last line) and predicts only
the samples still missing. Metrics are always computed from the records, never accumulated
separately, so a resumed run reports exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from refground.errors import DatasetError
from refground.evaluate.metrics import compute_metrics
from refground.evaluate.records import EvalRecord
from refground.methods.base import Method
from refground.types import Sample

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, Any]
    records: tuple[EvalRecord, ...]


def batched(items: Sequence[Sample], size: int) -> Iterator[Sequence[Sample]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_predictions(path: Path) -> list[EvalRecord]:
    """Read complete records from a predictions file, ignoring a torn final line."""
    records = []
    with open(path, encoding="utf-8") as stream:
        lines = stream.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(EvalRecord.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            if number == len(lines):  # the last line of an interrupted write
                break
            raise DatasetError(f"{path}:{number}: not a prediction record ({exc})") from exc
    return records


def _rewrite(path: Path, records: Sequence[EvalRecord]) -> None:
    """Atomically replace ``path`` with exactly ``records`` (drops torn or foreign lines)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record.to_json()) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def evaluate(
    method: Method,
    samples: Sequence[Sample],
    out_dir: Path | None = None,
    batch_size: int = 16,
    resume: bool = False,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate ``method`` on ``samples``; with ``out_dir`` write predictions and metrics there."""
    wanted = {s.sample_id for s in samples}
    done: dict[str, EvalRecord] = {}
    predictions_path = out_dir / PREDICTIONS_FILE if out_dir is not None else None
    if predictions_path is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume and predictions_path.exists():
            done = {r.sample_id: r for r in read_predictions(predictions_path)
                    if r.sample_id in wanted}
        _rewrite(predictions_path, list(done.values()))

    todo = [s for s in samples if s.sample_id not in done]
    stream = open(predictions_path, "a", encoding="utf-8") if predictions_path else None  # noqa: SIM115
    try:
        with tqdm(total=len(samples), initial=len(done), disable=not progress,
                  desc=f"eval {method.name}", unit="sample") as bar:
            for batch in batched(todo, batch_size):
                predictions = method.predict(batch)
                if len(predictions) != len(batch):
                    raise RuntimeError(
                        f"method {method.name} returned {len(predictions)} predictions for "
                        f"{len(batch)} samples")
                for sample, prediction in zip(batch, predictions, strict=True):
                    record = EvalRecord.from_prediction(sample, prediction)
                    done[record.sample_id] = record
                    if stream is not None:
                        stream.write(json.dumps(record.to_json()) + "\n")
                if stream is not None:
                    stream.flush()
                bar.update(len(batch))
    finally:
        if stream is not None:
            stream.close()

    records = tuple(done[s.sample_id] for s in samples)
    metrics = compute_metrics(records)
    if run_info:
        metrics["run"] = run_info
    if out_dir is not None:
        tmp = out_dir / (METRICS_FILE + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir / METRICS_FILE)
    return EvalResult(metrics, records)
