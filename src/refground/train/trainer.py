"""The training loop every trainable method shares, on one process or many (Accelerate).

``Trainer(config).fit()`` builds the method named in the config, then repeats: load a
micro-batch in a worker process, forward under the configured precision, ``method.loss``,
backward (gradients synchronised across processes on the last micro-batch of a step), clip,
AdamW step, scheduler step. It validates with the evaluation metrics, keeps ``best`` and
``last`` checkpoints, and logs to a progress bar, ``metrics.jsonl`` and TensorBoard.

Determinism is what makes ``--resume`` exact: model init and dropout draw from the seeded
global RNG (saved in every checkpoint), the data order is a function of (seed, epoch) alone
(``train/data.py``), and checkpoints are taken only between optimiser steps.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from refground.devices import AUTO, parse_device, resolve_device, same_device
from refground.errors import ConfigError, RefgroundError
from refground.evaluate.sharded import evaluate_sharded
from refground.methods import build_method, trainable_methods
from refground.methods.trainable import TrainableMethod, cache_features, move_batch
from refground.train.checkpoint import (
    CheckpointError,
    read_trainer_state,
    resolve_checkpoint,
    write_checkpoint,
)
from refground.train.config import (
    OptimConfig,
    TrainConfig,
    save_config,
    without_device,
)
from refground.train.data import StepPlan, epoch_loader

ValidationHook = Callable[[int, dict[str, Any]], None]


class TrainingDivergedError(RefgroundError):
    """Too many optimiser steps had a non-finite loss or gradient."""


@dataclass
class TrainState:
    """Counters saved with every checkpoint; ``step`` counts optimiser steps."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    bad_steps: int = 0
    best_metric: float | None = None  # the best validation value so far (of ``best_for``)
    best_step: int | None = None
    #: What ``best_metric`` measures, "<direction> <metric>" (train.best_direction and
    #: best_metric). A resume may change them; the old best is then no yardstick for the new
    #: criterion, and the next validation becomes the best. None: a checkpoint from before
    #: the setting existed (its config guaranteed the criterion it resumes with).
    best_for: str | None = None


@dataclass(frozen=True)
class TrainSummary:
    out: str
    steps: int
    epochs_completed: int
    best_metric: float | None
    best_step: int | None
    last_metrics: dict[str, Any] | None
    bad_steps: int
    seconds: float
    train_samples_per_second: float
    processes: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)


# --- optimiser and schedule -----------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable weights; biases and norm scales get no weight decay."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step learning-rate schedule; ``onecycle`` peaks at ``optim.lr``."""
    if optim.schedule == "onecycle":
        total = max(total_steps, 4)  # each phase needs at least two steps
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=optim.lr, total_steps=total,
            pct_start=min(max(optim.warmup_fraction, 2 / total), 0.5))
    if optim.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, optim.step_every, optim.gamma)
    warmup = int(optim.warmup_fraction * total_steps)
    if optim.schedule == "cosine":
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total_steps - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    else:
        def factor(step: int) -> float:
            return min(1.0, (step + 1) / warmup) if warmup else 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- RNG -------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- logging --------------------------------------------------------------------------------


class RunLog:
    """``metrics.jsonl`` (+ TensorBoard when installed), written by the main process only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int | None) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the [train] extra; JSONL is always written
            return
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop lines a killed run wrote after its last checkpoint; they will be redone."""
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a torn last line
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _reset_single_process_state() -> None:
    """Let one process run several trainings with different precisions (tests, tuning).

    Accelerate keeps its state in a process-wide singleton that refuses a second
    ``mixed_precision``; outside a distributed launch there is nothing to keep, so reset it.
    """
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


# --- the trainer ----------------------------------------------------------------------------


