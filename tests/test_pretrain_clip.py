"""The SynthRef CLIP's training: losses, the export cast and the record it leaves."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from refground.data.synth import generate_synthref
from refground.errors import ConfigError
from refground.train.pretrain_clip import (
    Description,
    PretrainConfig,
    TrainObject,
    attribute_loss,
    attribute_targets,
    attribute_texts,
    contrastive_loss,
    describe,
    fit_matrix,
    one_word_loss,
    one_word_variants,
    pretrain_clip,
    recipe_command,
    same_image_loss,
)
from refground.vision.clip import ClipEncoder

TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "projection_dim": 16, "eval_samples": 6, "debias_expressions": 20}


def test_attribute_targets_index_the_label_texts() -> None:
    labels = attribute_texts()
    assert len(labels["combo"]) == 80 and len(labels["shape"]) == 8
    objects = [TrainObject((0, 0, 1, 1), "red", "large", "star"),
               TrainObject((0, 0, 1, 1), "cyan", "small", "cross")]
    targets = attribute_targets(objects)
    assert [labels["combo"][i] for i in targets["combo"]] == ["a red star", "a cyan cross"]
    assert [labels["shape"][i] for i in targets["shape"]] == ["a star", "a cross"]
    assert [labels["colour"][i] for i in targets["colour"]] == ["a red object",
                                                                 "a cyan object"]


def test_attribute_loss_is_low_only_for_the_right_labels() -> None:
    labels = {"shape": torch.eye(3)}
    crops = torch.eye(3)[[2, 0]]
    right = attribute_loss(crops, labels, {"shape": torch.tensor([2, 0])}, torch.tensor(20.0))
    wrong = attribute_loss(crops, labels, {"shape": torch.tensor([1, 1])}, torch.tensor(20.0))
    assert right.item() < 1e-6 < 10 < wrong.item()


RED_STAR = TrainObject((0, 0, 1, 1), "red", "large", "star")
RED_CROSS = TrainObject((0, 0, 1, 1), "red", "small", "cross")
BLUE_STAR = TrainObject((0, 0, 1, 1), "blue", "small", "star")


def test_a_description_fits_every_object_with_the_attributes_it_names() -> None:
    red_thing = Description("the red thing", None, "red", None)
    small_star = Description("small star", "small", None, "star")
    assert fit_matrix([RED_STAR, RED_CROSS, BLUE_STAR], [red_thing, small_star]).tolist() == [
        [True, False], [True, False], [False, True]]


def test_descriptions_name_what_they_require() -> None:
    rng = random.Random(0)
    for _ in range(200):
        description = describe(BLUE_STAR, rng)
        assert description.fits(BLUE_STAR)
        words = description.text.split()
        assert ("star" in words) == (description.shape == "star")
        assert ("blue" in words) == (description.color == "blue")
        assert ("small" in words) == (description.size == "small")
        assert description.shape or description.color or description.size


def test_one_word_variants_swap_the_referents_colour_or_shape() -> None:
    variants = one_word_variants("the red circle left of the blue squares", 20, random.Random(0))
    assert len(variants) == 16  # 9 other colours + 7 other shapes, the anchor untouched
    for variant in variants:
        words = variant.split()
        assert words[3:] == ["left", "of", "the", "blue", "squares"]
        assert (words[1] != "red") != (words[2] != "circle")  # exactly one of them swapped
    assert one_word_variants("the second squares from the left", 2, random.Random(1))[0].endswith(
        "s from the left")
    assert one_word_variants("the object on the left", 3, random.Random(0)) == []


def test_contrastive_loss_counts_every_fitting_pair_as_positive() -> None:
    features = torch.eye(2)
    both = torch.ones(2, 2, dtype=torch.bool)
    # with both texts fitting both images, identical features are a perfect fit
    same = contrastive_loss(torch.ones(2, 2) / 2 ** 0.5, torch.ones(2, 2) / 2 ** 0.5, both,
                            torch.tensor(10.0))
    own = contrastive_loss(features, features, torch.eye(2, dtype=torch.bool), torch.tensor(10.0))
    assert same.item() == pytest.approx(math.log(2)) and own.item() < 1e-3


def test_hard_negative_losses_contrast_within_an_image_and_against_one_word_copies() -> None:
    crops = torch.eye(3)
    fits = torch.eye(3, dtype=torch.bool)
    scale = torch.tensor(20.0)
    # descriptions 0/1 are one image, 2 another: 2's own crop is its only candidate
    right = same_image_loss(crops, crops, fits, [(0, 2), (2, 1)], scale)
    swapped = same_image_loss(crops, crops[[1, 0, 2]], fits, [(0, 2), (2, 1)], scale)
    assert right.item() < 1e-6 and swapped.item() > 5
    views, texts = torch.eye(2), torch.eye(2)
    good = one_word_loss(views, texts, [texts[[1]], texts[[0]]], scale)
    bad = one_word_loss(views, texts[[1, 0]], [texts[[0]], texts[[1]]], scale)
    assert good.item() < 1e-6 and bad.item() > 5
    assert one_word_loss(views, texts, [texts[:0], texts[:0]], scale).item() == 0


def test_export_dtype_is_checked() -> None:
    with pytest.raises(ConfigError, match="export_dtype must be one of float16, float32"):
        PretrainConfig(export_dtype="int8")


def test_a_short_run_saves_a_loadable_float16_clip_and_its_recipe(
        tmp_path: Path, one_thread: None) -> None:
    data = tmp_path / "synth"
    generate_synthref(data, seed=2, num_images=12)
    config = replace(PretrainConfig(), steps=3, images_per_step=2, eval_every=3, probe_weight=0.5,
                     attribute_weight=0.5, exact_crop_share=0.25, **TINY)
    summary = pretrain_clip(data, tmp_path / "clip", config, log=lambda _: None)
    with safe_open(tmp_path / "clip" / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {torch.float16}
    encoder = ClipEncoder.from_pretrained(tmp_path / "clip")
    assert encoder.encode_texts(["a red star"]).shape == (1, TINY["projection_dim"])
    record = json.loads((tmp_path / "clip" / "training.json").read_text())
    assert record == json.loads(json.dumps(summary))
    assert record["export"] == {"dtype": "float16"}
    assert record["data"]["seed"] == 2 and record["data"]["images"] == 12
    assert record["data"]["scale"] == "refcoco"  # the default
    assert [h["step"] for h in record["curve"]] == [1, 2, 3]
    assert all(h["loss_attribute"] > 0 for h in record["curve"])
    assert all(h["loss_hard"] > 0 for h in record["curve"])
    assert "--set attribute_weight=0.5" in record["command"]
    assert "val_crop-rank" in record["history"][-1]
    assert record["command"].startswith(f"refground pretrain-clip --data {data} --out ")
    for flag in ("--steps 3", "--images-per-step 2", "--eval-every 3", "--set image_size=32",
                 "--set hidden_size=32"):
        assert flag in record["command"]
    assert record["config"]["probe_weight"] == 0.5
    assert "--set probe_weight=0.5" in record["command"]


def test_the_default_command_is_the_shipped_recipe() -> None:
    assert recipe_command(Path("data/synth"), Path("out"), PretrainConfig()) == (
        "refground pretrain-clip --data data/synth --out out")


def test_set_overrides_any_field_with_its_type() -> None:
    from refground.train.pretrain_clip import config_override

    assert config_override("probe_weight=0.5") == ("probe_weight", 0.5)
    assert config_override("patch_size=8") == ("patch_size", 8)
    with pytest.raises(ConfigError, match="PretrainConfig field"):
        config_override("no_such=1")
    with pytest.raises(ConfigError, match="is not a int"):
        config_override("patch_size=eight")


def test_the_shipped_models_command_reproduces_its_config() -> None:
    """The command in the shipped training.json, applied to the defaults (its flags and
    --set values, as the CLI applies them), is exactly the recorded config: rerunning it
    reproduces the recipe. Fields added since the record default to off."""
    from refground.train.pretrain_clip import CLI_FLAGS, config_override
    from refground.vision.shipped import shipped_path

    shipped = json.loads((shipped_path("synthref-clip") / "training.json").read_text())
    words = shipped["command"].split()
    assert words[:2] == ["refground", "pretrain-clip"]
    changes: dict[str, object] = {}
    for flag, value in zip(words[2::2], words[3::2], strict=True):
        name = flag.removeprefix("--").replace("-", "_")
        if flag == "--set":
            key, parsed = config_override(value)
            changes[key] = parsed
        elif name in CLI_FLAGS:
            changes[name] = config_override(f"{name}={value}")[1]
        else:
            assert flag in ("--data", "--out"), flag
    config = asdict(replace(PretrainConfig(), **changes))
    assert {k: config[k] for k in shipped["config"]} == shipped["config"]
    assert all(not config[k] for k in set(config) - set(shipped["config"])
               if k != "export_dtype")


def test_training_can_start_from_a_saved_clip(tmp_path: Path, one_thread: None) -> None:
    """init_from: the saved model, tokenizer and processor are trained on (not rebuilt), and a
    config whose sizes are not the checkpoint's is refused."""
    data = tmp_path / "synth"
    generate_synthref(data, seed=2, num_images=12)
    base = replace(PretrainConfig(), steps=2, images_per_step=2, eval_every=2, **TINY)
    pretrain_clip(data, tmp_path / "first", base, log=lambda _: None)
    first = ClipEncoder.from_pretrained(tmp_path / "first")
    again = replace(base, init_from=str(tmp_path / "first"), lr=1e-9, warmup_steps=1)
    record = pretrain_clip(data, tmp_path / "second", again, log=lambda _: None)
    second = ClipEncoder.from_pretrained(tmp_path / "second")
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    texts = ["a red star", "the blue circle left of the green square"]
    # a 1e-9 learning rate moves nothing measurable: the second run started from the first
    assert torch.allclose(first.encode_texts(texts), second.encode_texts(texts), atol=2e-3)
    assert f"--set init_from={tmp_path / 'first'}" in record["command"]
    with pytest.raises(ConfigError, match=r"has sizes .* the config asks for"):
        pretrain_clip(data, tmp_path / "third", replace(again, hidden_size=48),
                      log=lambda _: None)
