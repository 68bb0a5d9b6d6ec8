"""What every transformers-backed proposer shares: loading with clear errors, batching, devices.

Loading goes through the libraries' own ``from_pretrained`` (a hub id or a local directory, as
users pass it), but every failure mode we know of becomes a
:class:`~refground.vision.proposals.ProposerLoadError` that says what to change:

* a local path that does not exist, or a directory without ``config.json`` - refused before
  transformers would try (and retry) the network with it;
* a checkpoint of another architecture (an OWL-ViT directory given to ``detr``);
* weights missing from the checkpoint (``output_loading_info``): transformers only warns and
  initialises them randomly, which would make a silently useless detector;
* an empty tokenizer: transformers 5 builds a 2-token tokenizer instead of failing when the
  tokenizer files are missing, and every query would then encode to unknown tokens.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.errors import ConfigError, MissingDependencyError, RefgroundError
from refground.types import Sample
from refground.vision.loading import check_weights_loaded
from refground.vision.proposals import (
    PostProcess,
    Proposals,
    ProposerLoadError,
    check_batch,
    resolve_queries,
)

#: Fewer regular (non-special) tokens than this means the tokenizer files were not found.


@dataclass(frozen=True, eq=False)
class RawDetections:
    """One image's detections before :class:`PostProcess`: xyxy pixels, any order."""

    boxes: Tensor
    scores: Tensor
    labels: tuple[str, ...]


def require_transformers() -> None:
    """Raise :class:`MissingDependencyError` with the install hint if transformers is absent."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "this proposer needs transformers: pip install 'refground[clip]'") from exc


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only mean a local path (a hub id is ``owner/name`` or ``name``)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
            or name.count("/") > 1)


def resolve_source(name_or_path: str | os.PathLike[str], what: str) -> str:
    """Check a model name before transformers sees it; return what to pass to from_pretrained.

    A local directory must hold ``config.json``; a name that can only be a path must exist.
    Anything else is taken as a hub id (transformers then uses its cache or the network).
    """
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ConfigError(f"a {what} model name or directory is required, got an empty string")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
            raise ProposerLoadError(
                f"directory {name!r} has no config.json, so it is not a saved transformers "
                f"{what} model (it holds: {present}); point to the directory save_pretrained "
                "wrote")
        return str(path)
    if path.exists():
        raise ProposerLoadError(f"{what} model {name!r} is a file; pass the model directory")
    if _looks_like_path(name):
        raise ProposerLoadError(
            f"{what} model directory {name!r} does not exist; pass an existing directory saved "
            "with save_pretrained, or a hub id such as 'owner/model'")
    return name


def load_step(what: str, source: str, load: Callable[[], Any]) -> Any:
    """Run one ``from_pretrained`` call, turning library errors into :class:`ProposerLoadError`."""
    try:
        return load()
    except RefgroundError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(f"loading the {what} of {source!r} needs: {exc}") from exc
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        hint = ("" if Path(source).is_dir() else
                " If no hub is reachable from here, download the model elsewhere "
                "(save_pretrained or `hf download`) and pass the local directory.")
        raise ProposerLoadError(f"cannot load the {what} of {source!r}: {exc}.{hint}") from exc


def load_config(source: str, what: str, model_types: Sequence[str]) -> Any:
    """Load the checkpoint's config and refuse other architectures by name."""
    from transformers import AutoConfig

    config = load_step("config", source, lambda: AutoConfig.from_pretrained(source))
    if model_types and config.model_type not in model_types:
        raise ProposerLoadError(
            f"{source!r} is a {config.model_type!r} checkpoint, but the {what} proposer needs "
            f"one of: {', '.join(model_types)}")
    return config


def load_model(model_class: Any, source: str, config: Any, *, strict: bool,
               device: torch.device) -> Any:
    """``model_class.from_pretrained`` in eval mode on ``device``; missing weights are an error.

    ``strict=False`` accepts a checkpoint with missing weights (they stay randomly initialised),
    for checkpoints known to omit unused heads.
    """
    model, info = load_step("weights", source, lambda: model_class.from_pretrained(
        source, config=config, output_loading_info=True))
    if strict:
        check_weights_loaded(info, repr(source), model_class.__name__, ProposerLoadError)
    return model.to(device).eval()


class TransformersProposer(ABC):
    """Base of the transformers detectors: batching, query handling and post-processing.

    Subclasses load their model in :meth:`_load` and turn a chunk of images (and, when
    ``text_conditioned``, their non-empty queries) into :class:`RawDetections` in
    :meth:`_detect`; this class splits batches into ``batch_size`` chunks, gives images without
    any query the whole-image fallback without running the model, and applies the shared
    :class:`PostProcess`.
    """

    name: ClassVar[str] = "transformers"
    default_model: ClassVar[str] = ""
    default_postprocess: ClassVar[PostProcess] = PostProcess()
    text_conditioned: ClassVar[bool] = False

    def __init__(self, model: str | os.PathLike[str] | None = None, *,
                 device: DeviceSpec = AUTO, batch_size: int = 8,
                 strict: bool = True, postprocess: PostProcess | None = None) -> None:
        require_transformers()
        if isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model_name = os.fspath(model) if model is not None else self.default_model
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.postprocess = postprocess or self.default_postprocess
        self._load(resolve_source(self.model_name, self.name), strict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r}, device={str(self.device)!r})"

    @abstractmethod
    def _load(self, source: str, strict: bool) -> None:
        """Load model and processor from ``source`` (a checked directory or hub id)."""

    @abstractmethod
    def _detect(self, images: Sequence[Image.Image], queries: Sequence[tuple[str, ...]]
                ) -> list[RawDetections]:
        """Run the model on one chunk; ``queries`` is empty unless text-conditioned."""

    def propose(self, images: Sequence[Image.Image], samples: Sequence[Sample],
                queries: Sequence[Sequence[str]] | None = None) -> list[Proposals]:
        """One :class:`Proposals` per image; see :class:`~refground.vision.proposals.Proposer`."""
        images = check_batch(images, samples)
        per_image = resolve_queries(samples, queries) if self.text_conditioned else None
        # Images without any query keep the whole-image fallback; the model never sees them.
        results = [Proposals.whole_image(image.width, image.height) for image in images]
        todo = [i for i in range(len(images)) if per_image is None or per_image[i]]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            chunk_queries = [per_image[i] for i in chunk] if per_image is not None else []
            with torch.inference_mode():
                raw = self._detect([images[i] for i in chunk], chunk_queries)
            for i, detections in zip(chunk, raw, strict=True):
                results[i] = self.postprocess(detections.boxes, detections.scores,
                                              detections.labels, images[i].width,
                                              images[i].height)
        return results