def training_device(accelerator: Any, requested: torch.device, spec: str) -> torch.device:
    """This process's training device: Accelerate's, checked against ``train.device``.

    ``auto`` takes what Accelerate chose (``accelerate launch --cpu`` included). Accelerate
    puts a single process on ``cuda`` (the current GPU): ``cuda:N`` makes GPU N the current
    one. Launched on several processes, each gets the GPU Accelerate assigns it, so an index
    there is refused rather than ignored.
    """
    device = torch.device(accelerator.device)
    if device.type != requested.type:
        if parse_device(spec) is None:  # auto
            return device
        raise ConfigError(f"train.device={spec!r} asks for {requested.type}, but Accelerate "
                          f"placed this process on {device}; check the accelerate launch "
                          "options (--cpu) or set train.device to 'auto'")
    if device.type != "cuda":
        return device
    if requested.index is not None and device.index != requested.index:
        if accelerator.num_processes > 1:
            raise ConfigError(
                f"train.device={spec!r}: with {accelerator.num_processes} processes each "
                f"trains on the GPU Accelerate assigns it (this one: {device}); set "
                "train.device to 'auto' or 'cuda' and choose GPUs with CUDA_VISIBLE_DEVICES")
        torch.cuda.set_device(requested)
        return requested
    return device if device.index is not None else torch.device(
        "cuda", torch.cuda.current_device())


def build_training_method(config: TrainConfig, device: torch.device) -> TrainableMethod:
    """The configured method, built on ``device``. ``options.device`` may only agree with it
    (``auto``, or the same device): where to train is ``train.device``'s choice."""
    options = dict(config.options)
    wanted = parse_device(options.get("device", AUTO))
    if wanted is not None and not same_device(wanted, device):
        raise ConfigError(
            f"options.device={options['device']!r} disagrees with train.device="
            f"{config.train.device!r}, which trains on {device}; the trainer "
            "builds the method where it trains, so set train.device instead (and drop "
            "options.device or set it to 'auto')")
    options["device"] = device
    method = build_method(config.method, **options)
    if not isinstance(method, TrainableMethod):
        raise ConfigError(f"method {config.method!r} is not trainable (trainable: "
                          f"{', '.join(trainable_methods())})")
    return method


