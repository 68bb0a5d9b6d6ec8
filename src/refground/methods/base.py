"""The method interface every grounding approach implements, and the registry that names them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from refground.data.dataset import Dataset
from refground.methods.options import MethodConfig, NoOptions
from refground.registry import Registry
from refground.types import Prediction, Sample


class Method(ABC):
    """A grounding method: a batch of samples in, one prediction per sample out.

    ``predict`` is the only place methods differ. Trainable methods (later) also implement
    ``loss``; the evaluation harness never needs to know which kind it runs.
    """

    name: str = "method"
    #: One line saying what the method does, for `refground methods` and the web page.
    summary: str = ""
    #: The options it takes (:mod:`refground.methods.options`), validated when it is built.
    config_type: ClassVar[type[MethodConfig]] = NoOptions
    #: Where its row goes in `refground demo`'s table (lower first); None leaves it out. A
    #: trainable method is in the demo when its :attr:`demo_checkpoint` ships.
    demo_order: ClassVar[int | None] = None
    #: The shipped checkpoint (``refground/assets/<name>``) the demo evaluates, if any.
    demo_checkpoint: ClassVar[str | None] = None
    #: Where the method computes: a concrete device, resolved once when the method is built
    #: from its ``device`` option (default ``"auto"``, see :mod:`refground.devices`). Methods
    #: without a model (the heuristics) compute on the CPU.
    device: torch.device = torch.device("cpu")

    @property
    def needs_annotations(self) -> bool:
        """Whether predictions come from the sample's annotated boxes (``proposals="gt"``,
        the heuristics): then an image without annotations cannot be grounded."""
        return False

    @property
    def proposer_name(self) -> str | None:
        """The proposer of its candidate boxes (``gt``, ``owlvit``...), for run records; None
        for methods that regress boxes."""
        return getattr(getattr(self, "proposer", None), "name", None)

    def prepare(self, dataset: Dataset) -> None:  # noqa: B027 - optional hook, no-op default
        """Called once before evaluating on ``dataset``; most methods need nothing.

        Methods that use the benchmark's *training* split at test time (visual-prompt draws
        its debiasing expressions from it) or its caches (parsed graphs) read them from
        ``dataset``; nothing else may be taken from it.
        """

    @abstractmethod
    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        """Predict one box per sample, in the same order."""


#: Every module of :mod:`refground.methods` is imported on first lookup; a method registers
#: itself with ``@METHODS.register("name")``.
METHODS: Registry[Method] = Registry("method", packages=("refground.methods",))


def trainable_methods() -> list[str]:
    """The registered methods `refground train` can train (their factories say so)."""
    return [name for name in METHODS.names() if getattr(METHODS.get(name), "trainable", False)]


def method_type(name: str) -> Any:
    """The class behind a registered name (a trainable method's factory names its class), whose
    attributes say what the method is: :attr:`Method.config_type`, :attr:`Method.demo_order`."""
    factory = METHODS.get(name)
    return getattr(factory, "method_type", factory)


def build_method(name: str, **options: object) -> Method:
    """Construct a registered method by name (``refground methods`` lists the names)."""
    return METHODS.build(name, **options)
