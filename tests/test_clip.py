"""ClipEncoder end to end on a tiny real CLIP: build -> save_pretrained -> load as users do.

Nothing is downloaded and nothing is mocked: the tiny model, its trained CLIP tokenizer and its
image processor config are written to a temp directory and loaded back through
``ClipEncoder.from_pretrained``, the same code path as a hub snapshot.
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from refground.errors import ConfigError, ModelLoadError, RefgroundError
from refground.vision.clip import ClipEncoder
from refground.vision.loading import UnsupportedModelError, resolve_model_source
from refground.vision.preprocess import (
    ClipPreprocessConfig,
    pil_to_tensor,
    preprocess_pil,
    preprocess_tensor,
)
from refground.vision.tiny_clip import (
    build_tiny_clip,
    save_tiny_clip,
    train_clip_bpe,
    train_clip_tokenizer,
)

TEXTS = [
    "the man in the yellow coat",
    "a red square",
    "the glass left of the plate, second from the right",
    "dog",
    "",
]


@pytest.fixture(scope="module")
def encoder(tiny_clip: Path) -> ClipEncoder:
    return ClipEncoder.from_pretrained(tiny_clip)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


def _copy(tiny_clip: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_clip, target)
    return target


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (33, 64), (32, 32), (50, 47), (90, 20)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in (sizes[i % len(sizes)] for i in range(count))
    ]


class _ForwardCounter:
    """Counts real forward calls of a module through a forward hook (no mocking)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


# --- building and loading ---------------------------------------------------------------------

def test_saved_tiny_clip_loads_back_with_the_same_weights(tiny_clip: Path,
                                                          encoder: ClipEncoder) -> None:
    model, tokenizer, _ = build_tiny_clip()  # same defaults and seed as save_tiny_clip
    loaded = encoder.model.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded[name]), name
    assert type(encoder.tokenizer).__name__ == "CLIPTokenizer"
    assert len(encoder.tokenizer) == len(tokenizer) == model.config.text_config.vocab_size
    assert encoder.preprocess_config.output_size == (32, 32)
    assert encoder.num_patches == 16
    assert encoder.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_tokenizer_training_is_deterministic_and_covers_every_byte(tmp_path: Path) -> None:
    first = train_clip_bpe(["the man in the yellow coat", "a dog", "the dog"], 600)
    second = train_clip_bpe(["the man in the yellow coat", "a dog", "the dog"], 600)
    assert first == second
    for name in ("a", "b"):
        train_clip_tokenizer().save_pretrained(tmp_path / name)
    assert ((tmp_path / "a" / "tokenizer.json").read_bytes()
            == (tmp_path / "b" / "tokenizer.json").read_bytes())
    tokenizer = train_clip_tokenizer()
    ids = tokenizer("Zürich ☃ 42 THE man!")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1]  # unk is eos in CLIP: no byte fell to unk
    assert tokenizer.convert_ids_to_tokens(tokenizer("the man")["input_ids"])[1:3] == [
        "the</w>", "man</w>"]


# --- features ---------------------------------------------------------------------------------

def test_text_features_are_normalised_and_deterministic(tiny_clip: Path,
                                                        encoder: ClipEncoder) -> None:
    features = encoder.encode_texts(TEXTS)
    assert features.shape == (len(TEXTS), encoder.embed_dim) == (5, 16)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(TEXTS)))
    again = ClipEncoder.from_pretrained(tiny_clip).encode_texts(TEXTS)
    assert torch.equal(features, again)
    assert not torch.allclose(features[0], features[1])


def test_image_features_accept_pil_and_tensors_of_any_size(encoder: ClipEncoder) -> None:
    images = _images(5)
    features = encoder.encode_images(images)
    assert features.shape == (5, 16)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(5))
    as_tensors = encoder.encode_images([pil_to_tensor(image) for image in images])
    torch.testing.assert_close(as_tensors, features, atol=1e-6, rtol=0)
    pixels = encoder.preprocess_tensor([pil_to_tensor(image) for image in images])
    torch.testing.assert_close(encoder.encode_image_tensors(pixels), features, atol=1e-6, rtol=0)
    assert encoder.encode_images([]).shape == (0, 16)


