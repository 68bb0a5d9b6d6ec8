"""Models that ship inside the package, so the zero-shot methods run on a fresh offline machine.

``synthref-erpa`` (and ``synthref-erpa-report``, ``synthref-regressor``, ``synthref-detr``) are
trained checkpoints on SynthRef with that CLIP (``build_method("erpa",
checkpoint="synthref-erpa")``); ``synthref-det`` is the offline detector (the ``centernet`` and
``auto`` proposers). Each has its ``training.json``.

``synthref-clip`` is a small CLIP trained contrastively on SynthRef's train split
(``refground pretrain-clip``). It knows SynthRef's shapes, colours and marked-view prompts and
nothing else: use a real CLIP (``-o clip=openai/clip-vit-base-patch32`` or a local copy) on real
images.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.errors import ConfigError
from refground.vision.clip import ClipEncoder

SHIPPED_CLIP = "synthref-clip"
DEBIAS_FILE = "debias_expressions.txt"


def shipped_path(name: str) -> Path | None:
    """The directory of a shipped model, or ``None`` if ``name`` is not one."""
    path = Path(str(resources.files("refground") / "assets" / name))
    return path if path.is_dir() else None


def resolve_clip_name(name: str) -> str:
    """Map a shipped model's short name (``synthref-clip``, ``synthref-erpa``) to its
    directory; other names pass through."""
    path = shipped_path(name)
    return str(path) if path is not None else name


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def load_clip(name: str, device: DeviceSpec = AUTO, batch_size: int = 64,
              cache_dir: str | None = None, dtype: str = "float32") -> ClipEncoder:
    """Load (once per process) a CLIP encoder by shipped name, hub id or local directory.

    ``device`` (default ``"auto"``: the GPU when there is one, else the CPU) is resolved
    before the cache is consulted, so ``"auto"`` and the device it means share one encoder.
    ``dtype="bfloat16"`` halves the cost of the forward passes on CPUs with bf16 support (and
    on GPUs) at the price of about three significant digits in the similarities.
    """
    return _load_clip(name, str(resolve_device(device)), batch_size, cache_dir, dtype)


@lru_cache(maxsize=4)
def _load_clip(name: str, device: str, batch_size: int, cache_dir: str | None,
               dtype: str) -> ClipEncoder:
    return ClipEncoder.from_pretrained(resolve_clip_name(name), device=device,
                                       dtype=parse_dtype(dtype), batch_size=batch_size,
                                       cache_dir=cache_dir)


def bundled_debias_expressions(name: str) -> list[str] | None:
    """Debiasing expressions saved next to a CLIP checkpoint (one per line), if any."""
    path = Path(resolve_clip_name(name)) / DEBIAS_FILE
    if not path.is_file():
        return None
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
