"""Loaded models shared by all requests: one Grounder per (method, options), built once.

Loading a CLIP method takes seconds and hundreds of MB, so the server must never build the same
model twice, even when the first requests for it arrive together: builds are serialised per
key (a second request for a model being built waits for it), while requests for models already
loaded, or being built under another key, are not held up. The cache is bounded (least recently
used models are dropped) because clients choose options and could otherwise fill memory.
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
        #: How many times each key was built (a rebuild happens only after an eviction).
        self.builds: Counter[ModelKey] = Counter()

    def loaded(self) -> list[ModelKey]:
        """Keys of the models in memory, least recently used first."""
        with self._lock:
            return list(self._models)

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
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self._models[key] = model
                self.builds[key] += 1
                while len(self._models) > self._max_models:
                    evicted, _ = self._models.popitem(last=False)
                    logger.info("dropped model %s %s (cache holds %d)", *evicted,
                                self._max_models)
            return model

    def _build(self, method: str, options: dict[str, Any]) -> GrounderLike:
        """Load one model. Constructors check few options themselves, so what they raise on
        bad ones is whatever the code below them raises (TypeError for an unknown option,
        ValueError for a bad value, torch's AssertionError for a device it was not built for):
        those are reported as the options' fault, with the original message. Anything else
        (a broken model file, memory) is the server's problem and stays an unexpected error."""
        logger.info("loading %s with options %s", method, options)
        try:
            return self._loader(method, **options)
        except RefgroundError:
            raise
        except (TypeError, ValueError, AssertionError) as exc:
            logger.warning("cannot build %s with options %s: %r", method, options, exc)
            raise ConfigError(f"cannot build {method} with options {json.dumps(options)}: "
                              f"{type(exc).__name__}: {exc}") from exc
