"""Guards around transformers' ``from_pretrained`` shared by every model refground loads.

transformers 5 fails quietly in two ways that matter offline: a missing tokenizer file gives an
empty 2-token tokenizer, and missing weights are filled with random values after a printed
report. Both would produce a model that runs and answers nonsense, so every loader (CLIP,
detectors) calls these checks and raises a :class:`~refground.errors.ModelLoadError` subclass
that says what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refground.errors import ModelLoadError

#: Fewer regular tokens than this means the tokenizer files were not found.
MIN_TOKENIZER_VOCAB = 16


def check_tokenizer_vocab(tokenizer: Any, source: str, model_vocab: int | None,
                          error: type[ModelLoadError] = ModelLoadError) -> None:
    """Refuse an (almost) empty tokenizer, or one larger than the model's embedding table."""
    size = len(tokenizer)
    special = set(tokenizer.all_special_tokens)
    regular = sum(1 for token in tokenizer.get_vocab() if token not in special)
    if regular < MIN_TOKENIZER_VOCAB or (model_vocab is not None and size < model_vocab // 2):
        expected = f", but the model's text embedding has {model_vocab}" if model_vocab else ""
        raise error(
            f"the tokenizer loaded for {source} has only {size} tokens ({regular} besides special "
            f"tokens){expected}: its tokenizer files (tokenizer.json, or vocab.json + merges.txt "
            "/ vocab.txt, and tokenizer_config.json) are probably missing, and transformers 5 "
            "builds an empty tokenizer instead of failing. Save the tokenizer into the model "
            "directory (tokenizer.save_pretrained(dir) or processor.save_pretrained(dir)).")
    if model_vocab is not None and size > model_vocab:
        raise error(
            f"the tokenizer for {source} has {size} tokens but the model's text embedding has "
            f"{model_vocab}: the tokenizer belongs to another model")


def check_weights_loaded(info: Mapping[str, Any], source: str, model_name: str,
                         error: type[ModelLoadError] = ModelLoadError) -> None:
    """Refuse a checkpoint whose ``output_loading_info`` reports missing or mis-shaped weights."""
    missing = sorted(str(key) for key in info.get("missing_keys") or ())
    mismatched = sorted(str(key) for key in info.get("mismatched_keys") or ())
    if not (missing or mismatched):
        return
    problems = []
    if missing:
        more = ", ..." if len(missing) > 10 else ""
        problems.append(f"{len(missing)} weights missing from the checkpoint "
                        f"({', '.join(missing[:10])}{more})")
    if mismatched:
        problems.append(f"{len(mismatched)} with the wrong shape ({', '.join(mismatched[:5])})")
    raise error(
        f"the checkpoint {source} does not provide all weights of {model_name}: "
        + "; ".join(problems) + ". transformers would fill them with random values. Re-save "
        "the full model with save_pretrained, or use the config that matches it.")
