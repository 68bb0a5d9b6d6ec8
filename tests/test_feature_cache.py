"""The frozen-feature cache: cached batches equal computed ones, and a cache that belongs to
another model, preprocessing or dataset version, or that was truncated, is never used."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from refground.data import Dataset
from refground.data.synth import generate_synthref, synthref_dataset
from refground.images import decode_images
from refground.methods import build_method
from refground.methods.trainable import TrainableMethod, cache_features
from refground.types import ImageSource, Sample
from refground.vision.feature_cache import (
    FeatureCacheError,
    FeatureGroup,
    FeatureTable,
    ensure_table,
)
from refground.vision.tiny_clip import save_tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")

REGRESSOR = {"cnn_image_size": 48, "grid": 4, "hrnet_widths": (4, 8, 8), "hrnet_blocks": 1,
             "clip_channels": 8, "cnn_channels": 8, "fused_dim": 16, "hidden": 16,
             "dropout": 0.0}
ERPA = {"hidden": 16, "heads": 2, "decoder_layers": 1, "encoder_layers": 1, "dropout": 0.0}
DETR = {"image_size": 32, "backbone_widths": [8, 16], "backbone_blocks": 1, "d_model": 32,
        "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "queries": 4, "ffn": 64,
        "dropout": 0.0}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A fresh SynthRef per test: tests write caches into it and corrupt them."""
    generate_synthref(tmp_path, seed=5, num_images=8, workers=1)
    return tmp_path


def info(root: Path) -> Dataset:
    return synthref_dataset(root)


def samples_of(root: Path) -> list[Sample]:
    return list(synthref_dataset(root).split("train").samples)[:12]


def method(name: str, tiny_clip_600: Path, **options: Any) -> TrainableMethod:
    torch.manual_seed(0)
    base = {"regressor": {"clip": str(tiny_clip_600), **REGRESSOR},
            "erpa": {"clip": str(tiny_clip_600), **ERPA},
            "detr": {"text_model": str(tiny_clip_600), **DETR}}[name]
    built = build_method(name, device="cpu", **{**base, **options})
    assert isinstance(built, TrainableMethod)
    return built


@pytest.mark.parametrize(("name", "options"), [
    ("regressor", {}), ("regressor", {"clip_map": "pooled", "box_head": "heatmap"}),
    ("erpa", {"head": "regress"}), ("erpa", {"head": "select", "node_crops": False}),
    ("detr", {}), ("detr", {"freeze_text": False, "reference_points": True}),
])
def test_cached_batches_give_the_computed_outputs(name: str, options: dict[str, Any],
                                                  tiny_clip_600: Path, dataset: Path) -> None:
    """The same model on a batch read from the cache and on one computed from images gives
    the same outputs (up to the float16 storage), and the cached one holds no pixels of a
    frozen part."""
    model_method = method(name, tiny_clip_600, **options)
    model_method.prepare(info(dataset))
    samples = samples_of(dataset)
    computed = model_method.collator()(samples)
    tables = cache_features(model_method, samples, info(dataset), log=lambda _: None)
    assert tables and all(path.parent.name == "features" for path in
                          (t.path for t in tables.values()))
    cached = model_method.collator()(samples)
    frozen_inputs = {"regressor": {"clip_pixels", "input_ids"}, "erpa": {"pixels", "input_ids"},
                     "detr": {"input_ids"} if options.get("freeze_text", True) else set()}[name]
    assert not frozen_inputs & set(cached), "a cached batch still carries frozen inputs"
    assert frozen_inputs <= set(computed)
    torch.testing.assert_close(cached["target"], computed["target"])
    # the same images given in memory (as the Python API and the server give them) are in no
    # table: that batch is computed, and equals the batch computed from the files
    in_memory = [replace(s, image=ImageSource.memory(image))
                 for s, image in zip(samples, decode_images(samples), strict=True)]
    again = model_method.collator()(in_memory)
    assert again.keys() == computed.keys()
    assert all(torch.equal(again[k], v) for k, v in computed.items() if isinstance(v, Tensor))
    model_method.model.eval()
    with torch.no_grad():
        expected, actual = model_method.model(computed), model_method.model(cached)
    for key, value in expected.items():
        if value.is_floating_point():
            finite = value.isfinite()
            torch.testing.assert_close(actual[key][finite], value[finite], atol=2e-2, rtol=2e-2)


def test_predictions_equal_with_and_without_the_cache(tiny_clip_600: Path, dataset: Path) -> None:
    samples = samples_of(dataset)
    plain = method("erpa", tiny_clip_600, head="select")
    plain.prepare(info(dataset))
    cached = method("erpa", tiny_clip_600, head="select")
    cached.prepare(info(dataset))
    cache_features(cached, samples, info(dataset), log=lambda _: None)
    assert [p.box for p in plain.predict(samples)] == [p.box for p in cached.predict(samples)]


