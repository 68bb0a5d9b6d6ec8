"""``refground train-detector``: the offline CenterNet detector, trained on a REFER-format dataset.

A detector learns from images, not expressions, so it has its own small loop instead of the
grounding :class:`~refground.train.trainer.Trainer` (which batches expressions and validates
Acc@0.5); it shares the Trainer's optimiser, schedule, RNG capture and atomic checkpoints.

* Every image of the training split with all its annotated boxes is one example, class-agnostic.
  Images are decoded and resized once, kept in memory as uint8 (2000 SynthRef images at 256 px
  are 280 MB), and flipped left-right at random.
* Validation after every epoch: recall of the *referents* of the validation expressions among
  the top-k proposals (:func:`~refground.evaluate.proposal_recall.referent_recall`), the
  number that bounds a grounding method that chooses among proposals.
* ``checkpoints/last`` after every epoch (``--resume`` continues bit-exactly from it),
  ``checkpoints/best`` at the best validation (:data:`BEST_METRICS`); ``metrics.jsonl`` in
  the format ``refground curves`` reads.
* :func:`export_detector` casts the best checkpoint to float16 and writes ``training.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field

from refground import boxes as B
from refground.data.synth.writer import rendering_record
from refground.errors import ConfigError
from refground.evaluate.proposal_recall import referent_recall
from refground.images import load_image
from refground.train.checkpoint import (
    read_trainer_state,
    resolve_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from refground.train.config import DataConfig, OptimConfig, _Strict, load_config
from refground.train.trainer import (
    RunLog,
    build_optimizer,
    build_scheduler,
    rng_state,
    set_rng_state,
)
from refground.types import Sample
from refground.vision.centernet import (
    WEIGHTS_FILE,
    CenterNet,
    CenterNetConfig,
    build_targets,
    centernet_loss,
    decode,
    image_batch,
    load_centernet,
    save_centernet,
)

RECORD_FILE = "training.json"
#: The validation numbers that pick ``checkpoints/best``, compared in this order: recall at
#: IoU 0.5 saturates within a few epochs on SynthRef, tighter boxes keep improving after it.
BEST_METRICS = ("recall@0.5@50", "recall@0.75@50", "recall@0.5@10")
BEST_METRIC = BEST_METRICS[0]


class DetectorModelConfig(_Strict):
    image_size: int = Field(256, ge=32)
    widths: tuple[int, ...] = (16, 32, 64, 96, 128)
    output_level: int = Field(2, ge=0)
    head_width: int = Field(64, ge=1)
    gaussian_alpha: float = Field(0.54, gt=0)


class DetectorLoopConfig(_Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    flip: bool = True
    size_weight: float = Field(1.0, ge=0)
    offset_weight: float = Field(1.0, ge=0)
    top_k: int = Field(100, ge=1)  # peaks decoded per image at validation
    log_every: int = Field(20, ge=1)


class DetectorTrainConfig(_Strict):
    data: DataConfig
    model: DetectorModelConfig = DetectorModelConfig()
    optim: OptimConfig = OptimConfig(lr=2e-3, weight_decay=1e-4)
    train: DetectorLoopConfig = DetectorLoopConfig()
    out: Path

    def centernet(self) -> CenterNetConfig:
        try:
            return CenterNetConfig(**self.model.model_dump())
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None


def load_detector_config(path: Path, overrides: dict[str, Any] | None = None
                         ) -> DetectorTrainConfig:
    """The YAML at ``path`` with dotted overrides (``train.epochs=5``), validated."""
    return load_config(path, overrides, DetectorTrainConfig)


# --- data -----------------------------------------------------------------------------------

def image_examples(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per image (the first), which carries all of the image's annotations."""
    seen: dict[Path, Sample] = {}
    for sample in samples:
        seen.setdefault(sample.image_path, sample)
    return list(seen.values())


def normalised_boxes(sample: Sample) -> torch.Tensor:
    boxes = B.as_tensor([a.box for a in sample.annotations], f"annotations of {sample.image_path}")
    return B.normalize(boxes, sample.width, sample.height).clamp(0.0, 1.0)


