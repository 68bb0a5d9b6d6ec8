"""The method interface every grounding approach implements, and the registry that names them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from refground.registry import Registry
from refground.types import Prediction, Sample


class Method(ABC):
    """A grounding method: a batch of samples in, one prediction per sample out.

    ``predict`` is the only place methods differ. Trainable methods (later) also implement
    ``loss``; the evaluation harness never needs to know which kind it runs.
    """

    name: str = "method"

    @abstractmethod
    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        """Predict one box per sample, in the same order."""


METHODS: Registry[Method] = Registry(
    "method",
    modules=("refground.methods.heuristics",),
)


def build_method(name: str, **options: object) -> Method:
    """Construct a registered method by name (``refground methods`` lists the names)."""
    return METHODS.build(name, **options)
