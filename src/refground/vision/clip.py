"""CLIP image and text features over transformers: batched, normalised, cached.

Every zero-shot method scores crops or marked views of an image against an expression with
CLIP, and a structured method needs CLIP's patch and token states. :class:`ClipEncoder` wraps
one CLIP checkpoint (hub id or local directory, found and checked by
:mod:`refground.vision.loading`), encodes images in chunks of ``batch_size`` with the tensor
preprocessing of :mod:`refground.vision.preprocess`, and encodes texts once: repeated
expressions and the thousands of debiasing prompts hit the caches of
:mod:`refground.vision.text_cache` (in memory and, when ``cache_dir`` is set, a safetensors
file keyed by the model's identity).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from refground.devices import DeviceSpec, resolve_device
from refground.errors import ConfigError, ImageError, MissingDependencyError, ModelLoadError
from refground.vision.loading import (
    DEFAULT_CLIP_MODEL,
    check_clip_tokenizer,
    hub_offline,
    load_clip_components,
    resolve_model_source,
)
from refground.vision.preprocess import (
    ClipPreprocessConfig,
    pil_to_tensor,
    preprocess_pil,
    preprocess_tensor,
)
from refground.vision.text_cache import (
    TextCacheInfo,
    TextFeatureCache,
    TextFeatureStore,
    text_feature_identity,
)

try:
    from transformers import CLIPModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "CLIP features need transformers: pip install 'refground[clip]'"
    ) from exc


ImageLike = Image.Image | Tensor


def clip_image_features(model: CLIPModel, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, P, hidden)`` patch tokens and ``(N, D)`` normalised image embeddings, float32.

    The one definition of the image features every method reads: patch tokens are the last
    layer's (CLS dropped) through the vision tower's final layer norm, as CLS is before the
    projection; embeddings are the projected CLS, L2-normalised (CLIP compares by cosine).
    Gradients flow when the caller enables them (fine-tuning).
    """
    dtype = model.visual_projection.weight.dtype
    vision = model.vision_model(pixel_values=pixel_values.to(dtype))
    patches = model.vision_model.post_layernorm(vision.last_hidden_state[:, 1:])
    embeds = F.normalize(model.visual_projection(vision.pooler_output).float(), dim=-1)
    return patches.float(), embeds


def clip_text_features(model: CLIPModel, input_ids: Tensor,
                       attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, hidden)`` pooled (EOS) text states before the projection and ``(N, D)``
    normalised text embeddings, float32; the text counterpart of :func:`clip_image_features`."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    embeds = F.normalize(model.text_projection(pooled).float(), dim=-1)
    return pooled.float(), embeds