def test_fine_tuned_or_detector_fed_parts_are_not_cached(tiny_clip_600: Path) -> None:
    assert method("regressor", tiny_clip_600, freeze_clip=False).feature_groups() == []
    assert method("erpa", tiny_clip_600, freeze_clip=False).feature_groups() == []
    # detr's backbone trains: only its pixels and (frozen) token states are cached
    assert [g.name for g in method("detr", tiny_clip_600).feature_groups()] == [
        "detr-pixels", "detr-text-tokens"]


def test_another_model_preprocessing_or_dataset_is_another_cache(
        tiny_clip_600: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    samples = samples_of(dataset)
    base = method("regressor", tiny_clip_600)
    paths = {t.path for t in cache_features(base, samples, info(dataset),
                                            log=lambda _: None).values()}
    # the same model and inputs again: the same files, reused
    again = cache_features(method("regressor", tiny_clip_600), samples, info(dataset),
                           log=lambda _: None)
    assert {t.path for t in again.values()} == paths
    # another CLIP (other weights, same architecture): none of the CLIP tables are reused
    other_clip = save_tiny_clip(tmp_path_factory.mktemp("other-clip"), vocab_size=600, seed=1)
    other = cache_features(method("regressor", other_clip), samples, info(dataset),
                           log=lambda _: None)
    assert other["clip-images"].path not in paths and other["clip-texts"].path not in paths
    assert other["regressor-cnn-pixels"].path in paths  # the CNN's input does not depend on it
    # another preprocessing of the CNN's input: another pixel table
    resized = cache_features(method("regressor", tiny_clip_600, cnn_image_size=32), samples,
                             info(dataset), log=lambda _: None)
    assert resized["regressor-cnn-pixels"].path not in paths
    assert resized["clip-images"].path in paths
    # another version of the dataset (annotations edited): every table is another file
    instances = dataset / "synthref" / "instances.json"
    data = json.loads(instances.read_text())
    data["annotations"][0]["bbox"][0] += 1
    instances.write_text(json.dumps(data))
    edited = cache_features(method("regressor", tiny_clip_600), samples_of(dataset), info(dataset),
                            log=lambda _: None)
    assert not {t.path for t in edited.values()} & paths


def test_truncated_cache_is_refused_then_rebuilt(tiny_clip_600: Path, dataset: Path) -> None:
    samples = samples_of(dataset)
    tables = cache_features(method("regressor", tiny_clip_600), samples, info(dataset),
                            log=lambda _: None)
    path = tables["clip-images"].path
    good = FeatureTable.open(path).tensors()["patches"].clone()
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(FeatureCacheError, match="bytes, its manifest says"):
        FeatureTable.open(path)
    messages: list[str] = []
    rebuilt = cache_features(method("regressor", tiny_clip_600), samples, info(dataset),
                             log=messages.append)
    assert any("rebuilding" in m and path.name in m for m in messages)
    torch.testing.assert_close(rebuilt["clip-images"].tensors()["patches"], good)
    # same size, other bytes: the checksum catches it
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(FeatureCacheError, match="SHA-256"):
        FeatureTable.open(path)
    # a tensor file without its manifest (a build killed before the end) is not trusted
    path.with_suffix(".json").unlink()
    with pytest.raises(FeatureCacheError, match="never completed"):
        FeatureTable.open(path)


def test_missing_rows_are_added_and_replaced_images_recomputed(tiny_clip_600: Path,
                                                               dataset: Path) -> None:
    samples = samples_of(dataset)
    first = samples[:4]
    regressor = method("regressor", tiny_clip_600)
    small = cache_features(regressor, first, info(dataset), log=lambda _: None)["clip-images"]
    before = small.gather(list(small.keys))["patches"]
    messages: list[str] = []
    grown = cache_features(regressor, samples, info(dataset), log=messages.append)["clip-images"]
    assert any("adding" in m for m in messages)
    assert len(grown.keys) > len(small.keys)
    torch.testing.assert_close(grown.gather(list(small.keys))["patches"], before)
    # an image replaced in place (another file) is a new row, not the old one's features
    images = list(dict.fromkeys(s.image_path for s in samples))
    shutil.copyfile(images[0], images[-1])
    regressor.use_features({})
    again = cache_features(regressor, samples, info(dataset), log=lambda _: None)["clip-images"]
    assert len(again.keys) == len(grown.keys) + 1


def test_groups_pad_rows_of_varying_length(tmp_path: Path) -> None:
    """Token states of texts of different lengths share one zero-padded column."""
    def compute(texts: list[str]) -> dict[str, torch.Tensor]:
        longest = max(len(t) for t in texts)
        states = torch.zeros((len(texts), longest, 2))
        for i, text in enumerate(texts):
            states[i, :len(text)] = 1.0
        return {"states": states}

    group = FeatureGroup("toy", {"v": 1}, lambda texts: {t: t for t in texts}, compute,
                         batch_size=1)
    table = ensure_table(group, ["ab", "abcd", "a"], tmp_path, "data")
    rows = table.gather(["a", "abcd"])["states"]
    assert rows.shape == (2, 4, 2)
    assert rows[0, :, 0].tolist() == [1, 0, 0, 0] and rows[1, :, 0].tolist() == [1, 1, 1, 1]