def decoded_images(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` uint8: each image decoded and resized once."""
    return torch.cat([(image_batch([load_image(s.image_path)], size) * 255).round().to(torch.uint8)
                      for s in samples])


def propose_normalised(model: CenterNet, pixels: torch.Tensor, top_k: int,
                       batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: normalised xyxy boxes and scores of the top-k peaks, best first."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                chunk = pixels[start:start + batch_size].float() / 255.0
                boxes, scores = decode(model(chunk), model.config, top_k)
                out.extend(zip(boxes, scores, strict=True))
    finally:
        model.train(was_training)
    return out


def validation_recall(model: CenterNet, pixels: torch.Tensor, images: Sequence[Sample],
                      samples: Sequence[Sample], top_k: int) -> dict[str, Any]:
    """Referent recall of ``samples`` (expressions) from proposals on their ``images``."""
    found = propose_normalised(model, pixels, top_k)
    by_image = {image.image_path: boxes for image, (boxes, _) in zip(images, found, strict=True)}
    proposals, referents = [], []
    for sample in samples:
        if sample.gt_box is None:
            continue
        proposals.append(B.denormalize(by_image[sample.image_path], sample.width, sample.height))
        referents.append(sample.gt_box)
    return referent_recall(proposals, referents)


# --- the loop -------------------------------------------------------------------------------

class DetectorTrainer:
    """Train a CenterNet on ``config.data``'s training images; see the module docstring."""

    def __init__(self, config: DetectorTrainConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        torch.manual_seed(config.train.seed)
        self.model = CenterNet(config.centernet())
        data = config.data
        dataset = data.as_dataset()
        self.train_images = image_examples(dataset.split(data.train_split).samples)
        self.val_samples = list(dataset.split(data.val_split, limit=data.val_limit))
        self.val_images = image_examples(self.val_samples)
        if len(self.train_images) < config.train.batch_size:
            raise ConfigError(f"{len(self.train_images)} training images make no batch of "
                              f"{config.train.batch_size}; lower train.batch_size")
        size = self.model.config.image_size
        log(f"decoding {len(self.train_images)} training and {len(self.val_images)} validation "
            f"images at {size} px")
        self.train_pixels = decoded_images(self.train_images, size)
        self.val_pixels = decoded_images(self.val_images, size)
        self.train_boxes = [normalised_boxes(s) for s in self.train_images]
        self.steps_per_epoch = len(self.train_images) // config.train.batch_size
        self.total_steps = self.steps_per_epoch * config.train.epochs
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, self.total_steps)
        self.epoch, self.step, self.seconds = 0, 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.best: list[float] | None = None
        self.checkpoints = config.out / "checkpoints"

    def _state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "seconds": self.seconds,
                "history": self.history, "best": self.best,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "config": self.config.model_dump(mode="json")}

    def save(self, name: str) -> None:
        write_checkpoint(self.checkpoints / name, lambda d: save_centernet(self.model, d),
                         self._state())

    def restore(self) -> None:
        directory = resolve_checkpoint(self.checkpoints / "last")
        state = read_trainer_state(directory)
        if state["config"] != self.config.model_dump(mode="json"):
            raise ConfigError(f"{directory} was written by another configuration; resume it with "
                              "its own config or train into a new out directory")
        self.model.load_state_dict(load_centernet(directory).state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.history, self.best = state["history"], state["best"]
        set_rng_state(state["rng"])
        self.log(f"resumed from {directory} after epoch {self.epoch}")

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pixels = self.train_pixels[index].float() / 255.0
        boxes = [self.train_boxes[i].clone() for i in index.tolist()]
        if self.config.train.flip:
            flips = torch.rand(len(index)) < 0.5
            pixels[flips] = pixels[flips].flip(-1)
            for k in flips.nonzero().flatten().tolist():
                x0, y0, x1, y1 = boxes[k].unbind(1)
                boxes[k] = torch.stack([1 - x1, y0, 1 - x0, y1], dim=1)
        return pixels, boxes

    def fit(self, resume: bool = False) -> dict[str, Any]:
        loop = self.config.train
        self.config.out.mkdir(parents=True, exist_ok=True)
        (self.config.out / "config.yaml").write_text(
            yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        if resume and (self.checkpoints / "last").exists():
            self.restore()
        run_log = RunLog(self.config.out, True, self.step if resume else None)
        self.model.train()
        try:
            while self.epoch < loop.epochs:
                started = time.perf_counter()
                order = torch.randperm(len(self.train_images))
                for k in range(self.steps_per_epoch):
                    batch = order[k * loop.batch_size:(k + 1) * loop.batch_size]
                    pixels, boxes = self._batch(batch)
                    losses = centernet_loss(self.model(pixels),
                                            build_targets(boxes, self.model.config),
                                            loop.size_weight, loop.offset_weight)
                    self.optimizer.zero_grad(set_to_none=True)
                    losses["loss"].backward()
                    if self.config.optim.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                       self.config.optim.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    if self.step % loop.log_every == 0:
                        run_log.write({"kind": "train", "step": self.step, "epoch": self.epoch,
                                       "lr": self.scheduler.get_last_lr()[0],
                                       **{n: float(v.detach()) for n, v in losses.items()}})
                self.epoch += 1
                self.seconds += time.perf_counter() - started
                self._validate(run_log)
                self.save("last")
        finally:
            run_log.close()
        best = dict(zip(BEST_METRICS, self.best or [], strict=False))
        summary = {"steps": self.step, "epochs_completed": self.epoch, "seconds": self.seconds,
                   "best_metric": best.get(BEST_METRIC), "best": best,
                   "history": self.history}
        (self.config.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n",
                                                      encoding="utf-8")
        return summary

    def _validate(self, run_log: RunLog) -> None:
        recall = validation_recall(self.model, self.val_pixels, self.val_images,
                                   self.val_samples, self.config.train.top_k)
        entry = {"kind": "val", "step": self.step, "epoch": self.epoch, **recall}
        self.history.append(entry)
        run_log.write(entry)
        self.log(f"epoch {self.epoch}: val recall@0.5 top-10 {recall['recall@0.5@10']:.4f}, "
                 f"top-50 {recall[BEST_METRIC]:.4f}, recall@0.75 top-50 "
                 f"{recall['recall@0.75@50']:.4f} ({recall['n']} expressions)")
        score = [recall[name] for name in BEST_METRICS]
        if self.best is None or score > self.best:
            self.best = score
            self.save("best")


# --- export ---------------------------------------------------------------------------------

def export_detector(run: Path, out: Path, *, data_recipe: str, command: str,
                    splits: Sequence[str] = (), checkpoint: str = "best",
                    dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """``out`` = the run's ``checkpoint`` (best or last) in ``dtype`` + ``training.json``, with
    the referent recall of the exported detector (loaded back, as users load it) on
    ``splits``."""
    from refground.evaluate.proposal_recall import proposer_recall
    from refground.vision.proposers.centernet import CenterNetProposer

    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be best or last, got {checkpoint!r}")
    source = resolve_checkpoint(Path(run) / "checkpoints" / checkpoint)
    verify_checkpoint(source)
    model = load_centernet(source)
    save_centernet(model, out, dtype)
    summary = json.loads((Path(run) / "summary.json").read_text(encoding="utf-8"))
    record = {
        "what": "class-agnostic CenterNet (Zhou et al. 2019), refground's offline detector",
        "data": data_recipe,
        "command": command,
        "export": (f"refground export-detector --run {run} --checkpoint {checkpoint} --out {out}"
                   f" (weights cast to {dtype})"),
        "checkpoint": checkpoint,
        "config": yaml.safe_load((Path(run) / "config.yaml").read_text(encoding="utf-8")),
        "model": asdict(model.config),
        "steps": summary["steps"],
        "epochs": summary["epochs_completed"],
        "wall_clock_s": summary["seconds"],
        "best_val": summary["best"],
        "val_curve": [{k: v for k, v in entry.items() if k != "kind"}
                      for entry in summary["history"]],
        "size_bytes": (Path(out) / WEIGHTS_FILE).stat().st_size,
    }
    config = DetectorTrainConfig(**record["config"])
    # the drawing the detector learned from (domain randomisation: what it holds out)
    record["rendering"] = rendering_record(config.data.root)
    proposer = CenterNetProposer(out, device="cpu") if splits else None
    dataset = config.data.as_dataset()
    for split in splits:
        recall = proposer_recall(proposer, dataset.split(split).samples)
        record.setdefault("test", {})[split] = {k: v for k, v in recall.items()
                                                if k != "images_per_s"}
    (Path(out) / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