def test_features_do_not_depend_on_batch_size(tiny_clip: Path) -> None:
    one = ClipEncoder.from_pretrained(tiny_clip, batch_size=1)
    many = ClipEncoder.from_pretrained(tiny_clip, batch_size=64)
    images = _images(7)
    torch.testing.assert_close(one.encode_images(images), many.encode_images(images),
                               atol=1e-5, rtol=0)
    # texts of different lengths: padding differs between batch 1 and batch 64
    torch.testing.assert_close(one.encode_texts(TEXTS), many.encode_texts(TEXTS),
                               atol=1e-5, rtol=0)


def test_features_are_ordinary_tensors_usable_in_autograd(encoder: ClipEncoder) -> None:
    features = encoder.encode_texts(["a dog"])
    image_features = encoder.encode_images(_images(1))
    assert not features.is_inference() and not image_features.is_inference()
    head = torch.nn.Linear(encoder.embed_dim, 1)
    (head(features).sum() + head(image_features).sum()).backward()
    assert head.weight.grad is not None


def test_patch_and_text_tokens(encoder: ClipEncoder) -> None:
    pixels = encoder.preprocess_tensor([pil_to_tensor(image) for image in _images(3)])
    patches = encoder.patch_tokens(pixels)
    assert patches.shape == (3, encoder.num_patches, encoder.vision_hidden_size) == (3, 16, 32)
    with torch.no_grad():
        full = encoder.model.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(patches, full[:, 1:])
    assert encoder.patch_tokens(pixels, grad=True).requires_grad

    states, mask = encoder.text_tokens(["a dog", "the man in the yellow coat"])
    assert mask.dtype == torch.bool
    assert states.shape == (2, mask.shape[1], encoder.text_hidden_size)
    assert mask.sum(-1).tolist() == [4, 8]  # <start> a dog <end>; <start> 6 words <end>


def test_bad_inputs_raise_refground_errors(encoder: ClipEncoder) -> None:
    with pytest.raises(ConfigError, match="not one string"):
        encoder.encode_texts("a dog")
    with pytest.raises(RefgroundError, match="channels last"):
        encoder.encode_images([torch.zeros(20, 20, 3, dtype=torch.uint8)])
    with pytest.raises(RefgroundError, match="preprocess"):
        encoder.encode_image_tensors(torch.zeros(1, 3, 64, 64))


def test_long_texts_are_truncated_to_the_context_length(encoder: ClipEncoder) -> None:
    tokens = encoder.tokenize(["the dog " * 100, "a cat"])
    assert tokens["input_ids"].shape[1] == encoder.max_length == 32
    assert tokens["input_ids"][0, -1].item() == encoder.tokenizer.eos_token_id
    assert encoder.encode_texts(["the dog " * 100]).shape == (1, 16)


def test_tokenizer_that_misses_the_pooling_token_is_refused() -> None:
    model, tokenizer, processor = build_tiny_clip()
    ClipEncoder(model, tokenizer, processor)  # consistent by construction
    model.config.text_config.eos_token_id = 5  # the text model would pool at id 5
    with pytest.raises(ModelLoadError, match="pools at token id 5"):
        ClipEncoder(model, tokenizer, processor)
    model.config.text_config.eos_token_id = 2  # legacy: pool at the largest id
    with pytest.raises(ModelLoadError, match="largest token id"):
        ClipEncoder(model, tokenizer, processor)


# --- text caches ------------------------------------------------------------------------------

def test_memory_cache_runs_the_text_tower_once_per_text(tiny_clip: Path) -> None:
    encoder = ClipEncoder.from_pretrained(tiny_clip)
    counter = _ForwardCounter(encoder.model.text_model)
    first = encoder.encode_texts(["a dog", "a cat", "a dog"])
    assert counter.calls == 1
    second = encoder.encode_texts(["a cat", "a dog"])
    assert counter.calls == 1
    assert torch.equal(second, first[[1, 0]])
    encoder.encode_texts(["a dog", "a bird"])
    assert counter.calls == 2
    info = encoder.cache_info()
    assert (info.encoded, info.size, info.memory_hits) == (3, 3, 3)


