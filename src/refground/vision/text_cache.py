"""CLIP text features kept across calls: in memory, and on disk keyed by the model's identity.

Zero-shot methods encode the same expressions again and again, and visual-prompt debiasing
(Shtedritski et al. 2023, "What does CLIP know about a red circle?") compares every view with
thousands of other expressions; :class:`TextFeatureCache` lets
:class:`~refground.vision.clip.ClipEncoder` run the text tower once per distinct text and
model. Its disk half (:class:`TextFeatureStore`) is one safetensors file per
:func:`text_feature_identity`, so a re-saved copy of a model shares it and a fine-tuned one
does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import CLIPModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CACHE_FORMAT = "refground-clip-text-features-v1"


@dataclass(frozen=True)
class TextCacheInfo:
    """Counters of :class:`TextFeatureCache`: how often the caches saved a forward pass."""

    memory_hits: int
    disk_hits: int
    encoded: int
    size: int


def text_feature_identity(model: CLIPModel, tokenizer: PreTrainedTokenizerBase,
                          max_length: int) -> str:
    """A fingerprint of everything a CLIP's text features depend on (the on-disk cache key).

    Hashes the text config, the tokenizer, the context length, the dtype and a fixed sample
    of every text-tower weight, so a re-saved copy of a model shares its cache while a
    fine-tuned one does not; sampling keeps it cheap even for ViT-L.
    """
    digest = hashlib.sha256(CACHE_FORMAT.encode())
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


class TextFeatureStore:
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
                if (metadata.get("format") != CACHE_FORMAT
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
                "format": CACHE_FORMAT, "identity": self.identity, "keys": json.dumps(keys)})
            os.replace(temp, self.path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        self._rows = rows
        self._pending = {}

    def flush_quietly(self) -> None:
        """Finalizer: write pending rows at garbage collection or exit, never raising."""
        try:
            self.flush()
        except Exception as exc:  # at interpreter exit the directory may be gone
            logger.warning("could not write text feature cache %s: %s", self.path, exc)


class TextFeatureCache:
    """Text features by text: an in-memory dict in front of an optional :class:`TextFeatureStore`.

    Rows live on ``device``; the counters say how often a forward pass was saved. The rows
    assume the text tower is frozen: after changing its weights, make a new cache (and a new
    identity for the store).
    """

    def __init__(self, device: torch.device, store: TextFeatureStore | None = None,
                 flush_every: int = 512) -> None:
        self.device = device
        self.store = store
        self.flush_every = flush_every
        self._rows: dict[str, Tensor] = {}
        self._memory_hits = 0
        self._disk_hits = 0
        self._encoded = 0

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts of ``texts`` found in neither cache, in first-seen order.

        Rows found on disk are kept in memory from then on.
        """
        missing: list[str] = []
        seen: set[str] = set()
        for text in texts:
            if text in self._rows:
                self._memory_hits += 1
                continue
            if text in seen:
                continue
            row = self.store.get(text) if self.store is not None else None
            if row is not None:
                self._rows[text] = row.to(self.device)
                self._disk_hits += 1
            else:
                missing.append(text)
                seen.add(text)
        return missing

    def add(self, texts: Sequence[str], features: Tensor) -> None:
        """Keep freshly encoded rows; write the store once ``flush_every`` rows are pending."""
        for text, row in zip(texts, features.unbind(0), strict=True):
            self._rows[text] = row
            if self.store is not None:
                self.store.put(text, row)
        self._encoded += len(texts)
        if self.store is not None and self.store.pending >= self.flush_every:
            self.store.flush()

    def stack(self, texts: Sequence[str]) -> Tensor:
        """``(N, D)`` cached rows of ``texts`` (every one must be cached)."""
        return torch.stack([self._rows[text] for text in texts])

    def info(self) -> TextCacheInfo:
        return TextCacheInfo(self._memory_hits, self._disk_hits, self._encoded, len(self._rows))

    def flush(self) -> None:
        """Write pending rows to the store now."""
        if self.store is not None:
            self.store.flush()
