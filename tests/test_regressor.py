"""The ``regressor`` method on a tiny real CLIP and the mini REFER dataset: nothing mocked.

The tiny CLIP is built, ``save_pretrained`` into a temp directory and loaded by name, exactly
as users load a hub snapshot; the HRNet and heads are shrunk by options so everything runs in
seconds on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from refground.data import Dataset
from refground.errors import ConfigError, MissingDependencyError, ModelLoadError
from refground.methods.base import build_method
from refground.methods.box_losses import SmoothL1, box_regression_loss
from refground.methods.regressor import RegressorMethod, RegressorModel
from refground.methods.trainable import METHOD_FILE, WEIGHTS_FILE, move_batch
from refground.types import Sample
from refground.vision.hrnet import HRNet, build_cnn_branch
from tests.conftest import write_mini_refer

#: Small everything: a 48px CNN input, a 4x4 grid, 4-8 channel branches.
TINY: dict[str, Any] = {
    "cnn_image_size": 48,
    "grid": 4,
    "hrnet_widths": (4, 8, 8),
    "hrnet_blocks": 1,
    "clip_channels": 8,
    "cnn_channels": 8,
    "fused_dim": 16,
    "hidden": 32,
    "dropout": 0.0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Four samples with four different boxes (two images)."""
    root = write_mini_refer(tmp_path_factory.mktemp("data"))
    by_split = {split: Dataset(root, "refcocog", "umd").split(split).samples
                for split in ("train", "test", "val")}
    chosen = [by_split["train"][0], by_split["test"][0], by_split["test"][-1], by_split["val"][0]]
    assert len({s.gt_box for s in chosen}) == 4
    return chosen


def make(tiny_clip: Path, **options: Any) -> RegressorMethod:
    torch.manual_seed(0)
    method = build_method("regressor", clip=str(tiny_clip), **{**TINY, **options})
    assert isinstance(method, RegressorMethod)
    return method