def test_disk_cache_round_trip_in_a_new_encoder(tiny_clip: Path, tmp_path: Path) -> None:
    cache = tmp_path / "features"
    writer = ClipEncoder.from_pretrained(tiny_clip, cache_dir=cache)
    expected = writer.encode_texts(TEXTS)
    writer.flush()
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temp files left

    reader = ClipEncoder.from_pretrained(tiny_clip, cache_dir=cache)
    counter = _ForwardCounter(reader.model.text_model)
    assert torch.equal(reader.encode_texts(TEXTS), expected)
    assert counter.calls == 0
    assert reader.cache_info().disk_hits == len(TEXTS)
    # rows added by a second writer are merged, not lost
    reader.encode_texts(["a new text"])
    reader.flush()
    third = ClipEncoder.from_pretrained(tiny_clip, cache_dir=cache)
    counter = _ForwardCounter(third.model.text_model)
    third.encode_texts([*TEXTS, "a new text"])
    assert counter.calls == 0


def test_disk_cache_is_written_on_exit_and_at_garbage_collection(tiny_clip: Path,
                                                                 tmp_path: Path) -> None:
    with ClipEncoder.from_pretrained(tiny_clip, cache_dir=tmp_path / "a") as encoder:
        encoder.encode_texts(["a dog"])
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 1
    dropped = ClipEncoder.from_pretrained(tiny_clip, cache_dir=tmp_path / "b")
    dropped.encode_texts(["a dog"])
    del dropped
    gc.collect()
    assert len(list((tmp_path / "b").glob("*.safetensors"))) == 1


def test_disk_cache_is_per_model_and_survives_a_corrupt_file(tiny_clip: Path,
                                                             tmp_path: Path) -> None:
    cache = tmp_path / "features"
    with ClipEncoder.from_pretrained(tiny_clip, cache_dir=cache) as encoder:
        encoder.encode_texts(["a dog"])
    other_dir = save_tiny_clip(tmp_path / "other", seed=1)
    other = ClipEncoder.from_pretrained(other_dir, cache_dir=cache)
    assert other.identity != encoder.identity
    counter = _ForwardCounter(other.model.text_model)
    other.encode_texts(["a dog"])
    assert counter.calls == 1  # another model's features are never reused

    (cache_file,) = [p for p in cache.iterdir() if encoder.identity[:20] in p.name]
    cache_file.write_bytes(b"not a safetensors file")
    fresh = ClipEncoder.from_pretrained(tiny_clip, cache_dir=cache)
    torch.testing.assert_close(fresh.encode_texts(["a dog"]),
                               ClipEncoder.from_pretrained(tiny_clip).encode_texts(["a dog"]))
    fresh.flush()
    assert ClipEncoder.from_pretrained(tiny_clip, cache_dir=cache).encode_texts(["a dog"]).shape \
        == (1, 16)


# --- loading failures -------------------------------------------------------------------------

