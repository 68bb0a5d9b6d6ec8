"""The YAML a training run is described by, validated by pydantic before anything starts.

One file says everything a run depends on -- method and its options, data, optimiser,
schedule, loop settings, output directory, and (for ``refground tune``) the search space -- so
a checkpoint can store it and ``--resume`` can refuse to continue a different run.
Overrides from the command line use dotted keys: ``optim.lr=3e-4``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from refground.data.dataset import Dataset
from refground.devices import AUTO, device_spec
from refground.errors import ConfigError, validation_problems
from refground.evaluate.metrics import QUALITY_METRICS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SchemaT = TypeVar("SchemaT", bound=BaseModel)
Direction = Literal["maximize", "minimize"]


class DataConfig(_Strict):
    """The ``data:`` section: which :class:`~refground.data.Dataset` to train on, and which
    of its splits (and how many of their samples) training and validation read."""

    root: Path
    dataset: str = "synthref"
    split_by: str = "synth"
    train_split: str = "train"
    val_split: str = "val"
    images: Path | None = None
    #: The file format (a module of refground/data/formats); "refer" reads RefCOCO/+/g and
    #: SynthRef.
    format: str = "refer"
    train_limit: int | None = Field(None, ge=1)
    val_limit: int | None = Field(None, ge=1)

    def as_dataset(self) -> Dataset:
        return Dataset(self.root, self.dataset, self.split_by, self.images, self.format)


class OptimConfig(_Strict):
    """AdamW and the learning-rate schedule (stepped once per optimiser step)."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    warmup_fraction: float = Field(0.1, ge=0, lt=1)  # OneCycle's pct_start; cosine's warmup
    step_every: int = Field(1000, ge=1)  # "step": multiply the lr by gamma every N steps
    gamma: float = Field(0.1, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)


class LoopConfig(_Strict):
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop early (counts optimiser steps)
    batch_size: int = Field(32, ge=1)  # samples per optimiser step, over all processes
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    eval_every: int = Field(0, ge=0)  # optimiser steps; 0 = at the end of every epoch
    eval_batch_size: int = Field(32, ge=1)
    checkpoint_every: int = Field(0, ge=0)  # optimiser steps; 0 = with every validation
    log_every: int = Field(10, ge=1)
    max_bad_steps: int = Field(10, ge=0)  # non-finite loss/gradients tolerated before stopping
    #: Read the frozen parts' outputs from a per-dataset cache (built on first use, see
    #: refground.vision.feature_cache) instead of decoding images and running them each step.
    feature_cache: bool = True
    #: "auto" (CUDA when available, else the CPU), "cpu", "cuda", "cuda:N" or "mps"; checked
    #: against the machine when training starts, so a config written on a GPU machine loads
    #: anywhere. null (older configs) means "auto".
    device: str = AUTO
    #: The validation metric that picks ``checkpoints/best`` (a key of metrics.json) and which
    #: way is better; ``tune.metric`` is the search's own objective.
    best_metric: str = "acc@0.5"
    best_direction: Direction = "maximize"

    @field_validator("device", mode="before")
    @classmethod
    def _device_form(cls, value: Any) -> str:
        return device_spec(value)

    @field_validator("best_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in QUALITY_METRICS:
            raise ValueError(f"unknown metric {value!r}; choose one of "
                             f"{', '.join(QUALITY_METRICS)}")
        return value


class ParamSpace(_Strict):
    """One searched hyperparameter: a float/int range or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        return self


class TuneConfig(_Strict):
    trials: int = Field(10, ge=1)
    metric: str = "acc@0.5"
    direction: Direction = "maximize"
    pruner: Literal["median", "none"] = "median"
    storage: str | None = None  # default: sqlite:///<out>/tune/study.db
    study_name: str = "refground"
    space: dict[str, ParamSpace] = Field(default_factory=dict)


class TrainConfig(_Strict):
    method: str
    options: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    train: LoopConfig = LoopConfig()
    out: Path = Path("runs/train")
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(f"train.batch_size ({self.train.batch_size}) must be a multiple of "
                             f"train.grad_accum ({self.train.grad_accum})")
        return self

    @model_validator(mode="after")
    def _best_checkpoint_moved(self) -> TrainConfig:
        """Configs written before ``train.best_metric`` existed chose the best checkpoint by
        ``tune.metric`` / ``tune.direction``; where those differ from the defaults now used,
        say where the setting went rather than silently choosing by another metric."""
        loop, tune = self.train, self.tune
        if tune is None or {"best_metric", "best_direction"} & loop.model_fields_set:
            return self
        if (tune.metric, tune.direction) != (loop.best_metric, loop.best_direction):
            raise ValueError(
                f"tune.metric/tune.direction ({tune.metric}, {tune.direction}) no longer choose "
                f"the best checkpoint: train.best_metric/train.best_direction do (default "
                f"{loop.best_metric}, {loop.best_direction}). Set train.best_metric: "
                f"{tune.metric} and train.best_direction: {tune.direction} to keep choosing "
                "it as before, or set train.best_metric to keep the default")
        return self

    def run_identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption. Out, tune and which
        checkpoint is kept as best may (they do not change the weights), and so may the
        device: a run started on a GPU can be resumed on the CPU."""
        dump = self.model_dump(mode="json", exclude={
            "out": True, "tune": True, "train": {"best_metric": True, "best_direction": True}})
        if dump["data"]["format"] == "refer":  # the format runs had before it was a setting
            del dump["data"]["format"]
        return without_device(dump)


def without_device(identity: dict[str, Any]) -> dict[str, Any]:
    """A run identity without ``train.device`` and ``options.device`` (older checkpoints
    stored them): where a run computes is no part of which run it is."""
    identity = copy.deepcopy(identity)
    for section in ("train", "options"):
        if isinstance(identity.get(section), dict):
            identity[section].pop("device", None)
    return identity


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``a.b.c = value`` (intermediate dicts created as needed)."""
    result = copy.deepcopy(data)
    node = result
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return result


def build_config(data: dict[str, Any], overrides: dict[str, Any] | None = None,
                 source: str = "<config>", schema: type[SchemaT] = TrainConfig) -> SchemaT:  # type: ignore[assignment]
    """``data`` with dotted ``overrides`` applied, validated as ``schema`` (a training run's
    config unless told otherwise, e.g. the detector's)."""
    for key, value in (overrides or {}).items():
        data = set_dotted(data, key, value)
    try:
        return schema(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_problems(exc)}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                schema: type[SchemaT] = TrainConfig) -> SchemaT:  # type: ignore[assignment]
    """Read and validate a training YAML; every problem is reported with its dotted field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (method:, data:, optim:, train:, ...)")
    return build_config(data, overrides, str(path), schema)


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False))