def train_steps(method: RegressorMethod, samples: list[Sample], steps: int,
                lr: float = 1e-2) -> list[float]:
    model = method.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batch = move_batch(method.collator()(samples), method.device)
    losses = []
    for _ in range(steps):
        loss = method.loss(batch, model(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# --- (a) outputs ------------------------------------------------------------------------------

def test_boxes_are_normalised_and_predictions_in_the_image(tiny_clip: Path,
                                                           samples: list[Sample]) -> None:
    method = make(tiny_clip)
    batch = method.collator()(samples)
    assert batch["clip_pixels"].shape == (4, 3, 32, 32)
    assert batch["cnn_pixels"].shape == (4, 3, 48, 48)
    boxes = method.model(batch)["boxes"]
    assert boxes.shape == (4, 4) and boxes.dtype == torch.float32
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    decoded, scores = method.decode(batch, {"boxes": boxes})
    assert torch.equal(decoded, boxes) and scores.shape == (4,)
    for sample, prediction in zip(samples, method.predict(samples), strict=True):
        x0, y0, x1, y1 = prediction.box
        assert prediction.sample_id == sample.sample_id
        assert 0 <= x0 <= x1 <= sample.width and 0 <= y0 <= y1 <= sample.height


def test_pooled_maps_group_norm_and_bf16_autocast(tiny_clip: Path, samples: list[Sample]) -> None:
    method = make(tiny_clip, clip_map="pooled", norm="group", coord_maps=False)
    batch = method.collator()(samples)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        boxes = method.model(batch)["boxes"]
        losses = method.loss(batch, {"boxes": boxes})
    assert boxes.dtype == torch.float32 and boxes.shape == (4, 4)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()


def test_collator_is_picklable_and_target_optional(tiny_clip: Path,
                                                   samples: list[Sample]) -> None:
    collate = pickle.loads(pickle.dumps(make(tiny_clip).collator()))
    batch = collate(samples)
    assert set(batch) == {"clip_pixels", "cnn_pixels", "input_ids", "attention_mask", "size",
                          "target"}
    unlabelled = [Sample(s.sample_id, s.image_path, s.width, s.height, s.expression)
                  for s in samples]
    assert "target" not in collate(unlabelled)


# --- (b) save and load ------------------------------------------------------------------------

def test_save_load_round_trip_without_frozen_clip(tiny_clip: Path, samples: list[Sample],
                                                  tmp_path: Path) -> None:
    method = make(tiny_clip)
    train_steps(method, samples, 2)  # weights and batch-norm statistics away from their init
    saved = method.save_pretrained(tmp_path / "model")
    keys = set(load_file(str(saved / WEIGHTS_FILE)))
    assert keys and not any(k.startswith("clip.") for k in keys)
    assert any(k.startswith("cnn.") and k.endswith("running_mean") for k in keys)
    loaded = build_method("regressor", checkpoint=saved)
    assert isinstance(loaded, RegressorMethod)
    assert loaded.config == method.config
    assert loaded.predict(samples) == method.predict(samples)


def test_fine_tuned_clip_is_saved(tiny_clip: Path, tmp_path: Path) -> None:
    method = make(tiny_clip, freeze_clip=False)
    assert method.model.clip.text_projection.weight.requires_grad
    assert not method.model.clip.logit_scale.requires_grad  # unused: no DDP "unused" error
    keys = set(load_file(str(method.save_pretrained(tmp_path / "m") / WEIGHTS_FILE)))
    assert "clip.text_projection.weight" in keys


# --- (c) bad checkpoints ----------------------------------------------------------------------

def test_corrupt_and_mismatched_weights_raise_model_load_error(tiny_clip: Path,
                                                               tmp_path: Path) -> None:
    saved = make(tiny_clip).save_pretrained(tmp_path / "model")
    weights = saved / WEIGHTS_FILE
    state = {k: v.clone() for k, v in load_file(str(weights)).items()}  # not mmap-backed

    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        build_method("regressor", checkpoint=saved)

    spec = json.loads((saved / METHOD_FILE).read_text())
    spec["options"]["cnn_channels"] = 6
    (saved / METHOD_FILE).write_text(json.dumps(spec))
    save_file(state, str(weights))
    with pytest.raises(ModelLoadError, match=r"weight cnn\.head\.0\.weight has shape"):
        build_method("regressor", checkpoint=saved)

    spec["options"]["cnn_channels"] = TINY["cnn_channels"]
    (saved / METHOD_FILE).write_text(json.dumps(spec))
    save_file({k: v for k, v in state.items() if not k.startswith("head.")}, str(weights))
    with pytest.raises(ModelLoadError, match=r"missing \['head\.0\.bias'"):
        build_method("regressor", checkpoint=saved)


# --- (d) options ------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "field"), [
    ({"hrnet_depth": 3}, "hrnet_depth"),
    ({"hrnet_widths": (4,)}, "hrnet_widths"),
    ({"clip_map": "tokens"}, "clip_map"),
    ({"cnn_backbone": "resnet"}, "cnn_backbone"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_options_raise_config_error_naming_the_field(tiny_clip: Path, options: dict[str, Any],
                                                         field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_method("regressor", clip=str(tiny_clip), **options)


def test_timm_backbone_without_timm_explains_the_install() -> None:
    if importlib.util.find_spec("timm") and importlib.util.find_spec("torchvision"):
        pytest.skip("timm and torchvision are installed here")  # pragma: no cover
    with pytest.raises(MissingDependencyError, match="pip install timm torchvision"):
        build_cnn_branch("timm:hrnet_w18_small")


# --- (e) the loss -----------------------------------------------------------------------------

def hand_giou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of cxcywh boxes, written out from the paper's definition."""
    ax0, ay0, ax1, ay1 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2, \
        a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx0, by0, bx1, by1 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, \
        b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    inter = ((torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
             * (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0))
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    hull = ((torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0))
            * (torch.maximum(ay1, by1) - torch.minimum(ay0, by0)))
    return inter / union - (hull - union) / hull


def test_loss_matches_an_independent_computation() -> None:
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1], [0.8, 0.2, 0.3, 0.3]])
    target = torch.tensor([[0.45, 0.5, 0.3, 0.3], [0.7, 0.6, 0.2, 0.2], [0.8, 0.2, 0.3, 0.3]])
    losses = box_regression_loss(pred, target, SmoothL1(0.1), giou_weight=2.0)
    huber = F.smooth_l1_loss(pred, target, beta=0.1)
    giou = (1 - hand_giou(pred, target)).mean()
    torch.testing.assert_close(losses["huber"], huber)
    torch.testing.assert_close(losses["giou"], giou)
    torch.testing.assert_close(losses["loss"], huber + 2.0 * giou)
    assert float(hand_giou(pred, target)[2]) == pytest.approx(1.0)  # identical boxes
    assert float(hand_giou(pred, target)[1]) < 0  # disjoint boxes


# --- (f), (h) training ------------------------------------------------------------------------

def test_overfits_four_samples_and_leaves_the_frozen_clip_alone(tiny_clip: Path,
                                                                samples: list[Sample]) -> None:
    method = make(tiny_clip)
    model = method.model
    assert isinstance(model, RegressorModel)
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    assert not any(p.requires_grad for p in model.clip.parameters())

    losses = train_steps(method, samples, 80)

    assert not model.clip.training and model.head.training  # train() keeps the CLIP in eval
    assert min(losses[-5:]) < 0.5 * losses[0], losses
    for key, value in model.clip.state_dict().items():
        assert torch.equal(value, clip_before[key]), key
    assert all(p.grad is None for p in model.clip.parameters())
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())

    batch = method.collator()(samples)
    image, text = model.clip_features(batch)
    assert not image.requires_grad and not text.requires_grad  # the CLIP ran without autograd


# --- (g) HRNet --------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["batch", "group"])
def test_hrnet_output_grid_and_channels(norm: str) -> None:
    images = torch.rand(2, 3, 50, 50)
    three = HRNet((4, 8, 8), blocks=1, out_size=7, out_channels=12, norm=norm)  # type: ignore[arg-type]
    assert three(images).shape == (2, 12, 7, 7)
    assert [x.shape[-1] for x in three.branch_features(images)] == [13, 7, 4]
    four = HRNet((4, 4, 8, 8), blocks=1, out_size=9, out_channels=None, norm=norm)  # type: ignore[arg-type]
    assert four(images).shape == (2, 24, 9, 9)
    with pytest.raises(ConfigError, match="norm"):
        HRNet(norm="layer")  # type: ignore[arg-type]
