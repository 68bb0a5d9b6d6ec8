"""Finding and loading checkpoints through transformers' ``from_pretrained``, with guards.

transformers 5 fails quietly in two ways that matter offline: a missing tokenizer file gives an
empty 2-token tokenizer, and missing weights are filled with random values after a printed
report. Both would produce a model that runs and answers nonsense, so every loader (CLIP,
detectors, text towers) calls :func:`check_tokenizer_vocab` and :func:`check_weights_loaded`,
which raise a :class:`~refground.errors.ModelLoadError` subclass that says what to fix.

CLIP checkpoints are found here too (:func:`resolve_model_source`: a local directory, an OpenAI
``clip`` name, a cached snapshot, or a hub id, without touching the network) and loaded as
their three parts (:func:`load_clip_components`); :class:`~refground.vision.clip.ClipEncoder`
wraps what comes back.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refground.errors import ConfigError, ModelLoadError, RefgroundError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

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


# --- finding and loading a CLIP checkpoint ----------------------------------------------------

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

#: A short text whose tokens show where the tokenizer ends texts.
_PROBE_TEXT = "a photo of a cat"


class UnsupportedModelError(ModelLoadError):
    """The name is a model transformers' ``CLIPModel`` cannot run (ResNet CLIP, OpenCLIP, ...)."""


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


def check_clip_tokenizer(tokenizer: PreTrainedTokenizerBase, text_config: Any, source: str) -> None:
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


def load_clip_components(source: ModelSource, dtype: torch.dtype,
                         hub_cache_dir: str | Path | None, local_files_only: bool,
                         ) -> tuple[CLIPModel, PreTrainedTokenizerBase, Any]:
    """The model, tokenizer and image processor (``None`` when it has no config) of ``source``.

    Each part is checked as it loads (a CLIP config, a tokenizer that can drive the text
    tower, every weight present), so what comes back cannot quietly answer nonsense.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

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
    check_clip_tokenizer(tokenizer, config.text_config, repr(source.name))
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