def test_missing_tokenizer_files_are_caught(tiny_clip: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model_dir = _copy(tiny_clip, tmp_path)
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer_config.json").unlink()
    # The trap itself: transformers 5 hands back an (almost) empty tokenizer instead of failing.
    with contextlib.suppress(OSError):  # a transformers version that raises is fine too
        assert len(AutoTokenizer.from_pretrained(model_dir)) < 16
    with pytest.raises(ModelLoadError, match=r"only \d+ tokens.*tokenizer files"):
        ClipEncoder.from_pretrained(model_dir)


def test_missing_weights_are_caught(tiny_clip: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_clip, tmp_path)
    weights = load_file(model_dir / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"1 weights missing.*text_projection\.weight"):
        ClipEncoder.from_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        ClipEncoder.from_pretrained(model_dir)


def test_unknown_hub_name_offline_says_what_was_tried(offline: None, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        ClipEncoder.from_pretrained("nobody/no-such-clip", hub_cache_dir=tmp_path)
    message = str(caught.value)
    assert "'nobody/no-such-clip'" in message
    assert "local directory" in message and str(tmp_path) in message
    assert "No hub is reachable" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(ModelLoadError, match="does not exist"):
        ClipEncoder.from_pretrained(tmp_path / "missing")


def test_openai_names(offline: None, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="openai/clip-vit-large-patch14"):
        ClipEncoder.from_pretrained("ViT-L/14", hub_cache_dir=tmp_path)
    for name in ("RN50x16", "RN50", "timm/resnet50x16_clip.openai"):
        with pytest.raises(UnsupportedModelError, match=r"ResNet CLIP.*ViT"):
            ClipEncoder.from_pretrained(name)


def test_cached_hub_snapshot_loads_offline(offline: None, tiny_clip: Path, tmp_path: Path,
                                           encoder: ClipEncoder) -> None:
    repo = tmp_path / "hub" / "models--someone--tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_clip, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    source = resolve_model_source("someone/tiny-clip", hub_cache_dir=tmp_path / "hub")
    assert source.is_local and source.location.endswith(commit)
    cached = ClipEncoder.from_pretrained("someone/tiny-clip", hub_cache_dir=tmp_path / "hub")
    assert torch.equal(cached.encode_texts(TEXTS), encoder.encode_texts(TEXTS))


def test_directories_that_are_not_transformers_clip(tiny_clip: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextConfig

    open_clip = tmp_path / "open_clip"
    open_clip.mkdir()
    (open_clip / "open_clip_config.json").write_text("{}")
    with pytest.raises(UnsupportedModelError, match="OpenCLIP"):
        ClipEncoder.from_pretrained(open_clip)
    text_only = tmp_path / "text_only"
    CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4).save_pretrained(
        text_only)
    with pytest.raises(UnsupportedModelError, match="clip_text_model"):
        ClipEncoder.from_pretrained(text_only)


def test_missing_preprocessor_config_falls_back_to_clip_defaults(tiny_clip: Path,
                                                                 tmp_path: Path) -> None:
    model_dir = _copy(tiny_clip, tmp_path)
    (model_dir / "preprocessor_config.json").unlink()
    encoder = ClipEncoder.from_pretrained(model_dir)
    assert encoder.preprocess_config == ClipPreprocessConfig.for_image_size(32)
    assert encoder.encode_images(_images(2)).shape == (2, 16)


# --- preprocessing ----------------------------------------------------------------------------

def test_tensor_preprocessing_matches_the_hf_image_processor() -> None:
    from refground.vision.tiny_clip import clip_image_processor

    processor = clip_image_processor(224)
    config = ClipPreprocessConfig.from_image_processor(processor)
    assert config == ClipPreprocessConfig()  # OpenAI CLIP: 224, its mean and std
    rng = np.random.default_rng(0)
    for height, width in ((173, 241), (300, 120), (224, 224), (64, 90)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        reference = preprocess_pil([image], processor)
        ours = preprocess_tensor([pil_to_tensor(image)], config)
        assert ours.shape == reference.shape == (1, 3, 224, 224)
        # PIL resamples in uint8 and rounds; torch stays in float. Same kernel otherwise.
        assert (ours - reference).abs().mean() < 0.02, (height, width)


def test_tensor_preprocessing_batches_mixed_sizes_like_one_by_one() -> None:
    config = ClipPreprocessConfig.for_image_size(32)
    images = [pil_to_tensor(image) for image in _images(5)]
    batched = preprocess_tensor(images, config)
    single = torch.cat([preprocess_tensor([image], config) for image in images])
    assert torch.equal(batched, single)
    stacked = torch.stack([images[2], images[2]])
    assert torch.equal(preprocess_tensor(stacked, config)[1], batched[2])
    as_float = preprocess_tensor([images[0].float() / 255], config)
    torch.testing.assert_close(as_float, batched[:1], atol=1e-5, rtol=0)


def test_image_processor_settings_are_read_from_the_saved_config(tiny_clip: Path) -> None:
    saved = json.loads((tiny_clip / "preprocessor_config.json").read_text())
    config = ClipPreprocessConfig.from_image_processor(saved)
    assert config.shortest_edge == 32 and config.crop_size == (32, 32)
    assert config.image_mean == tuple(saved["image_mean"])
