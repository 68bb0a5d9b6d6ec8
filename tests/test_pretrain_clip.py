"""The SynthRef CLIP's training: losses, the export cast and the record it leaves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from refground.data.synth import generate_synthref
from refground.errors import ConfigError
from refground.train.pretrain_clip import (
    PretrainConfig,
    TrainObject,
    attribute_loss,
    attribute_targets,
    attribute_texts,
    pretrain_clip,
    recipe_command,
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


def test_export_dtype_is_checked() -> None:
    with pytest.raises(ConfigError, match="export_dtype must be one of float16, float32"):
        PretrainConfig(export_dtype="int8")


def test_a_short_run_saves_a_loadable_float16_clip_and_its_recipe(
        tmp_path: Path, one_thread: None) -> None:
    data = tmp_path / "synth"
    generate_synthref(data, seed=2, num_images=12)
    config = replace(PretrainConfig(), steps=3, images_per_step=2, eval_every=3, probe_weight=0.5,
                     attribute_weight=1.0, exact_crop_share=0.5, **TINY)
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
    assert record["data"]["scale"] == "small"
    assert [h["step"] for h in record["curve"]] == [1, 2, 3]
    assert all(h["loss_attribute"] > 0 for h in record["curve"])
    assert "--set attribute_weight=1.0" in record["command"]
    assert "val_crop-rank" in record["history"][-1]
    assert record["command"].startswith(f"refground pretrain-clip --data {data} --out ")
    for flag in ("--steps 3", "--images-per-step 2", "--eval-every 3", "--set patch_size=8",
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


def test_the_defaults_are_the_shipped_models_recipe() -> None:
    """No flags = the recipe recorded next to the shipped weights (fields added since default
    to off, so the shipped model's recipe is unchanged)."""
    from refground.vision.shipped import shipped_path

    shipped = json.loads((shipped_path("synthref-clip") / "training.json").read_text())
    defaults = dict(PretrainConfig().__dict__)
    assert {k: defaults[k] for k in shipped["config"]} == shipped["config"]
    assert all(defaults[k] == 0 for k in set(defaults) - set(shipped["config"])
               if k != "export_dtype")