class Trainer:
    """Train ``config.method`` on ``config.data``; see the module docstring for the loop."""

    def __init__(self, config: TrainConfig, *, method: TrainableMethod | None = None,
                 on_validation: ValidationHook | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.config = config
        loop = config.train
        _reset_single_process_state()
        requested = resolve_device(loop.device)  # a GPU this machine lacks: a ConfigError now
        self.accelerator = Accelerator(
            mixed_precision=loop.mixed_precision, cpu=requested.type == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        #: Where this process trains: Accelerate's device, which the method is built on.
        self.device = training_device(self.accelerator, requested, loop.device)
        set_seed(loop.seed)
        self.plan = StepPlan(loop.batch_size, loop.grad_accum, self.accelerator.num_processes,
                             self.accelerator.process_index)
        self.method = (method if method is not None
                       else build_training_method(config, self.device))
        self.on_validation = on_validation
        self.progress = progress
        self.log = log if self.accelerator.is_main_process else (lambda _: None)
        data = config.data
        dataset = data.as_dataset()
        self.train_samples = list(dataset.split(data.train_split, limit=data.train_limit))
        self.val_samples = list(dataset.split(data.val_split, limit=data.val_limit))
        self.method.prepare(dataset)
        if loop.feature_cache:  # the main process builds it, the others then read it
            with self.accelerator.main_process_first():
                cache_features(self.method, [*self.train_samples, *self.val_samples], dataset,
                               log=self.log, progress=progress)
        self.steps_per_epoch = self.plan.steps_per_epoch(len(self.train_samples))
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.train_samples)} training samples make no full batch "
                              f"of {loop.batch_size}; lower train.batch_size")
        self.total_steps = loop.epochs * self.steps_per_epoch
        if loop.max_steps is not None:
            self.total_steps = min(self.total_steps, loop.max_steps)
        self.optimizer = build_optimizer(self.method.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, self.total_steps)
        self.model, self.prepared_optimizer = self.accelerator.prepare(self.method.model,
                                                                       self.optimizer)
        self.method.device = self.device  # prepare() moved a given method's model here
        self.state = TrainState()
        self.checkpoints = config.out / "checkpoints"

    # --- checkpoints ----------------------------------------------------------------------

    def _trainer_state(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {"counters": asdict(self.state), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(), "config": self.config.run_identity()}

    def save_checkpoint(self, name: str) -> None:
        if self.accelerator.is_main_process:
            write_checkpoint(self.checkpoints / name, self.method.save_pretrained,
                             self._trainer_state())
        self.accelerator.wait_for_everyone()

    def restore(self, directory: Path) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` of the same run."""
        from safetensors.torch import load_file

        directory = resolve_checkpoint(directory)
        state = read_trainer_state(directory)  # verifies every file against the manifest
        saved, identity = without_device(state["config"]), self.config.run_identity()
        if saved != identity:
            changed = sorted(k for k in saved if saved[k] != identity.get(k))
            raise CheckpointError(f"{directory} belongs to a run with a different config "
                                  f"(sections differing: {', '.join(changed)}); resume with "
                                  "the original config or start a new --out")
        self.method.load_weights(load_file(str(directory / "model.safetensors")), str(directory))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.state = TrainState(**state["counters"])

    # --- the loop -------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainSummary:
        loop = self.config.train
        if resume:
            self.restore(self.checkpoints / "last")
            self.log(f"resumed from {self.checkpoints / 'last'} at step {self.state.step}")
        elif self.accelerator.is_main_process and (self.checkpoints / "last").exists():
            raise ConfigError(f"{self.config.out} already holds a run; pass --resume to "
                              "continue it or choose another out directory")
        if self.accelerator.is_main_process:
            self.config.out.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.config.out / "config.yaml")
        run_log = RunLog(self.config.out, self.accelerator.is_main_process,
                         self.state.step if resume else None)
        history: list[dict[str, Any]] = []
        last_metrics: dict[str, Any] | None = None
        start_time = time.perf_counter()
        start_step = self.state.step
        bar = self._progress_bar()
        try:
            while self.state.step < self.total_steps and self.state.epoch < loop.epochs:
                for _ in self._run_epoch(run_log, bar):
                    metrics = self._maybe_validate(run_log, history, end_of_epoch=False)
                    last_metrics = metrics or last_metrics
                    if self.state.step >= self.total_steps:
                        break
                if self.state.step_in_epoch >= self.steps_per_epoch:
                    self.state.epoch += 1
                    self.state.step_in_epoch = 0
                    metrics = self._maybe_validate(run_log, history, end_of_epoch=True)
                    last_metrics = metrics or last_metrics
            if last_metrics is None or history[-1]["step"] != self.state.step:
                last_metrics = self._validate(run_log, history)
            self.save_checkpoint("last")
        finally:
            bar.close()
            run_log.close()
        seconds = time.perf_counter() - start_time
        done = (self.state.step - start_step) * loop.batch_size
        summary = TrainSummary(
            out=str(self.config.out), steps=self.state.step, epochs_completed=self.state.epoch,
            best_metric=self.state.best_metric, best_step=self.state.best_step,
            last_metrics=last_metrics, bad_steps=self.state.bad_steps, seconds=round(seconds, 2),
            train_samples_per_second=round(done / max(seconds, 1e-9), 2),
            processes=self.accelerator.num_processes, history=history)
        if self.accelerator.is_main_process:
            (self.config.out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        return summary

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.state.step, unit="step",
                    disable=not (self.progress and self.accelerator.is_main_process),
                    dynamic_ncols=True)

    def _run_epoch(self, run_log: RunLog, bar: Any) -> Any:
        """Yield after every optimiser step of the current epoch."""
        loop = self.config.train
        loader = epoch_loader(self.train_samples, self.method.collator(), self.plan, loop.seed,
                              self.state.epoch, self.state.step_in_epoch, loop.num_workers)
        accum = loop.grad_accum
        window_loss: dict[str, float] = {}
        window_steps, window_start = 0, time.perf_counter()
        step_losses: dict[str, Tensor] = {}
        bad_group = False
        for micro_index, batch in enumerate(loader):
            last_micro = (micro_index + 1) % accum == 0
            batch = move_batch(batch, self.accelerator.device)
            sync = nullcontext() if last_micro else self.accelerator.no_sync(self.model)
            with sync:
                losses = self.method.loss(batch, self.model(batch))
                finite = self._all_finite(losses["loss"])
                if finite:
                    self.accelerator.backward(losses["loss"] / accum)
                else:
                    bad_group = True
            for key, value in losses.items():
                step_losses[key] = step_losses.get(key, 0.0) + value.detach().float() / accum
            if not last_micro:
                continue
            grad_norm = self._optimizer_step(skip=bad_group)
            if not bad_group and grad_norm is not None:
                step_losses["grad_norm"] = grad_norm
                for key, value in step_losses.items():
                    window_loss[key] = window_loss.get(key, 0.0) + float(value)
                window_steps += 1
            step_losses, bad_group = {}, False
            self.state.step += 1
            self.state.step_in_epoch += 1
            bar.update(1)
            if self.state.step % loop.log_every == 0 and window_steps:
                elapsed = time.perf_counter() - window_start
                record = {key: value / window_steps for key, value in window_loss.items()}
                record = self._reduce_mean(record)
                record.update(kind="train", step=self.state.step, epoch=self.state.epoch,
                              lr=self.scheduler.get_last_lr()[0], bad_steps=self.state.bad_steps,
                              samples_per_s=window_steps * loop.batch_size / max(elapsed, 1e-9))
                run_log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                sps=f"{record['samples_per_s']:.1f}")
                window_loss, window_steps, window_start = {}, 0, time.perf_counter()
            yield
        del loader

    def _all_finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on *every* process, so all skip or none does."""
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0,
                           device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return bool(bad.item() == 0)

    def _reduce_mean(self, record: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return record
        keys = sorted(record)
        values = torch.tensor([record[k] for k in keys], device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist(), strict=True))

    def _optimizer_step(self, skip: bool) -> float | None:
        """Clip and step; a step with a non-finite loss or gradient is skipped and counted."""
        optim = self.config.optim
        grad_norm: float | None = None
        if not skip:
            max_norm = optim.max_grad_norm if optim.max_grad_norm is not None else math.inf
            norm = self.accelerator.clip_grad_norm_(self.method.model.parameters(), max_norm)
            grad_norm = float(norm) if norm is not None else None
            # with fp16 the grad scaler skips overflowing steps (and lowers its scale) itself
            if self.accelerator.scaler is None and grad_norm is not None and not math.isfinite(
                    grad_norm):
                skip = True
        if skip:
            self.state.bad_steps += 1
            self.log(f"step {self.state.step + 1}: non-finite loss or gradient, step skipped "
                     f"({self.state.bad_steps} so far)")
            if self.state.bad_steps > self.config.train.max_bad_steps:
                raise TrainingDivergedError(
                    f"{self.state.bad_steps} steps had a non-finite loss or gradient (limit "
                    f"train.max_bad_steps={self.config.train.max_bad_steps}); lower optim.lr, "
                    "use mixed_precision: bf16 instead of fp16, or check the data")
        else:
            self.prepared_optimizer.step()
        self.prepared_optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a skipped step still advances the schedule
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        return None if skip else grad_norm

    def _due(self, every: int, end_of_epoch: bool) -> bool:
        return end_of_epoch if every == 0 else (not end_of_epoch
                                                and self.state.step % every == 0)

    def _maybe_validate(self, run_log: RunLog, history: list[dict[str, Any]],
                        end_of_epoch: bool) -> dict[str, Any] | None:
        loop = self.config.train
        metrics = None
        if self._due(loop.eval_every, end_of_epoch):
            metrics = self._validate(run_log, history)
        checkpoint_every = loop.checkpoint_every or loop.eval_every
        if self._due(checkpoint_every, end_of_epoch) and self.state.step < self.total_steps:
            self.save_checkpoint("last")
        return metrics

    def _best_criterion(self) -> str:
        return f"{self.config.train.best_direction} {self.config.train.best_metric}"

    def _improves(self, value: float) -> bool:
        if self.state.best_metric is None or self.state.best_for not in (
                None, self._best_criterion()):
            return True
        if self.config.train.best_direction == "minimize":
            return value < self.state.best_metric
        return value > self.state.best_metric

    def _validate(self, run_log: RunLog, history: list[dict[str, Any]]) -> dict[str, Any]:
        metric_name = self.config.train.best_metric
        metrics = evaluate_sharded(self.method, self.val_samples, self.accelerator,
                                   self.config.train.eval_batch_size)
        value = float(metrics[metric_name])
        entry = {"kind": "val", "step": self.state.step, "epoch": self.state.epoch,
                 **{k: v for k, v in metrics.items() if isinstance(v, int | float)}}
        history.append(entry)
        run_log.write(entry)
        self.log(f"step {self.state.step}: val {metric_name} {value:.4f} "
                 f"(mIoU {metrics['miou']:.4f}, {metrics['n']} samples)")
        if self._improves(value):
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.best_for = self._best_criterion()
            self.save_checkpoint("best")
        if self.on_validation is not None:
            self.on_validation(self.state.step, metrics)
        return metrics
