"""CLIP image and text features over transformers: batched, normalised, cached, loaded safely.

Every zero-shot method scores crops or marked views of an image against an expression with
CLIP, and a structured method needs CLIP's patch and token states. :class:`ClipEncoder` is the
one place that loads a CLIP checkpoint (hub id or local directory), encodes images in chunks
of ``batch_size`` with the tensor preprocessing of :mod:`refground.vision.preprocess`, and
encodes texts once: repeated expressions and the thousands of debiasing prompts hit an
in-memory cache and, when ``cache_dir`` is set, a safetensors file keyed by the model's identity.

Loading refuses to hand back something that would quietly produce garbage. transformers 5
builds an empty two-token tokenizer when a directory has no tokenizer files, and fills weights
missing from a checkpoint with random values; both are detected here and raised as
:class:`ModelLoadError` with what is missing and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from refground.devices import DeviceSpec, resolve_device
from refground.errors import (
    ConfigError,
    ImageError,
    MissingDependencyError,
    ModelLoadError,
    RefgroundError,
)
from refground.vision.loading import check_tokenizer_vocab, check_weights_loaded
from refground.vision.preprocess import (
    ClipPreprocessConfig,
    pil_to_tensor,
    preprocess_pil,
    preprocess_tensor,
)

try:
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "CLIP features need transformers: pip install 'refground[clip]'"
    ) from exc

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

#: OpenAI ``clip`` package names (as OpenAI's clip.load takes them) -> transformers hub ids.
OPENAI_VIT_ALIASES: dict[str, str] = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
#: OpenAI ResNet CLIP names; transformers' ``CLIPModel`` implements the ViT architecture only.
OPENAI_RESNET_NAMES: frozenset[str] = frozenset({"RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"})
_RESNET_PATTERN = re.compile(r"(?i)(^|[/_.\-])(rn|resnet)\d+(x\d+)?([/_.\-]|$)")
_OPENCLIP_FILES = ("open_clip_config.json", "open_clip_pytorch_model.bin",
                   "open_clip_model.safetensors")

#: Fewer tokens than this cannot be a real tokenizer; transformers 5's empty fallback has 2.
_PROBE_TEXT = "a photo of a cat"
_CACHE_FORMAT = "refground-clip-text-features-v1"


class UnsupportedModelError(ModelLoadError):
    """The name is a model transformers' ``CLIPModel`` cannot run (ResNet CLIP, OpenCLIP, ...)."""