class ClipEncoder:
    """Batched, normalised CLIP features of images and texts, with a text feature cache.

    Build it with :meth:`from_pretrained` (hub id, OpenAI name such as ``"ViT-L/14"``, or a
    local directory), or directly from in-memory components (e.g. a model being trained).
    Feature methods return float32 tensors on ``device`` that are L2-normalised, so cosine
    similarity is a matrix product; :attr:`logit_scale` turns it into CLIP's logits.

    The text caches assume the weights are frozen: after changing them (fine-tuning), build a
    new encoder (with a new on-disk cache identity).
    ``model`` is moved to ``device``/``dtype`` in place and put in eval mode; ``device=None``
    (the constructor's default) leaves it where it is, ``"auto"`` puts it on the GPU when there
    is one (see :func:`refground.devices.resolve_device`).
    """

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase,
                 image_processor: Any | None = None, *, name: str = "<in-memory CLIP>",
                 device: DeviceSpec = None, dtype: torch.dtype | None = None,
                 batch_size: int = 64, cache_dir: str | Path | None = None,
                 flush_every: int = 512) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.device = (next(model.parameters()).device if device is None
                       else resolve_device(device))
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        text_config = model.config.text_config
        vision_config = model.config.vision_config
        check_clip_tokenizer(tokenizer, text_config, repr(name))
        image_size = _as_int(vision_config.image_size)
        if image_processor is None:
            self.preprocess_config = ClipPreprocessConfig.for_image_size(image_size)
            self.image_processor = _default_image_processor(image_size)
        else:
            self.preprocess_config = ClipPreprocessConfig.from_image_processor(image_processor)
            self.image_processor = image_processor
        if self.preprocess_config.output_size != (image_size, image_size):
            raise ModelLoadError(
                f"the image processor of {name!r} produces {self.preprocess_config.output_size} "
                f"images but the vision model takes {image_size}x{image_size}; fix crop_size in "
                "preprocessor_config.json"
            )
        self.max_length = min(int(getattr(tokenizer, "model_max_length", 77) or 77),
                              int(text_config.max_position_embeddings))
        self.patch_size = _as_int(vision_config.patch_size)
        self._identity: str | None = None
        store = None
        if cache_dir is not None:
            store = TextFeatureStore(Path(cache_dir).expanduser(), self.identity)
            weakref.finalize(self, store.flush_quietly)
        self._text_cache = TextFeatureCache(self.device, store, flush_every)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str] = DEFAULT_CLIP_MODEL,
                        device: DeviceSpec = "cpu", dtype: torch.dtype = torch.float32,
                        batch_size: int = 64, cache_dir: str | Path | None = None, *,
                        local_files_only: bool = False,
                        hub_cache_dir: str | Path | None = None) -> ClipEncoder:
        """Load a CLIP checkpoint through transformers' own ``from_pretrained``.

        ``name_or_path``: a local directory (``save_pretrained`` output), a hub id, or an
        OpenAI ``clip`` name (``"ViT-B/32"``, ``"ViT-L/14"``; ``"RN50x16"`` and other ResNet
        CLIPs raise :class:`UnsupportedModelError`). ``cache_dir`` is the directory of the
        *text feature* cache; ``hub_cache_dir`` the Hugging Face cache (default: its own).
        ``device``: ``"cpu"`` unless given (a building block: the methods that load a CLIP
        pass their own resolved device, ``"auto"`` by default); ``"auto"`` is accepted here too.
        """
        source = resolve_model_source(name_or_path, local_files_only=local_files_only,
                                      hub_cache_dir=hub_cache_dir)
        model, tokenizer, processor = load_clip_components(
            source, dtype, hub_cache_dir, local_files_only or hub_offline())
        return cls(model, tokenizer, processor, name=source.name, device=device, dtype=dtype,
                   batch_size=batch_size, cache_dir=cache_dir)

    # --- properties ---------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        """Size ``D`` of the joint image-text embedding."""
        return int(self.model.text_projection.out_features)

    @property
    def logit_scale(self) -> float:
        """CLIP's learnt temperature, exponentiated: ``logits = logit_scale * cosine``."""
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def image_size(self) -> int:
        """Side of the square images the vision tower takes."""
        return _as_int(self.model.config.vision_config.image_size)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image at :attr:`image_size` (CLS excluded)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def vision_hidden_size(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    @property
    def text_hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def identity(self) -> str:
        """A fingerprint of everything text features depend on (the on-disk cache key);
        see :func:`~refground.vision.text_cache.text_feature_identity`. Computed once."""
        if self._identity is None:
            self._identity = text_feature_identity(self.model, self.tokenizer, self.max_length)
        return self._identity

    # --- images -------------------------------------------------------------------------------

    def preprocess_tensor(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """CLIP preprocessing of ``uint8`` (or [0, 1] float) image tensors, on :attr:`device`."""
        return preprocess_tensor(images, self.preprocess_config, device=self.device)

    def preprocess_pil(self, images: Sequence[Image.Image]) -> Tensor:
        """Reference preprocessing through the model's own Hugging Face image processor."""
        return preprocess_pil(images, self.image_processor).to(self.device)

    def encode_images(self, images: Sequence[ImageLike] | Tensor) -> Tensor:
        """``(N, D)`` normalised features of PIL images or ``(3, H, W)`` image tensors.

        Images of any sizes are converted and preprocessed chunk by chunk (``batch_size`` at a
        time), so memory stays bounded however many views a method renders.
        """
        count = len(images)
        chunks: list[Tensor] = []
        for start in range(0, count, self.batch_size):
            chunk = images[start:start + self.batch_size]
            if isinstance(chunk, Tensor):
                pixels = self.preprocess_tensor(chunk)
            else:
                pixels = self.preprocess_tensor([_to_tensor(image, start + i)
                                                 for i, image in enumerate(chunk)])
            chunks.append(self.encode_image_tensors(pixels))
        if not chunks:
            return torch.empty((0, self.embed_dim), device=self.device)
        return torch.cat(chunks)

    def encode_image_tensors(self, pixel_values: Tensor) -> Tensor:
        """``(N, D)`` normalised features of already preprocessed ``(N, 3, S, S)`` pixels."""
        _check_pixels(pixel_values, self.image_size)
        return self.image_features(pixel_values)[1]

    def image_features(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`clip_image_features` of preprocessed pixels, ``batch_size`` at a time:
        ``(N, P, hidden)`` patch tokens and ``(N, D)`` normalised embeddings."""
        _check_pixels(pixel_values, self.image_size)
        patches, embeds = [], []
        with torch.inference_mode():
            for start in range(0, pixel_values.shape[0], self.batch_size):
                chunk = pixel_values[start:start + self.batch_size].to(self.device)
                tokens, pooled = clip_image_features(self.model, chunk)
                patches.append(tokens)
                embeds.append(pooled)
        if not embeds:
            return (torch.empty((0, self.num_patches, self.vision_hidden_size),
                                device=self.device),
                    torch.empty((0, self.embed_dim), device=self.device))
        # normal tensors: inference tensors refuse autograd later
        return torch.cat(patches).clone(), torch.cat(embeds).clone()

    def patch_tokens(self, pixel_values: Tensor, *, grad: bool = False,
                     interpolate_pos_encoding: bool = False) -> Tensor:
        """``(N, P, hidden)`` vision tokens of the last layer, CLS dropped, before projection.

        ``grad=True`` keeps the graph (fine-tuning); otherwise runs without it. Set
        ``interpolate_pos_encoding`` to feed images larger than :attr:`image_size`.
        """
        if not interpolate_pos_encoding:
            _check_pixels(pixel_values, self.image_size)
        outputs = []
        with torch.set_grad_enabled(grad):
            for start in range(0, pixel_values.shape[0], self.batch_size):
                chunk = pixel_values[start:start + self.batch_size].to(self.device, self.dtype)
                hidden = self.model.vision_model(
                    pixel_values=chunk, interpolate_pos_encoding=interpolate_pos_encoding
                ).last_hidden_state
                outputs.append(hidden[:, 1:].float())
        if not outputs:
            return torch.empty((0, self.num_patches, self.vision_hidden_size), device=self.device)
        return torch.cat(outputs)

    # --- texts --------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """CLIP tokens padded to the longest text, truncated to the model's context length."""
        if isinstance(texts, str):
            raise ConfigError("texts must be a sequence of strings, not one string")
        encoded = self.tokenizer(list(texts), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"].to(self.device),
                "attention_mask": encoded["attention_mask"].to(self.device)}

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """``(N, D)`` normalised text features; each distinct text is encoded once.

        Looks up the in-memory cache, then the on-disk cache (when ``cache_dir`` was given),
        and runs the text tower only on what is left, ``batch_size`` texts at a time.
        """
        if isinstance(texts, str):
            raise ConfigError("texts must be a sequence of strings, not one string")
        missing = self._text_cache.missing(texts)
        if missing:
            self._text_cache.add(missing, self.text_features(missing)[1])
        if not texts:
            return torch.empty((0, self.embed_dim), device=self.device)
        return self._text_cache.stack(texts)

    def text_features(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """:func:`clip_text_features` of texts, ``batch_size`` at a time (no cache): ``(N,
        hidden)`` pooled states and ``(N, D)`` normalised embeddings."""
        pooled, embeds = [], []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenize(texts[start:start + self.batch_size])
                states, features = clip_text_features(self.model, tokens["input_ids"],
                                                      tokens["attention_mask"])
                pooled.append(states)
                embeds.append(features)
        if not embeds:
            return (torch.empty((0, self.text_hidden_size), device=self.device),
                    torch.empty((0, self.embed_dim), device=self.device))
        return torch.cat(pooled).clone(), torch.cat(embeds).clone()

    def text_tokens(self, texts: Sequence[str], *, grad: bool = False) -> tuple[Tensor, Tensor]:
        """Last-layer text token states ``(N, L, hidden)`` and a bool mask ``(N, L)``.

        States are after the final layer norm and before the projection; ``mask`` is True on
        real tokens (``<|startoftext|>`` and ``<|endoftext|>`` included), False on padding.
        """
        tokens = self.tokenize(texts)
        outputs = []
        with torch.set_grad_enabled(grad):
            for start in range(0, tokens["input_ids"].shape[0], self.batch_size):
                chunk = {k: v[start:start + self.batch_size] for k, v in tokens.items()}
                outputs.append(self.model.text_model(**chunk).last_hidden_state.float())
        mask = tokens["attention_mask"].bool()
        if not outputs:
            return torch.empty((0, mask.shape[-1], self.text_hidden_size), device=self.device), mask
        return torch.cat(outputs), mask

    # --- cache management ---------------------------------------------------------------------

    def cache_info(self) -> TextCacheInfo:
        return self._text_cache.info()

    def flush(self) -> None:
        """Write pending text features to the on-disk cache now (also done at exit and GC)."""
        self._text_cache.flush()

    def __enter__(self) -> ClipEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()

    def __repr__(self) -> str:
        return (f"ClipEncoder({self.name!r}, device={str(self.device)!r}, dtype={self.dtype}, "
                f"embed_dim={self.embed_dim}, image_size={self.image_size})")


# --- helpers ----------------------------------------------------------------------------------

def _as_int(value: int | Sequence[int]) -> int:
    """Config sizes may be ints or (h, w) pairs; CLIP's are square."""
    if isinstance(value, int):
        return value
    first, *rest = value
    if any(v != first for v in rest):
        raise ModelLoadError(f"only square CLIP image and patch sizes are supported, got {value}")
    return int(first)


def _default_image_processor(image_size: int) -> Any:
    from refground.vision.tiny_clip import clip_image_processor

    return clip_image_processor(image_size)


def _to_tensor(image: ImageLike, index: int) -> Tensor:
    if isinstance(image, Image.Image):
        return pil_to_tensor(image)
    if isinstance(image, Tensor):
        return image
    raise ImageError(f"image {index} is a {type(image).__name__}; give a PIL image or a "
                     "(3, H, W) tensor (load files with refground.images.load_image)")


def _check_pixels(pixel_values: Tensor, image_size: int) -> None:
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ImageError(f"pixel_values must be (N, 3, H, W), got {tuple(pixel_values.shape)}")
    if tuple(pixel_values.shape[-2:]) != (image_size, image_size):
        raise ImageError(
            f"pixel_values are {tuple(pixel_values.shape[-2:])} but the model takes "
            f"{image_size}x{image_size}; preprocess with ClipEncoder.preprocess_tensor"
        )
