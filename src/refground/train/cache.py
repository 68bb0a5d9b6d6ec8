"""``refground cache-features``: a training config's feature cache, built ahead of training.

The Trainer builds the cache on first use anyway (``train.feature_cache``); building it apart
lets one machine (or one process, before ``accelerate launch``) pay for it once, and covers
more splits than training reads (``test`` for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from refground.devices import resolve_device
from refground.methods.trainable import cache_features
from refground.train.config import TrainConfig
from refground.train.trainer import build_training_method
from refground.vision.feature_cache import FeatureTable


def build_cache(config: TrainConfig, extra_splits: Sequence[str] = (),
                log: Callable[[str], None] = print, progress: bool = True
                ) -> dict[str, FeatureTable]:
    """The config's method built as training builds it, its tables for the train and val
    splits (and ``extra_splits``) checked or built; ``{}`` when the method caches nothing."""
    method = build_training_method(config, resolve_device(config.train.device))
    data = config.data
    dataset = data.as_dataset()
    method.prepare(dataset)
    splits = {data.train_split: data.train_limit, data.val_split: data.val_limit}
    splits.update({split: None for split in extra_splits if split not in splits})
    samples = [sample for split, limit in splits.items()
               for sample in dataset.split(split, limit=limit)]
    return cache_features(method, samples, dataset, log=log, progress=progress)