# --- finding and loading a checkpoint ---------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """Where a name resolved to: a local directory, or a hub id transformers may download."""

    name: str
    location: str
    is_local: bool
    tried: tuple[str, ...] = ()


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted.

    Reads ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` at call time: huggingface_hub reads
    them once at import, so a variable set later (a test, a notebook cell) would be missed.
    """
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _resnet_error(name: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{name!r} is an OpenAI ResNet CLIP (RN50, RN101, RN50x4, RN50x16, RN50x64); "
        "transformers' CLIPModel implements only the ViT CLIP architecture, so refground cannot "
        "load it. Use a ViT backbone: 'openai/clip-vit-large-patch14' (ViT-L/14, the strongest "
        "OpenAI one), 'openai/clip-vit-base-patch16', or the default "
        f"{DEFAULT_CLIP_MODEL!r}; or a local directory saved with save_pretrained."
    )


def _check_local_dir(name: str, path: Path) -> None:
    """Refuse directories that hold no transformers CLIP, naming what they do hold."""
    if (path / "config.json").is_file():
        return
    present = sorted(p.name for p in path.iterdir())
    if any(f in present for f in _OPENCLIP_FILES) or any(p.endswith(".pt") for p in present):
        raise UnsupportedModelError(
            f"{name!r} holds an OpenCLIP / OpenAI-format checkpoint ({', '.join(present[:8])}), "
            "not a transformers CLIPModel; refground loads CLIP through transformers only. "
            "Use a transformers CLIP directory (config.json, model.safetensors, tokenizer and "
            "preprocessor files), e.g. one saved with save_pretrained."
        )
    raise ModelLoadError(
        f"directory {str(path)!r} has no config.json, so it is not a saved transformers model "
        f"(it holds: {', '.join(present[:12]) or 'nothing'}). Point to the directory that "
        "save_pretrained wrote."
    )


def resolve_model_source(name_or_path: str | os.PathLike[str], *, local_files_only: bool = False,
                         hub_cache_dir: str | Path | None = None) -> ModelSource:
    """Turn a user's model name into a local directory or a hub id, without touching the network.

    Order: an existing local directory; OpenAI ``clip`` names (``ViT-B/32`` -> hub id, ``RN50x16``
    -> :class:`UnsupportedModelError`); a snapshot in the local Hugging Face cache. Otherwise the
    hub id is returned for transformers to download, unless the Hub is off (``HF_HUB_OFFLINE``,
    ``local_files_only``), in which case :class:`ModelLoadError` says what was tried.
    """
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ConfigError("a CLIP model name or directory is required, got an empty string")
    path = Path(name).expanduser()
    if path.is_dir():
        _check_local_dir(name, path)
        return ModelSource(name, str(path), True, (f"local directory {str(path)!r}",))
    if path.is_absolute() or name.startswith((".", "~")) or "\\" in name:
        raise ModelLoadError(
            f"CLIP model directory {str(path)!r} does not exist"
            + (" (it is a file)" if path.exists() else "")
            + "; pass the directory that save_pretrained wrote, or a hub id such as "
            f"{DEFAULT_CLIP_MODEL!r}"
        )
    if name in OPENAI_RESNET_NAMES or (_RESNET_PATTERN.search(name) and "clip" in name.lower()):
        raise _resnet_error(name)
    repo_id = OPENAI_VIT_ALIASES.get(name, name)
    tried = [f"a local directory {name!r}: it does not exist"
             + (" (it is a file)" if path.exists() else "")]
    from huggingface_hub import constants, snapshot_download

    cache = str(hub_cache_dir or constants.HF_HUB_CACHE)
    try:
        snapshot = snapshot_download(repo_id, local_files_only=True, cache_dir=hub_cache_dir)
    except OSError:  # LocalEntryNotFoundError
        tried.append(f"the Hugging Face cache {cache!r}: no snapshot of {repo_id!r}")
    except ValueError as exc:  # HFValidationError: not of the form owner/name
        raise ModelLoadError(
            f"cannot load CLIP model {name!r}: it is not an existing local directory, nor a "
            f"valid hub id ({exc}). Pass a directory saved with save_pretrained or a hub id "
            f"such as {DEFAULT_CLIP_MODEL!r}."
        ) from exc
    else:
        snapshot_path = Path(snapshot)
        _check_local_dir(name, snapshot_path)
        return ModelSource(name, str(snapshot_path), True,
                           (f"cached snapshot {str(snapshot_path)!r}",))
    offline = local_files_only or hub_offline()
    if offline:
        why = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        tried.append(f"the Hugging Face Hub: not contacted ({why})")
        raise ModelLoadError(
            f"cannot load CLIP model {name!r}. Tried " + "; ".join(tried) + ". No hub is "
            "reachable, so a local directory is needed: on a machine with network access run "
            f"ClipEncoder.from_pretrained({repo_id!r}) or `hf download {repo_id}` (or "
            "save_pretrained the model, tokenizer and image processor), copy that directory "
            "here and pass its path."
        )
    tried.append(f"the Hugging Face Hub ({repo_id!r})")
    return ModelSource(name, repo_id, False, tuple(tried))


def _load_step(what: str, source: ModelSource, load: Callable[[], Any]) -> Any:
    """Run one transformers loading call, turning its errors into :class:`ModelLoadError`."""
    try:
        return load()
    except RefgroundError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        if source.is_local:
            where = f"directory {source.location!r}"
            hint = " Save the model, tokenizer and image processor there with save_pretrained."
        else:
            where = "the Hugging Face Hub or its local cache"
            hint = (" Tried " + "; ".join(source.tried) + ". If no hub is reachable from here, "
                    "download the model elsewhere and pass a local directory.")
        raise ModelLoadError(
            f"cannot load the {what} of CLIP model {source.name!r} from {where}: "
            f"{str(exc).rstrip('. ')}.{hint}"
        ) from exc


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, text_config: Any, source: str) -> None:
    """Raise :class:`ModelLoadError` unless ``tokenizer`` can drive this CLIP text model.

    Checks: a plausible vocabulary (transformers 5 returns a 2-token tokenizer instead of
    raising when the files are missing), ids within the embedding table, and that the token
    the text model pools at (its ``eos_token_id``) really ends a tokenised text.
    """
    check_tokenizer_vocab(tokenizer, source, int(text_config.vocab_size))
    eos = tokenizer.eos_token_id
    pool_id = text_config.eos_token_id
    ids = list(tokenizer(_PROBE_TEXT)["input_ids"])
    if isinstance(pool_id, int) and pool_id == 2:
        # Legacy configs: CLIPTextModel pools at the largest id of each text (OpenAI's eot).
        if eos is None or max(ids) != eos:
            raise ModelLoadError(
                f"the text model of {source} pools at the largest token id (legacy "
                f"eos_token_id=2), but the tokenizer's largest id in {ids} is not its eos token "
                f"{eos}; text features would be read at the wrong position"
            )
    elif isinstance(pool_id, int) and pool_id not in ids:
        raise ModelLoadError(
            f"the text model of {source} pools at token id {pool_id} (config eos_token_id), "
            f"but the tokenizer does not end texts with it ({_PROBE_TEXT!r} -> {ids}, eos "
            f"{eos}); text features would be read at the wrong position"
        )


def _load_components(source: ModelSource, dtype: torch.dtype, hub_cache_dir: str | Path | None,
                     local_files_only: bool) -> tuple[CLIPModel, PreTrainedTokenizerBase, Any]:
    hub: dict[str, Any] = {}
    if not source.is_local:
        hub = {"cache_dir": hub_cache_dir, "local_files_only": local_files_only}
    config = _load_step("config", source,
                        lambda: AutoConfig.from_pretrained(source.location, **hub))
    model_type = getattr(config, "model_type", None)
    if model_type != "clip":
        raise UnsupportedModelError(
            f"{source.name!r} is a {model_type!r} model, not a CLIP model (model_type 'clip'); "
            "ClipEncoder needs both CLIP towers, e.g. 'openai/clip-vit-base-patch32'"
        )
    tokenizer = _load_step("tokenizer", source,
                           lambda: AutoTokenizer.from_pretrained(source.location, **hub))
    check_tokenizer(tokenizer, config.text_config, repr(source.name))
    model, info = _load_step("weights", source, lambda: CLIPModel.from_pretrained(
        source.location, dtype=dtype, output_loading_info=True, **hub))
    check_weights_loaded(info, f"of CLIP model {source.name!r}", "CLIPModel")
    try:
        processor = AutoImageProcessor.from_pretrained(source.location, **hub)
    except (OSError, ValueError) as exc:
        logger.warning("no image processor config for %r (%s); using OpenAI CLIP preprocessing "
                       "at the model's image size", source.name, exc)
        processor = None
    return model, tokenizer, processor


# --- the on-disk text feature cache -----------------------------------------------------------

class _TextFeatureStore:
    """Text features on disk: one safetensors file per model identity, read lazily.

    The file holds one ``features`` matrix and, in its metadata, the row keys (a hash of the
    model identity and the text, so the text itself is never stored). New rows are kept
    pending and written by :meth:`flush`, which merges what is on disk (another process may
    have added rows) and replaces the file atomically (temp file + ``os.replace``): a crash
    never leaves a half-written cache, and concurrent writers lose rows, never the file.
    """

    def __init__(self, directory: Path, identity: str) -> None:
        self.directory = directory
        self.identity = identity
        self.path = directory / f"clip-text-{identity[:20]}.safetensors"
        self._rows: dict[str, Tensor] | None = None
        self._pending: dict[str, Tensor] = {}

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.identity}\0{text}".encode()).hexdigest()[:40]

    def _read(self) -> dict[str, Tensor]:
        if not self.path.is_file():
            return {}
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if (metadata.get("format") != _CACHE_FORMAT
                        or metadata.get("identity") != self.identity):
                    raise ValueError("written by another model or format")
                keys = json.loads(metadata["keys"])
                features = handle.get_tensor("features")
            if features.shape[0] != len(keys):
                raise ValueError(f"{features.shape[0]} rows for {len(keys)} keys")
        except Exception as exc:  # any unreadable cache is only a cache miss
            logger.warning("ignoring unreadable text feature cache %s: %s", self.path, exc)
            return {}
        return dict(zip(keys, features.unbind(0), strict=True))

    def get(self, text: str) -> Tensor | None:
        if self._rows is None:
            self._rows = self._read()
        return self._rows.get(self.key(text))

    def put(self, text: str, row: Tensor) -> None:
        if self._rows is None:
            self._rows = self._read()
        key = self.key(text)
        row = row.detach().float().cpu()
        self._rows[key] = row
        self._pending[key] = row

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        if not self._pending:
            return
        from safetensors.torch import save_file

        rows = self._read()
        rows.update(self._rows or {})
        rows.update(self._pending)
        keys = list(rows)
        features = torch.stack([rows[k] for k in keys]).contiguous()
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.directory, prefix=".clip-text-",
                                        suffix=".tmp")
        os.close(handle)
        try:
            save_file({"features": features}, temp, metadata={
                "format": _CACHE_FORMAT, "identity": self.identity, "keys": json.dumps(keys)})
            os.replace(temp, self.path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        self._rows = rows
        self._pending = {}


def _flush_quietly(store: _TextFeatureStore) -> None:
    """Finalizer: write pending rows at garbage collection or exit, never raising."""
    try:
        store.flush()
    except Exception as exc:  # at interpreter exit the directory may be gone
        logger.warning("could not write text feature cache %s: %s", store.path, exc)


# --- the encoder ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextCacheInfo:
    """Counters of :meth:`ClipEncoder.encode_texts`: how often the caches saved a forward."""

    memory_hits: int
    disk_hits: int
    encoded: int
    size: int


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
        self.flush_every = flush_every
        text_config = model.config.text_config
        vision_config = model.config.vision_config
        check_tokenizer(tokenizer, text_config, repr(name))
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
        self._text_cache: dict[str, Tensor] = {}
        self._memory_hits = 0
        self._disk_hits = 0
        self._encoded = 0
        self._identity: str | None = None
        self._store: _TextFeatureStore | None = None
        if cache_dir is not None:
            self._store = _TextFeatureStore(Path(cache_dir).expanduser(), self.identity)
            weakref.finalize(self, _flush_quietly, self._store)

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
        model, tokenizer, processor = _load_components(
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
        """A fingerprint of everything text features depend on (the on-disk cache key).

        Hashes the text config, the tokenizer, the context length, the dtype and a fixed sample
        of every text-tower weight, so a re-saved copy of a model shares its cache while a
        fine-tuned one does not; sampling keeps it cheap even for ViT-L.
        """
        if self._identity is None:
            self._identity = _text_identity(self.model, self.tokenizer, self.max_length)
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
        missing: list[str] = []
        seen: set[str] = set()
        for text in texts:
            if text in self._text_cache:
                self._memory_hits += 1
                continue
            if text in seen:
                continue
            row = self._store.get(text) if self._store is not None else None
            if row is not None:
                self._text_cache[text] = row.to(self.device)
                self._disk_hits += 1
            else:
                missing.append(text)
                seen.add(text)
        if missing:
            features = self.text_features(missing)[1]
            for text, row in zip(missing, features.unbind(0), strict=True):
                self._text_cache[text] = row
                if self._store is not None:
                    self._store.put(text, row)
            self._encoded += len(missing)
            if self._store is not None and self._store.pending >= self.flush_every:
                self._store.flush()
        if not texts:
            return torch.empty((0, self.embed_dim), device=self.device)
        return torch.stack([self._text_cache[text] for text in texts])

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
        return TextCacheInfo(self._memory_hits, self._disk_hits, self._encoded,
                             len(self._text_cache))

    def flush(self) -> None:
        """Write pending text features to the on-disk cache now (also done at exit and GC)."""
        if self._store is not None:
            self._store.flush()

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


def _text_identity(model: CLIPModel, tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    digest = hashlib.sha256(_CACHE_FORMAT.encode())
    text_config = model.config.text_config
    fields = {k: getattr(text_config, k, None) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "max_position_embeddings", "eos_token_id", "hidden_act")}
    fields["max_length"] = max_length
    fields["dtype"] = str(next(model.parameters()).dtype)
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(
        sorted(tokenizer.get_vocab().items()))
    digest.update(vocab.encode())
    weights = dict(model.text_model.state_dict())
    weights["text_projection.weight"] = model.text_projection.weight
    for name in sorted(weights):
        tensor = weights[name].detach()
        flat = tensor.reshape(-1)
        index = torch.linspace(0, max(flat.numel() - 1, 0), min(flat.numel(), 1024),
                               device=flat.device).long()
        sample = flat[index].float().cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample)
    return digest.hexdigest()
