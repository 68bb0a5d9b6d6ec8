"""Vision building blocks: CLIP features (:mod:`.clip`), checkpoint loading (:mod:`.loading`),
tensor preprocessing, tiny test models.

Names are imported lazily, so ``import refground.vision`` stays cheap and does not pull in
transformers until a CLIP name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ClipEncoder": "refground.vision.clip",
    "DEFAULT_CLIP_MODEL": "refground.vision.loading",
    "ModelLoadError": "refground.errors",
    "UnsupportedModelError": "refground.vision.loading",
    "TextCacheInfo": "refground.vision.text_cache",
    "ClipPreprocessConfig": "refground.vision.preprocess",
    "preprocess_tensor": "refground.vision.preprocess",
    "preprocess_pil": "refground.vision.preprocess",
    "pil_to_tensor": "refground.vision.preprocess",
    "build_tiny_clip": "refground.vision.tiny_clip",
    "save_tiny_clip": "refground.vision.tiny_clip",
    "save_clip": "refground.vision.tiny_clip",
    "train_clip_tokenizer": "refground.vision.tiny_clip",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refground.vision' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
