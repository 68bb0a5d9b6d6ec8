"""Run a method over samples, write ``predictions.jsonl`` as it goes, and compute metrics.

Predictions are appended batch by batch, so an interrupted evaluation loses at most one batch:
``resume=True`` reads what is already there (dropping a half-written last line) and predicts only
the samples still missing. Metrics are always computed from the records, never accumulated
separately, so a resumed run reports exactly what an uninterrupted one would.

Resuming is only right when the records come from the same run: another method's, options' or
split's predictions would be kept under this run's name. So every run directory holds
``run.json``, the run's identity (method, options, proposer, dataset, split, data root), written
before the first record, and ``resume`` refuses a directory whose identity differs, saying what
differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from refground.errors import ConfigError, DatasetError
from refground.evaluate.metrics import compute_metrics
from refground.evaluate.records import EvalRecord
from refground.methods.base import Method
from refground.types import Sample

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"


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


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def _rewrite(path: Path, records: Sequence[EvalRecord]) -> None:
    """Atomically replace ``path`` with exactly ``records`` (drops torn or foreign lines)."""
    _atomic_write(path, "".join(json.dumps(record.to_json()) + "\n" for record in records))


#: Recorded in ``run.json`` for the reader, but not part of what must match to resume.
NOT_COMPARED = frozenset({"skipped_invalid"})


def _atomic_json(path: Path, value: Any) -> None:
    _atomic_write(path, json.dumps(value, indent=2) + "\n")


def identity_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: stored -> current`` for every identity field that differs."""
    return [f"{key}: {json.dumps(stored.get(key))} -> {json.dumps(current.get(key))}"
            for key in sorted((set(stored) | set(current)) - NOT_COMPARED)
            if stored.get(key) != current.get(key)]


def check_resumable(out_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume ``out_dir`` unless its ``run.json`` names the same run."""
    run_path = out_dir / RUN_FILE
    if not (out_dir / PREDICTIONS_FILE).exists():
        return  # nothing to keep: a fresh start
    if not run_path.is_file():
        raise ConfigError(
            f"cannot resume {out_dir}: it has predictions but no {RUN_FILE} saying which "
            "method, options and split made them; start afresh (drop --resume) or use "
            "another --out")
    try:
        stored = json.loads(run_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{run_path}: not valid JSON ({exc})") from exc
    if not isinstance(stored, dict):
        raise DatasetError(f"{run_path}: expected a JSON object")
    differences = identity_differences(stored, identity)
    if differences:
        raise ConfigError(
            f"cannot resume {out_dir}: its predictions come from another run ("
            + "; ".join(differences) + "); rerun with the same settings, or drop --resume "
            "(which starts afresh) or use another --out")


def run_identity(method: Method, run_info: dict[str, Any] | None) -> dict[str, Any]:
    """What must match for records to be reused: the caller's description of the run (the CLI
    gives method, options, proposer, dataset, split and data root), else the method's name."""
    identity = {"method": method.name}
    identity.update(json.loads(json.dumps(run_info or {}, default=str)))  # as stored in JSON
    return identity


def evaluate(
    method: Method,
    samples: Sequence[Sample],
    out_dir: Path | None = None,
    batch_size: int = 16,
    resume: bool = False,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate ``method`` on ``samples``; with ``out_dir`` write predictions and metrics there.

    ``run_info`` identifies the run (see the module doc): it is stored in ``run.json`` and
    ``metrics.json``, and ``resume`` continues only a directory made with the same one.
    """
    wanted = {s.sample_id for s in samples}
    done: dict[str, EvalRecord] = {}
    identity = run_identity(method, run_info)
    predictions_path = out_dir / PREDICTIONS_FILE if out_dir is not None else None
    if predictions_path is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            check_resumable(out_dir, identity)
            if predictions_path.exists():
                done = {r.sample_id: r for r in read_predictions(predictions_path)
                        if r.sample_id in wanted}
        _atomic_json(out_dir / RUN_FILE, identity)  # before any record it vouches for
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
    metrics["run"] = identity
    if out_dir is not None:
        _atomic_json(out_dir / METRICS_FILE, metrics)
    return EvalResult(metrics, records)
