"""Loaded models shared by all requests: one Grounder per (method, options), built once.

Loading a CLIP method takes seconds and hundreds of MB, so the server must never build the same
model twice, even when the first requests for it arrive together: builds are serialised per
key (a second request for a model being built waits for it), while requests for models already
loaded, or being built under another key, are not held up. The cache is bounded (least recently
used models are dropped) because clients choose options and could otherwise fill memory; the
models the operator serves are *pinned*: a stream of requests with ever new options evicts
only other such variants, never the served models, so it cannot force them to reload.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from refground.errors import ConfigError, RefgroundError
from refground.types import Prediction

logger = logging.getLogger(__name__)

ModelKey = tuple[str, str]


class GrounderLike(Protocol):
    """What the server needs of a model: :class:`refground.api.Grounder` or a test double."""

    def ground(self, image: Any, text: str,
               boxes: Sequence[Sequence[float]] | None = None) -> Prediction: ...


Loader = Callable[..., GrounderLike]


def default_loader(method: str, **options: Any) -> GrounderLike:
    """``Grounder.load``, imported late so building a cache does not import torch."""
    from refground.api import Grounder

    return Grounder.load(method, **options)


def model_key(method: str, options: Mapping[str, Any]) -> ModelKey:
    """A hashable key equal for equal options whatever their order (options are JSON values)."""
    try:
        frozen = json.dumps(options, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method options must be plain JSON values: {exc}") from None
    return method, frozen


class GrounderCache:
    """Thread-safe, lazily filled, LRU-bounded map from (method, options) to a loaded model."""

    def __init__(self, loader: Loader = default_loader, max_models: int = 4) -> None:
        if max_models < 1:
            raise ConfigError(f"max_models must be at least 1, got {max_models}")
        self._loader = loader
        self._max_models = max_models
        self._lock = threading.Lock()
        self._models: OrderedDict[ModelKey, GrounderLike] = OrderedDict()
        self._building: dict[ModelKey, threading.Lock] = {}
        self._pinned: set[ModelKey] = set()
        #: How many times each model in memory was built (concurrent first requests must not
        #: build it twice); an evicted model's count goes with it, so client-chosen options
        #: cannot grow this without bound.
        self.builds: Counter[ModelKey] = Counter()

    def loaded(self) -> list[ModelKey]:
        """Keys of the models in memory, least recently used first."""
        with self._lock:
            return list(self._models)

    def pin(self, method: str, options: Mapping[str, Any] | None = None) -> ModelKey:
        """Never evict the model for (``method``, ``options``) once built: a model the
        operator serves. Evictions then take the least recently used unpinned model; when
        every model is pinned, the cache may hold more than ``max_models`` of them."""
        key = model_key(method, dict(options or {}))
        with self._lock:
            self._pinned.add(key)
        return key

    def _lookup(self, key: ModelKey) -> GrounderLike | None:
        """The cached model (marked as just used), or None; call with ``_lock`` held."""
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
        return model

    def get(self, method: str, options: Mapping[str, Any] | None = None) -> GrounderLike:
        """The model for ``method`` with ``options``, building it on first use."""
        options = dict(options or {})
        key = model_key(method, options)
        with self._lock:
            model = self._lookup(key)
            if model is not None:
                return model
            build_lock = self._building.setdefault(key, threading.Lock())
        with build_lock:  # one builder per key; the others wait here, then find it cached
            with self._lock:
                model = self._lookup(key)
                if model is not None:
                    return model
            try:
                model = self._build(method, options)
                with self._lock:  # cached before the build lock goes: no second build
                    self._models[key] = model
                    self.builds[key] += 1
                    self._evict()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            return model

    def _evict(self) -> None:
        """Drop least recently used unpinned models down to ``max_models``; call with
        ``_lock`` held. The model just built may go too: its request still gets it."""
        unpinned = [key for key in self._models if key not in self._pinned]
        while len(self._models) > self._max_models and unpinned:
            evicted = unpinned.pop(0)
            del self._models[evicted]
            del self.builds[evicted]
            logger.info("dropped model %s %s (cache holds %d)", *evicted, self._max_models)

    def _build(self, method: str, options: dict[str, Any]) -> GrounderLike:
        """Load one model. Methods validate their options (an unknown or mistyped one is a
        :class:`ConfigError`), but what a value makes the code below them do can still fail
        otherwise (a ValueError, torch's AssertionError for a device it was not built for):
        those become a :class:`ConfigError` with the original message, which the CLI prints
        to the operator. The server shows clients none of these messages (they hold the
        operator's options, paths included); see ``GroundService.load``."""
        logger.info("loading %s with options %s", method, options)
        try:
            return self._loader(method, **options)
        except RefgroundError:
            raise
        except (TypeError, ValueError, AssertionError) as exc:
            logger.warning("cannot build %s with options %s: %r", method, options, exc)
            raise ConfigError(f"cannot build {method} with options {json.dumps(options)}: "
                              f"{type(exc).__name__}: {exc}") from exc
