"""What a method must add to be trainable: a module, a collate, a loss and a decoder.

The Trainer (``refground.train``) knows nothing about any model. It drives a
:class:`TrainableMethod` through four parts:

* ``collator()`` -- a small picklable callable ``samples -> Batch`` that loads and resizes the
  images and tokenizes the texts. It runs in DataLoader worker processes, so it must not hold
  the model.
* ``model`` -- the ``nn.Module``; ``model(batch)`` returns the method's raw outputs.
* ``loss(batch, outputs)`` -- a dict of scalar tensors; ``"loss"`` is optimised, the other
  entries are logged.
* ``feature_groups()`` / ``use_features(tables)`` (optional) -- the frozen features the
  collator may read from a cache instead of images (:mod:`refground.vision.feature_cache`);
  :func:`cache_features` builds the tables and hands them over. A batch whose rows are all
  cached is read from them, any other batch (new images at predict time) is computed.
* ``decode(batch, outputs)`` -- ``(boxes, scores)``: one normalised ``cxcywh`` box in [0, 1]
  per sample and its confidence. ``predict`` turns it into pixel boxes, so evaluation goes
  through the same code as every other method.

Checkpoints are a directory with ``method.json`` (name + options) and ``model.safetensors``.
Frozen pretrained parts (a CLIP tower) are not copied into it: they are rebuilt from the
options, which name them, and ``frozen_prefixes`` says which weights those are. The device is
not an option and is not saved (weights are saved from the CPU): a checkpoint loads on whatever
device the loader asks for, ``"auto"`` by default.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from refground import boxes as B
from refground.data.dataset import Dataset
from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.errors import ConfigError, ModelLoadError
from refground.images import ImageInput, load_image
from refground.methods.base import Method
from refground.methods.options import MethodConfig, parse_config
from refground.types import Prediction, Sample
from refground.vision.feature_cache import (
    FEATURES_DIR,
    FeatureGroup,
    FeatureTable,
    dataset_fingerprint,
    ensure_table,
)
from refground.vision.preprocess import pil_to_tensor

Batch = dict[str, Any]
METHOD_FILE = "method.json"
WEIGHTS_FILE = "model.safetensors"
MethodT = TypeVar("MethodT", bound="TrainableMethod")


def image_tensor(image: ImageInput, size: int) -> Tensor:
    """An image (a file or decoded) squashed to ``size x size``, float in [0, 1],
    ``(3, size, size)``.

    Squashing (not cropping) keeps every object in view; boxes are predicted normalised to the
    image, so the aspect change is undone when they are scaled back to pixels.
    """
    image = load_image(image).resize((size, size), resample=3)  # bicubic
    return pil_to_tensor(image).float().div_(255.0)


def target_boxes(samples: Sequence[Sample]) -> Tensor | None:
    """Normalised ``cxcywh`` gt boxes ``(B, 4)``, or ``None`` when any sample has no gt box."""
    if any(s.gt_box is None for s in samples):
        return None
    xyxy = torch.tensor([s.gt_box for s in samples], dtype=torch.float32)
    sizes = image_sizes(samples)
    return B.xyxy_to_cxcywh(B.normalize(xyxy, sizes[:, 0], sizes[:, 1]))


def image_sizes(samples: Sequence[Sample]) -> Tensor:
    """``(B, 2)`` (width, height) of each sample's image in pixels."""
    return torch.tensor([(s.width, s.height) for s in samples], dtype=torch.float32)


def move_batch(batch: Batch, device: torch.device | str) -> Batch:
    """Tensors of a batch moved to ``device``; everything else left as is."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
            for k, v in batch.items()}


def require_target(batch: Batch, method: str) -> Tensor:
    """The batch's gt boxes; a batch without them cannot be trained on."""
    if "target" not in batch:
        raise ConfigError(f"{method}: the batch has no 'target'; training needs samples with "
                          "ground-truth boxes")
    return batch["target"]


class FrozenPartModel(nn.Module):
    """A model around one pretrained part (a CLIP, a text tower) that may be frozen.

    Frozen, the part gets no gradients and stays in eval mode (no dropout) whatever
    ``train()`` says. Fine-tuned, the part's parameters the model never uses are still frozen:
    a trainable parameter without a gradient is an error under DDP.
    """

    frozen_part: str | None = None  # attribute name of the frozen part, if frozen

    def freeze_part(self, name: str, frozen: bool, unused: Sequence[nn.Parameter] = ()) -> None:
        part: nn.Module = getattr(self, name)
        if frozen:
            self.frozen_part = name
            part.requires_grad_(False)
            part.eval()
            return
        for parameter in unused:
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenPartModel:
        super().train(mode)
        if self.frozen_part is not None:
            getattr(self, self.frozen_part).eval()
        return self


