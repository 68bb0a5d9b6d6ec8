"""``refground export``: a training run's checkpoint as a shippable model with its record.

A shipped model is what ``-o checkpoint=NAME`` loads: ``method.json`` and ``model.safetensors``
(the trainable weights cast to ``dtype``, float16 by default: half the wheel, and the SynthRef
models lose nothing measurable), plus ``training.json``, the record anyone needs to reproduce
it -- the data recipe, the exact command, the run's full config, its wall time and steps, the
validation curve, the export step and, when given, the test metrics of ``refground eval``
runs on the exported model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from refground.data.synth.writer import rendering_record
from refground.errors import ConfigError
from refground.methods import build_method
from refground.methods.trainable import METHOD_FILE, WEIGHTS_FILE, TrainableMethod
from refground.train.checkpoint import resolve_checkpoint
from refground.vision.shipped import parse_dtype

RECORD_FILE = "training.json"


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def export_run(run: Path, out: Path, *, checkpoint: str = "best", dtype: str = "float16",
               data_recipe: str, command: str, evaluations: Mapping[str, Path] | None = None,
               what: str | None = None) -> dict[str, Any]:
    """Write ``out`` (method files in ``dtype`` + ``training.json``) from ``run``'s
    ``checkpoints/<checkpoint>``; returns the record."""
    source = resolve_checkpoint(run / "checkpoints" / checkpoint)
    method = build_method(read_json(source / METHOD_FILE, "method file")["method"],
                          checkpoint=source, device="cpu")
    if not isinstance(method, TrainableMethod):
        raise ConfigError(f"{source} is not a trainable method's checkpoint")
    cast = parse_dtype(dtype)
    method.model.to(cast)
    method.save_pretrained(out)
    method.model.to(torch.float32)
    summary = read_json(run / "summary.json", "run summary")
    record: dict[str, Any] = {
        "what": what or f"{method.name} trained with refground train",
        "data": data_recipe,
        "command": command,
        "export": (f"refground export --run {run} --checkpoint {checkpoint} --dtype {dtype} "
                   f"--out {out} (weights cast to {dtype})"),
        "config": yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")),
        "checkpoint": checkpoint,
        "steps": summary["steps"],
        "epochs": summary["epochs_completed"],
        "wall_clock_s": summary["seconds"],
        "train_samples_per_second": summary["train_samples_per_second"],
        "processes": summary["processes"],
        "best_val": {"metric": summary["best_metric"], "step": summary["best_step"]},
        "val_curve": [{k: entry[k] for k in ("step", "epoch", "acc@0.5", "miou") if k in entry}
                      for entry in summary["history"]],
        "size_bytes": (out / WEIGHTS_FILE).stat().st_size,
    }
    root = (record["config"].get("data") or {}).get("root")
    if root is not None:  # the drawing it learned from (domain randomisation: what it holds out)
        record["rendering"] = rendering_record(root)
    for split, directory in (evaluations or {}).items():
        metrics = read_json(Path(directory) / "metrics.json", "evaluation metrics")
        record.setdefault("test", {})[split] = {k: metrics[k] for k in ("n", "acc@0.5", "miou")
                                                if k in metrics}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
