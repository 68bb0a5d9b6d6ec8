"""Which samples each process sees at each step, so runs are reproducible, resumable and shardable.

The order of an epoch is a function of ``(seed, epoch)`` only. Each optimiser step takes the
next *global* batch of that order; it is cut into ``grad_accum`` micro-batches, and each
micro-batch into ``world_size`` interleaved shards, one per process. So a run on 2 processes
sees exactly the samples a 1-process run sees at every step, and resuming at step k means
starting the same order at batch k -- no data is replayed or skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from refground.errors import ConfigError
from refground.types import Sample


class SampleList(Dataset[Sample]):
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


@dataclass(frozen=True)
class StepPlan:
    """How one optimiser step's global batch is split into micro-batches and process shards."""

    batch_size: int
    grad_accum: int = 1
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        micro = self.batch_size // self.grad_accum
        if self.batch_size % self.grad_accum or micro % self.world_size:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by grad_accum "
                f"({self.grad_accum}) x processes ({self.world_size}), so every process gets "
                "equal micro-batches and the averaged gradient equals a 1-process run's")

    def steps_per_epoch(self, num_samples: int) -> int:
        return num_samples // self.batch_size  # the incomplete last batch is dropped


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``; a private generator leaves the global RNG alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class StepBatchSampler(Sampler[list[int]]):
    """This process's micro-batches of one epoch, starting at optimiser step ``start_step``."""

    def __init__(self, num_samples: int, plan: StepPlan, seed: int, epoch: int,
                 start_step: int = 0) -> None:
        self.num_samples = num_samples
        self.plan = plan
        self.seed = seed
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        steps = self.plan.steps_per_epoch(self.num_samples) - self.start_step
        return max(steps, 0) * self.plan.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.num_samples, self.seed, self.epoch)
        plan = self.plan
        micro = plan.batch_size // plan.grad_accum
        for step in range(self.start_step, plan.steps_per_epoch(self.num_samples)):
            batch = order[step * plan.batch_size:(step + 1) * plan.batch_size]
            for m in range(plan.grad_accum):
                yield batch[m * micro:(m + 1) * micro][plan.rank::plan.world_size].tolist()


def epoch_loader(samples: Sequence[Sample], collate: Callable[[Sequence[Sample]], object],
                 plan: StepPlan, seed: int, epoch: int, start_step: int,
                 num_workers: int) -> DataLoader:
    """A DataLoader whose workers load and collate the micro-batches of one epoch.

    It gets its own generator so creating it does not draw from the global RNG (which the
    model's dropout uses and the checkpoint restores).
    """
    sampler = StepBatchSampler(len(samples), plan, seed, epoch, start_step)
    return DataLoader(SampleList(samples), batch_sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed + epoch),
                      prefetch_factor=4 if num_workers else None)
