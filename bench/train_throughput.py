"""Training-step throughput of each trainable model: cached features vs images vs a naive loop.

    .venv/bin/python bench/train_throughput.py --data data/synth [--methods regressor detr erpa]
                                               [--steps 8] [--batch-size 16] [--workers 1]

The loops train the same model (built from configs/<method>.yaml) on the same SynthRef train
samples with the same AdamW step; only where inputs come from and the loop differ:

* cached -- the Trainer's default: the frozen parts' outputs (CLIP patch tokens, crop and text
  embeddings, a CNN's preprocessed pixels) read from the dataset's feature cache
  (``refground cache-features``; built here first, its build time printed apart);
* images -- the Trainer with ``train.feature_cache: false``: a DataLoader whose worker
  processes decode and collate whole batches while the main process computes, the frozen
  CLIP run in every step, one batched forward/backward per step;
* naive -- what the ERP-A write-up describes and warns against: samples loaded one at a time
  in the main process, a forward/backward per sample (loss / batch size), then
  ``gc.collect()`` and ``torch.cuda.empty_cache()`` after every step.

Prints samples/s of each and the ratios cached/images and images/naive, side by side. Timing
starts after one warm-up step. Issue 13's target: cached/images >= 5x for erpa and regressor on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refground.data.synth import synthref_dataset
from refground.methods import build_method
from refground.methods.trainable import TrainableMethod, cache_features, move_batch
from refground.train.data import StepPlan, epoch_loader
from refground.types import Sample

REPO = Path(__file__).resolve().parents[1]


def build(name: str) -> TrainableMethod:
    options = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["options"]
    torch.manual_seed(0)
    method = build_method(name, **options)
    assert isinstance(method, TrainableMethod)
    return method


def step(method: TrainableMethod, optimizer: torch.optim.Optimizer,
         losses: Callable[[], None]) -> None:
    losses()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def fast_loop(method: TrainableMethod, samples: Sequence[Sample], batch_size: int,
              workers: int) -> float:
    optimizer = torch.optim.AdamW([p for p in method.model.parameters() if p.requires_grad])
    method.model.train()
    plan = StepPlan(batch_size)
    loader = epoch_loader(samples, method.collator(), plan, seed=0, epoch=0, start_step=0,
                          num_workers=workers)
    start = None
    for index, batch in enumerate(loader):
        if index == 1:
            start = time.perf_counter()

        def backward(batch: dict = batch) -> None:
            batch = move_batch(batch, method.device)
            method.loss(batch, method.model(batch))["loss"].backward()

        step(method, optimizer, backward)
    assert start is not None
    return (len(samples) - batch_size) / (time.perf_counter() - start)


def naive_loop(method: TrainableMethod, samples: Sequence[Sample], batch_size: int) -> float:
    optimizer = torch.optim.AdamW([p for p in method.model.parameters() if p.requires_grad])
    method.model.train()
    collate = method.collator()
    start = None
    for index in range(len(samples) // batch_size):
        if index == 1:
            start = time.perf_counter()
        chunk = samples[index * batch_size:(index + 1) * batch_size]

        def backward(chunk: Sequence[Sample] = chunk) -> None:
            for sample in chunk:
                batch = move_batch(collate([sample]), method.device)
                (method.loss(batch, method.model(batch))["loss"] / len(chunk)).backward()

        step(method, optimizer, backward)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    assert start is not None
    return (len(samples) - batch_size) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--methods", nargs="+", default=["regressor", "detr", "erpa"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    dataset = synthref_dataset(args.data)
    samples = dataset.split("train").samples
    samples = samples[:(args.steps + 1) * args.batch_size]
    print(f"{len(samples)} SynthRef train samples, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.workers} loader worker(s)")
    rows = []
    for name in args.methods:
        cached_method = build(name)
        cached_method.prepare(dataset)
        start = time.perf_counter()
        cache_features(cached_method, samples, dataset, log=lambda _: None)
        built = time.perf_counter() - start
        cached = fast_loop(cached_method, samples, args.batch_size, args.workers)
        images_method = build(name)
        images_method.prepare(dataset)
        images = fast_loop(images_method, samples, args.batch_size, args.workers)
        naive_method = build(name)
        naive_method.prepare(dataset)
        naive = naive_loop(naive_method, samples, args.batch_size)
        rows.append((name, cached, images, naive, built))
    print(f"{'method':<12}{'cached/s':>10}{'images/s':>10}{'naive/s':>9}"
          f"{'cached/images':>15}{'images/naive':>14}{'cache build s':>15}")
    for name, cached, images, naive, built in rows:
        print(f"{name:<12}{cached:>10.1f}{images:>10.1f}{naive:>9.1f}"
              f"{cached / images:>14.1f}x{images / naive:>13.1f}x{built:>15.1f}")


if __name__ == "__main__":
    main()
