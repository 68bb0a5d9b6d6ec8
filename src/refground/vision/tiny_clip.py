"""Build small, real CLIP models: for tests, for offline demos, and as a starting point to train.

Nothing can be downloaded in tests, yet the code under test must be the code users run. So the
tests build a tiny :class:`transformers.CLIPModel`, a real ``CLIPTokenizer`` and a real
``CLIPImageProcessor`` config, ``save_pretrained`` all three into one directory, and load it back
through :meth:`refground.vision.clip.ClipEncoder.from_pretrained`, exactly like a hub snapshot.

The tokenizer is OpenAI CLIP's pipeline (NFC + lowercase normaliser, CLIP's split regex, byte-level
BPE with ``</w>`` word ends, ``<|startoftext|>`` / ``<|endoftext|>`` added around every text),
with merges learnt from a small corpus by :func:`train_clip_bpe`. That trainer is ours, not
``tokenizers.trainers.BpeTrainer``: the library breaks ties between equally frequent pairs in
hash-map order, so the same corpus gave a different vocabulary on every run; ours breaks ties
lexicographically, so the same corpus and seed always give byte-identical files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import torch

from refground.errors import ConfigError, MissingDependencyError

try:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "building a CLIP model needs transformers: pip install 'refground[clip]'"
    ) from exc

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

#: A small corpus in the language of referring expressions (SynthRef-like scenes and RefCOCO-like
#: phrases), used when no texts are given. Every byte stays encodable whatever the corpus.
DEFAULT_CORPUS: tuple[str, ...] = (
    "the man in the yellow coat",
    "the glass left of the plate",
    "a red square left of the blue circle",
    "the large green triangle in the top right",
    "the small purple circle below the orange square",
    "the second cup from the left",
    "the leftmost person",
    "the rightmost car next to the tree",
    "woman on the right holding an umbrella",
    "the dog behind the white fence",
    "the bottom left cyan rectangle",
    "the grey cat on the sofa",
    "this is a photo of a black horse",
    "a picture of a pizza",
    "the biggest banana closest to the camera",
    "top middle brown bear",
    "the boy wearing a striped shirt above the table",
    "the chair between two people",
    "the third sheep from the right, facing left",
    "an elephant near the water",
)


class TinyClip(NamedTuple):
    """What :func:`build_tiny_clip` returns; unpacks as ``model, tokenizer, image_processor``."""

    model: CLIPModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table, in OpenAI's order (printable bytes first).

    With this order a vocabulary built from OpenAI's merges list gets OpenAI's token ids.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order is OpenAI's: it fixes the ids of the 512 base tokens


def _pretokenize(texts: Iterable[str]) -> Counter[str]:
    """Words of ``texts`` as CLIP sees them: normalised, split, mapped to byte-level characters."""
    backend = CLIPTokenizer().backend_tokenizer
    assert backend.normalizer is not None and backend.pre_tokenizer is not None
    words: Counter[str] = Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
            if piece and piece not in (BOS_TOKEN, EOS_TOKEN):
                words[piece] += 1
    return words


def _merge_word(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def train_clip_bpe(texts: Iterable[str], vocab_size: int = 1000
                   ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style byte-level BPE: ``(vocab, merges)`` for ``CLIPTokenizer(vocab, merges)``.

    Layout: ids 0 and 1 are ``<|startoftext|>`` and ``<|endoftext|>``, then the 256 byte
    characters, then the same with ``</w>`` (so any text encodes without an unknown token), then
    one token per merge, at most ``vocab_size`` in all. The most frequent adjacent pair is merged
    first; ties go to the lexicographically smallest pair, which makes training deterministic.
    """
    alphabet = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {BOS_TOKEN: 0, EOS_TOKEN: 1}
    for symbol in alphabet + [c + END_OF_WORD for c in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    if vocab_size < len(vocab):
        raise ConfigError(f"vocab_size must be at least {len(vocab)} (2 special tokens + 512 "
                          f"byte symbols), got {vocab_size}")
    corpus: dict[tuple[str, ...], int] = {
        (*word[:-1], word[-1] + END_OF_WORD): count for word, count in _pretokenize(texts).items()
    }
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in corpus.items():
            for pair in pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        corpus = {_merge_word(symbols, best): count for symbols, count in corpus.items()}
    return vocab, merges


def train_clip_tokenizer(texts: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 1000,
                         max_length: int = 32) -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` with BPE merges learnt from ``texts`` by :func:`train_clip_bpe`."""
    vocab, merges = train_clip_bpe(texts, vocab_size)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def clip_image_processor(image_size: int, center_crop: bool = True) -> Any:
    """A CLIP image processor for ``image_size`` squares, without needing torchvision.

    ``center_crop``: OpenAI's preprocessing (shorter side to ``image_size``, then a centred
    crop); otherwise the whole image is squashed to the square, so nothing at its edges is cut.
    transformers 5 names the PIL implementation ``CLIPImageProcessorPil``; both save the same
    ``preprocessor_config.json`` (``image_processor_type: CLIPImageProcessor``), so a loader
    picks whichever backend it has.
    """
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as processor_class
    if not center_crop:
        return processor_class(size={"height": image_size, "width": image_size},
                               do_center_crop=False)
    return processor_class(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def build_tiny_clip(
    vocab_texts: Sequence[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    projection_dim: int = 16,
    max_length: int = 32,
    vocab_size: int = 1000,
    seed: int = 0,
) -> TinyClip:
    """Build a randomly initialised (seeded) CLIP with the given small sizes.

    Give ``tokenizer`` to reuse one (e.g. a real CLIP tokenizer from a local directory), or
    ``vocab_texts`` to train a CLIP-style BPE tokenizer on them (default: :data:`DEFAULT_CORPUS`).
    The text model's vocabulary, special-token ids and context length follow the tokenizer, so
    the pair is consistent by construction. Same arguments, same weights.
    """
    if tokenizer is not None and vocab_texts is not None:
        raise ConfigError("give either vocab_texts or tokenizer, not both")
    if image_size % patch_size:
        raise ConfigError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    if tokenizer is None:
        tokenizer = train_clip_tokenizer(vocab_texts or DEFAULT_CORPUS, vocab_size, max_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer needs an eos token: CLIP pools the text at it")
    if eos == 2 and eos != len(tokenizer) - 1:
        raise ConfigError(
            "eos_token_id 2 makes transformers' CLIPTextModel pool at the largest token id "
            "(legacy OpenAI behaviour), which is not the eos of this tokenizer; move eos elsewhere"
        )
    context = min(max_length, int(getattr(tokenizer, "model_max_length", max_length)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "max_position_embeddings": context,
            "projection_dim": projection_dim,
            "bos_token_id": bos if bos is not None else eos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        vision_config={
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "image_size": image_size,
            "patch_size": patch_size,
            "projection_dim": projection_dim,
        },
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval()
    return TinyClip(model, tokenizer, clip_image_processor(image_size))


def save_clip(directory: str | Path, model: CLIPModel, tokenizer: PreTrainedTokenizerBase,
              image_processor: Any) -> Path:
    """``save_pretrained`` model, tokenizer and image processor into one loadable directory."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    return path


def save_tiny_clip(directory: str | Path, **options: Any) -> Path:
    """Build a tiny CLIP (``options`` as for :func:`build_tiny_clip`) and save it to ``directory``.

    ``ClipEncoder.from_pretrained(directory)`` then loads it like any hub snapshot.
    """
    return save_clip(directory, *build_tiny_clip(**options))
