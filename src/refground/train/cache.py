"""``refground cache-features``: a training config's feature cache, built ahead of training.

The Trainer builds the cache on first use anyway (``train.feature_cache``); building it apart
lets one machine (or one process, before ``accelerate launch``) pay for it once, and covers
more splits than training reads (``test`` for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from refground.data.refer import load_refer_split
from refground.devices import resolve_device
from refground.errors import ConfigError
from refground.methods import DatasetInfo, build_method
from refground.methods.trainable import TrainableMethod, cache_features
from refground.train.config import TrainConfig
from refground.types import Sample
from refground.vision.feature_cache import FeatureTable


def config_samples(config: TrainConfig, splits: Sequence[str]) -> list[Sample]:
    data = config.data
    limits = {data.train_split: data.train_limit, data.val_split: data.val_limit}
    samples: list[Sample] = []
    for split in splits:
        loaded = load_refer_split(data.root, data.dataset, data.split_by, split, data.images)
        samples += loaded.samples[:limits.get(split)]
    return samples


def build_cache(config: TrainConfig, extra_splits: Sequence[str] = (),
                log: Callable[[str], None] = print, progress: bool = True
                ) -> dict[str, FeatureTable]:
    """The config's method built as training builds it, its tables for the train and val
    splits (and ``extra_splits``) checked or built; ``{}`` when the method caches nothing."""
    options = {k: v for k, v in config.options.items() if k != "device"}
    method = build_method(config.method, device=resolve_device(config.train.device), **options)
    if not isinstance(method, TrainableMethod):
        raise ConfigError(f"method {config.method!r} is not trainable; nothing to cache")
    data = config.data
    info = DatasetInfo(Path(data.root), data.dataset, data.split_by,
                       Path(data.images) if data.images else None)
    method.prepare(info)
    splits = list(dict.fromkeys([data.train_split, data.val_split, *extra_splits]))
    return cache_features(method, config_samples(config, splits), info, log=log,
                          progress=progress)
