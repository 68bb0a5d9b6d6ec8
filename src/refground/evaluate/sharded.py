"""Evaluation split across the processes of an Accelerate launch, with one-process numbers.

Training validates on every process at once (``refground train`` under ``accelerate
launch``): each predicts a shard, and the gathered records give the same metrics as
``refground eval`` on one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refground.errors import RefgroundError
from refground.evaluate.metrics import compute_metrics
from refground.evaluate.records import EvalRecord
from refground.evaluate.runner import batched
from refground.methods.base import Method
from refground.types import Sample


def evaluate_sharded(method: Method, samples: Sequence[Sample], accelerator: Any,
                     batch_size: int) -> dict[str, Any]:
    """Metrics over ``samples`` with each process predicting an interleaved shard.

    Shards are ``samples[rank::world]``: disjoint and complete, so no sample is counted twice
    (no padding to equal lengths). Records are gathered and put back in order before
    ``compute_metrics``, so every process returns the same numbers a 1-process run gives.
    Predictions run under ``accelerator.autocast()``, the precision the model trains in.
    """
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    indexed = list(enumerate(samples))[rank::world]
    local: list[tuple[int, dict[str, Any]]] = []
    with accelerator.autocast():
        for chunk in batched(indexed, batch_size):
            chunk_samples = [sample for _, sample in chunk]
            for (index, sample), prediction in zip(chunk, method.predict(chunk_samples),
                                                   strict=True):
                local.append((index, EvalRecord.from_prediction(sample, prediction).to_json()))
    gathered = gather_object(local) if world > 1 else local
    records = [EvalRecord.from_json(r) for _, r in sorted(gathered, key=lambda item: item[0])]
    if len(records) != len(samples):
        raise RefgroundError(f"sharded evaluation gathered {len(records)} records for "
                             f"{len(samples)} samples")
    return compute_metrics(records)