class TrainableMethod(Method):
    """A method whose predictions come from an ``nn.Module`` trained with ``refground train``."""

    name: ClassVar[str]
    config_type: ClassVar[type[MethodConfig]]
    frozen_prefixes: ClassVar[tuple[str, ...]] = ()
    #: The config flag that says whether those parts are frozen (fine-tuned ones are saved).
    freeze_option: ClassVar[str | None] = None
    #: Options that change how inputs are prepared, not the weights' shapes: a loaded
    #: checkpoint may be run with other values (e.g. another proposer at test time).
    inference_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: MethodConfig, model: nn.Module, device: DeviceSpec = AUTO) -> None:
        self.config = config
        self.model = model
        self.device = resolve_device(device)
        self.model.to(self.device)

    # --- what each method supplies ------------------------------------------------------------

    @abstractmethod
    def collator(self) -> Callable[[Sequence[Sample]], Batch]:
        """A picklable ``samples -> Batch``; ``Batch["target"]`` holds ``target_boxes``."""

    @abstractmethod
    def loss(self, batch: Batch, outputs: Any) -> dict[str, Tensor]:
        """Scalar losses; ``"loss"`` is the one optimised (a mean over the batch)."""

    @abstractmethod
    def decode(self, batch: Batch, outputs: Any) -> tuple[Tensor, Tensor]:
        """``(B, 4)`` normalised cxcywh boxes and ``(B,)`` scores, one per sample."""

    def feature_groups(self) -> list[FeatureGroup]:
        """Tables of frozen features the collator can read instead of images; none unless a
        method says otherwise (and none while the parts they come from are fine-tuned)."""
        return []

    def use_features(self, tables: Mapping[str, FeatureTable]) -> None:
        """Read batches from these tables (built for :meth:`feature_groups`) where they can."""

    # --- shared behaviour ---------------------------------------------------------------------

    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        if not samples:
            return []
        batch = move_batch(self.collator()(samples), self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return self.predictions(samples, batch, self.model(batch))
        finally:
            self.model.train(was_training)

    def predictions(self, samples: Sequence[Sample], batch: Batch,
                    outputs: Any) -> list[Prediction]:
        """Predictions from the model's outputs; by default the decoded box per sample."""
        boxes_norm, scores = self.decode(batch, outputs)
        return predictions_from_normalized(samples, boxes_norm, scores)

    def state_to_save(self) -> dict[str, Tensor]:
        """The model's weights without the frozen pretrained parts (rebuilt from options);
        everything when :attr:`freeze_option` says they were fine-tuned."""
        state = self.model.state_dict()
        if self.freeze_option is not None and not getattr(self.config, self.freeze_option):
            return dict(state)
        return {k: v for k, v in state.items() if not k.startswith(self.frozen_prefixes)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``method.json`` and ``model.safetensors``; ``from_pretrained`` reads them."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_to_save().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / METHOD_FILE).write_text(json.dumps(
            {"method": self.name, "options": self.config.model_dump(mode="json")}, indent=2))
        return directory

    def load_weights(self, state: Mapping[str, Tensor], source: str) -> None:
        """Load saved weights, insisting that every non-frozen weight is present and fits."""
        expected = self.state_to_save()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelLoadError(
                f"{source} does not match a {self.name} model with these options: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for key, value in state.items():
            if value.shape != expected[key].shape:
                raise ModelLoadError(f"{source}: weight {key} has shape {tuple(value.shape)}, "
                                     f"the model expects {tuple(expected[key].shape)}")
        self.model.load_state_dict(dict(state), strict=False)

    @classmethod
    def from_options(cls: type[MethodT], options: Mapping[str, Any],
                     device: DeviceSpec = AUTO) -> MethodT:
        """A freshly initialised method from (validated) options."""
        return cls.build(parse_config(cls.config_type, options, cls.name), device)

    @classmethod
    @abstractmethod
    def build(cls: type[MethodT], config: Any, device: DeviceSpec = AUTO) -> MethodT:
        """Construct the method (and its randomly initialised model) from a config, on
        ``device`` (resolved by :func:`~refground.devices.resolve_device`)."""

    @classmethod
    def from_pretrained(cls: type[MethodT], directory: str | Path,
                        device: DeviceSpec = AUTO,
                        overrides: Mapping[str, Any] | None = None) -> MethodT:
        """Load a directory written by :meth:`save_pretrained` (or a Trainer checkpoint);
        ``overrides`` replaces saved :attr:`inference_options`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        spec = read_method_file(directory)
        if spec["method"] != cls.name:
            raise ModelLoadError(f"{directory} holds a {spec['method']!r} model, not {cls.name!r}")
        method = cls.from_options({**spec["options"], **dict(overrides or {})}, device)
        try:
            state = load_file(str(directory / WEIGHTS_FILE))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"cannot read weights {directory / WEIGHTS_FILE}: {exc}") from exc
        method.load_weights(state, str(directory / WEIGHTS_FILE))
        return method


def cache_features(method: TrainableMethod, samples: Sequence[Sample], dataset: Dataset, *,
                   log: Callable[[str], None] = print, progress: bool = False
                   ) -> dict[str, FeatureTable]:
    """Build (or check and reuse) the method's feature tables for ``samples`` under
    ``<root>/<dataset>/features/`` and hand them to the method; ``{}`` when it has none."""
    groups = method.feature_groups()
    if not groups:
        return {}
    directory = dataset.directory / FEATURES_DIR
    fingerprint = dataset_fingerprint(dataset.annotation_files())
    tables = {group.name: ensure_table(group, samples, directory, fingerprint, log, progress)
              for group in groups}
    method.use_features(tables)
    return tables


def read_method_file(directory: Path) -> dict[str, Any]:
    """``method.json`` of a saved method, checked for the two keys it must have."""
    path = directory / METHOD_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory} is not a saved refground model: {METHOD_FILE} missing")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("method"), str) or not isinstance(
            spec.get("options"), dict):
        raise ModelLoadError(f"{path} must hold {{'method': name, 'options': {{...}}}}")
    return spec


def predictions_from_normalized(samples: Sequence[Sample], boxes_norm: Tensor,
                                scores: Tensor) -> list[Prediction]:
    """Scale normalised cxcywh boxes back to each image's pixels, clipped to the image."""
    boxes_norm = boxes_norm.detach().float().cpu().clamp(0.0, 1.0)
    sizes = image_sizes(samples)
    xyxy = B.denormalize(B.cxcywh_to_xyxy(boxes_norm), sizes[:, 0], sizes[:, 1])
    xyxy = torch.minimum(torch.maximum(xyxy, torch.zeros(4)), sizes.repeat(1, 2))
    # a box of negative width after rounding would be "inverted": collapse it instead
    xyxy[:, 2:] = torch.maximum(xyxy[:, 2:], xyxy[:, :2])
    return [Prediction(s.sample_id, B.to_tuple(box), float(score))
            for s, box, score in zip(samples, xyxy, scores.detach().float().cpu(), strict=True)]


def trainable_factory(cls: type[MethodT]) -> Callable[..., MethodT]:
    """The registry factory of a trainable method: ``checkpoint=DIR`` loads, else builds new."""

    def factory(checkpoint: str | Path | None = None, device: DeviceSpec = AUTO,
                **options: Any) -> MethodT:
        if checkpoint is not None:
            from refground.vision.shipped import resolve_clip_name

            checkpoint = resolve_clip_name(str(checkpoint))  # a shipped model's short name
            fixed = sorted(set(options) - cls.inference_options)
            if fixed:
                allowed = ", ".join(sorted(cls.inference_options)) or "none"
                raise ConfigError(
                    f"{cls.name}: options {fixed} cannot be combined with checkpoint=; the "
                    f"checkpoint's method.json fixes them (changeable at load time: {allowed})")
            return cls.from_pretrained(checkpoint, device, options)
        return cls.from_options(options, device)

    factory.__doc__ = f"Build a {cls.name} method (``checkpoint=`` loads a trained one)."
    factory.summary = cls.summary  # type: ignore[attr-defined]  # what `refground methods` shows
    factory.trainable = True  # type: ignore[attr-defined]  # what trainable_methods() finds
    factory.method_type = cls  # type: ignore[attr-defined]  # what method_type() finds
    return factory
