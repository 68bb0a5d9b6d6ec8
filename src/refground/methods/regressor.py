"""``regressor``: regress one box from CLIP image/text maps fused with an HRNet image branch.

The "CLIP + HRNet" design (docs/methods.md; HRNet: Wang et al. 2020): CLIP gives *what* (the
expression and image semantics, in a shared space), a small HRNet gives *where* (high-resolution
image features). Three maps on one ``grid x grid`` lattice are concatenated:

* CLIP image features -- the vision tower's patch tokens on their own grid, resized to
  ``grid`` (``clip_map="patches"``), or the projected image embedding tiled (``"pooled"``) --
  reduced to ``clip_channels`` by a 1x1 conv;
* the CLIP text embedding (EOS-pooled and projected) tiled over the grid, reduced the same way;
* the HRNet features of the image at ``cnn_image_size``, reduced to ``cnn_channels``.

Two 3x3 convs (norm, ReLU) and global average pooling turn them into a ``fused_dim`` vector;
an MLP with dropout predicts a normalised ``cxcywh`` box through a sigmoid. Training minimises
smooth-L1 (Huber) on the normalised box plus ``giou_weight`` times the GIoU loss.

Two additions to that design, on by default: ``coord_maps`` appends two channels
holding each cell's x and y in [-1, 1]. Global pooling otherwise throws away *where* a feature
fired; with coordinates the convs can compute position-weighted features that survive it.
``text_product`` appends the product of the reduced image and text maps: concatenation alone
gives the convs only additive text-image interactions, and on SynthRef a concat-only model
sat at one large "average" box for the first 200+ steps (loss 1.40, IoU ~0).
``coord_maps=False, text_product=False`` gives the original architecture exactly.

``box_head="heatmap"`` keeps the maps, the CNN, the MLP and the loss but changes what the MLP
predicts: instead of the whole box from one globally pooled vector (which, on SynthRef, stayed
at the mean box -- pooling leaves no "where" for the MLP to read), a 1x1 conv scores every
grid cell, the softmax-weighted mean of the cell centres is a reference point (the
soft-argmax of integral regression), and the MLP on the cells' features pooled by those
weights predicts a bounded offset from it and the size: the box relative to reference points,
as Deformable DETR and DAB-DETR predict it.

The CLIP is frozen by default (not trained, kept in eval mode, run without autograd) and then
not saved in checkpoints: ``clip`` names it and it is reloaded from there. Frozen, its patch
tokens and text embeddings, and the CNN's preprocessed pixels, are cached per dataset
(:meth:`RegressorMethod.feature_groups`): a cached batch decodes no image and runs no CLIP.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from refground.boxes import gaussian_heatmaps
from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.images import decode_images
from refground.methods.base import METHODS
from refground.methods.box_losses import SmoothL1, box_regression_loss
from refground.methods.options import MethodConfig
from refground.methods.trainable import (
    Batch,
    FrozenPartModel,
    TrainableMethod,
    image_sizes,
    require_target,
    target_boxes,
    trainable_factory,
)
from refground.types import Sample
from refground.vision.clip import ClipEncoder, CLIPModel, clip_image_features, clip_text_features
from refground.vision.feature_cache import FeatureGroup, FeatureTable, image_row_keys
from refground.vision.feature_groups import (
    CLIP_IMAGES,
    CLIP_TEXTS,
    clip_identity,
    clip_image_group,
    clip_text_group,
    decode,
    pixel_group,
)
from refground.vision.hrnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TIMM_PREFIX,
    build_cnn_branch,
    conv_norm_relu,
    resample,
)
from refground.vision.preprocess import (
    ClipPreprocessConfig,
    pil_to_tensor,
    preprocess_tensor,
    squash_config,
)
from refground.vision.shipped import SHIPPED_CLIP, resolve_clip_name


class RegressorConfig(MethodConfig):
    """Options of ``regressor`` (all saved in ``method.json``; unknown names are an error)."""

    clip: str = SHIPPED_CLIP
    freeze_clip: bool = True
    clip_map: Literal["patches", "pooled"] = "patches"
    grid: int = Field(14, ge=1, le=64)
    cnn_backbone: str = "hrnet"
    cnn_image_size: int = Field(224, ge=16, le=2048)
    hrnet_widths: tuple[int, ...] = (16, 32, 64)
    hrnet_blocks: int = Field(2, ge=1, le=8)
    clip_channels: int = Field(128, ge=1)
    cnn_channels: int = Field(64, ge=1)
    fused_dim: int = Field(256, ge=1)
    hidden: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    norm: Literal["batch", "group"] = "batch"
    coord_maps: bool = True
    text_product: bool = True
    #: "pooled": the original global pooling + MLP on the whole box; "heatmap": the box
    #: relative to reference points (see the module docstring)
    box_head: Literal["pooled", "heatmap"] = "pooled"
    huber_delta: float = Field(0.1, gt=0.0)
    giou_weight: float = Field(1.0, ge=0.0)
    #: with box_head="heatmap": weight of the cross-entropy from the cell softmax to a
    #: Gaussian on the target box (where to look, taught directly rather than only through
    #: the soft-argmax, whose gradient on a near-uniform softmax is tiny)
    heatmap_weight: float = Field(1.0, ge=0.0)

    @field_validator("hrnet_widths")
    @classmethod
    def _widths(cls, widths: tuple[int, ...]) -> tuple[int, ...]:
        if not 2 <= len(widths) <= 4 or min(widths) < 1:
            raise ValueError("give 2 to 4 positive branch widths (1/4, 1/8, 1/16, 1/32)")
        return widths

    @field_validator("cnn_backbone")
    @classmethod
    def _backbone(cls, backbone: str) -> str:
        if backbone != "hrnet" and not (backbone.startswith(TIMM_PREFIX)
                                        and len(backbone) > len(TIMM_PREFIX)):
            raise ValueError("must be 'hrnet' or 'timm:<model name>'")
        return backbone


# --- the batch --------------------------------------------------------------------------------

CNN_PIXELS = "regressor-cnn-pixels"


@dataclass(frozen=True, eq=False)
class RegressorCollator:
    """``samples -> Batch`` for :class:`RegressorModel`; picklable, holds no model.

    Each distinct image is decoded once per batch and resized twice: to the CLIP's input size
    with the CLIP's statistics, and to the CNN's with ImageNet's.
    """

    tokenizer: Any
    max_length: int
    clip_preprocess: ClipPreprocessConfig
    cnn_preprocess: ClipPreprocessConfig
    features: dict[str, FeatureTable] = field(default_factory=dict)

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        batch = self.cached(samples) if self.features else None
        if batch is None:
            batch = self.computed(samples)
        batch["size"] = image_sizes(samples)
        target = target_boxes(samples)
        if target is not None:
            batch["target"] = target
        return batch

    def computed(self, samples: Sequence[Sample]) -> Batch:
        decoded = decode_images(samples)
        tensors = {id(image): pil_to_tensor(image) for image in decoded}  # once per image
        images = [tensors[id(image)] for image in decoded]
        tokens = self.tokenizer([s.expression for s in samples], padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        return {"clip_pixels": preprocess_tensor(images, self.clip_preprocess),
                "cnn_pixels": preprocess_tensor(images, self.cnn_preprocess),
                "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def cached(self, samples: Sequence[Sample]) -> Batch | None:
        """The batch from the feature tables, or None when a row is missing."""
        images = image_row_keys(samples)
        texts = [s.expression for s in samples]
        clip, words, cnn = (self.features[CLIP_IMAGES], self.features[CLIP_TEXTS],
                            self.features[CNN_PIXELS])
        if images is None or not (clip.has_all(images) and cnn.has_all(images)
                                  and words.has_all(texts)):
            return None
        image_rows = clip.gather(images)
        return {"patches": image_rows["patches"], "image_embeds": image_rows["embeds"],
                "text_embeds": words.gather(texts)["embeds"],
                "cnn_pixels": cnn.gather(images)["pixels"]}


# --- the model --------------------------------------------------------------------------------

def coordinate_maps(batch: int, grid: int, like: Tensor) -> Tensor:
    """``(batch, 2, grid, grid)``: each cell centre's x and y in [-1, 1]."""
    centres = (torch.arange(grid, device=like.device, dtype=like.dtype) + 0.5) / grid * 2 - 1
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack((xs, ys)).unsqueeze(0).expand(batch, -1, -1, -1)


def to_grid(x: Tensor, grid: int) -> Tensor:
    """A ``(B, C, n, n)`` map on ``grid x grid``: a ``1 x 1`` one (an embedding) is tiled."""
    if x.shape[-2:] == (1, 1):
        return x.expand(-1, -1, grid, grid)
    return resample(x, grid)


class RegressorModel(FrozenPartModel):
    """``model(batch) -> {"boxes": (B, 4)}``, normalised cxcywh in [0, 1], float32."""

    def __init__(self, config: RegressorConfig, clip: CLIPModel) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        self.grid = config.grid
        vision = clip.config.vision_config
        image_dim = (int(vision.hidden_size) if config.clip_map == "patches"
                     else int(clip.visual_projection.out_features))
        text_dim = int(clip.text_projection.out_features)
        self.image_reduce = nn.Conv2d(image_dim, config.clip_channels, 1)
        self.text_reduce = nn.Conv2d(text_dim, config.clip_channels, 1)
        self.cnn = build_cnn_branch(config.cnn_backbone, widths=config.hrnet_widths,
                                    blocks=config.hrnet_blocks, out_size=config.grid,
                                    out_channels=config.cnn_channels, norm=config.norm)
        fused_in = ((2 + config.text_product) * config.clip_channels + config.cnn_channels
                    + 2 * config.coord_maps)
        self.heatmap = config.box_head == "heatmap"
        if self.heatmap:  # stay on the grid: every cell is a reference point
            self.fuse = nn.Sequential(
                conv_norm_relu(fused_in, config.fused_dim, config.norm),
                conv_norm_relu(config.fused_dim, config.fused_dim, config.norm))
            self.cell_logit = nn.Conv2d(config.fused_dim, 1, 1)
        else:
            self.fuse = nn.Sequential(
                conv_norm_relu(fused_in, config.fused_dim, config.norm),
                conv_norm_relu(config.fused_dim, config.fused_dim, config.norm, stride=2),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
        self.head = nn.Sequential(nn.Linear(config.fused_dim, config.hidden), nn.ReLU(),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden, 4))
        unused = [clip.logit_scale]  # and the image projection when patch maps are used
        if config.clip_map == "patches":
            unused += list(clip.visual_projection.parameters())
        self.freeze_part("clip", config.freeze_clip, unused)

    def clip_features(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """CLIP image map ``(B, C, n, n)`` (``n = 1`` when pooled) and text map ``(B, D, 1, 1)``.

        Embeddings are L2-normalised (CLIP compares them by cosine, so their length carries no
        meaning); patch tokens go through the vision tower's final layer norm, as CLS does.
        """
        if "text_embeds" in batch:  # read from the feature cache
            patches, embeds, text = batch["patches"], batch["image_embeds"], batch["text_embeds"]
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_clip):
                patches, embeds = clip_image_features(self.clip, batch["clip_pixels"])
                text = clip_text_features(self.clip, batch["input_ids"],
                                          batch["attention_mask"])[1]
        if self.config.clip_map == "patches":
            side = math.isqrt(patches.shape[1])
            image = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
        else:
            image = embeds[:, :, None, None]
        return image.float(), text.float()[:, :, None, None]

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        image, text = self.clip_features(batch)
        size = image.shape[0]
        grid = self.grid
        image_map = to_grid(self.image_reduce(image), grid)
        text_map = to_grid(self.text_reduce(text), grid)
        maps = [image_map, text_map]
        if self.config.text_product:
            maps.append(image_map * text_map)
        maps.append(self.cnn(batch["cnn_pixels"]))
        if self.config.coord_maps:
            maps.append(coordinate_maps(size, grid, maps[-1]))
        dtype = maps[-1].dtype  # all maps in one dtype (autocast may make some bf16)
        fused = self.fuse(torch.cat([m.to(dtype) for m in maps], dim=1))
        if not self.heatmap:
            return {"boxes": self.head(fused).float().sigmoid()}
        return self.heatmap_box(fused)

    def heatmap_box(self, fused: Tensor) -> dict[str, Tensor]:
        """The box relative to the grid's cells: a softmax over cells says where the referent
        is; its expected cell centre is the reference point, and the MLP on the cells' features
        pooled by that softmax gives an offset from it (at most one cell) and the size."""
        weights = self.cell_logit(fused).float().flatten(1).softmax(-1)  # (B, grid * grid)
        centres = coordinate_maps(1, self.grid, weights)[0].flatten(1).T * 0.5 + 0.5  # (G, 2)
        reference = weights @ centres
        pooled = torch.einsum("bg,bcg->bc", weights, fused.float().flatten(2))
        raw = self.head(pooled.to(fused.dtype)).float()
        centre = (reference + raw[:, :2].tanh() / self.grid).clamp(0.0, 1.0)
        box = torch.cat((centre, raw[:, 2:].sigmoid()), -1)
        return {"boxes": box, "cell_weights": weights}


# --- the loss ---------------------------------------------------------------------------------

def heatmap_loss(weights: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy from the ``(B, grid * grid)`` cell softmax to the target box's Gaussian
    (standard deviation half the box side, normalised over the cells)."""
    grid = math.isqrt(weights.shape[1])
    heat = gaussian_heatmaps(target.float().to(weights.device), grid, 0.5, 0.5 / grid)
    heat = heat / heat.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(heat * weights.clamp_min(1e-12).log()).sum(-1).mean()


# --- the method -------------------------------------------------------------------------------

class RegressorMethod(TrainableMethod):
    """One box per expression, regressed by :class:`RegressorModel`; score is always 1."""

    name = "regressor"
    summary = "trained: CLIP and multi-resolution CNN features regress the box (no candidates)"
    config_type = RegressorConfig
    frozen_prefixes = ("clip.",)
    freeze_option = "freeze_clip"
    config: RegressorConfig

    def __init__(self, config: RegressorConfig, model: RegressorModel,
                 device: DeviceSpec = AUTO, *, collate: RegressorCollator,
                 encoder: ClipEncoder) -> None:
        super().__init__(config, model, device)
        self._collate = collate
        self._encoder = encoder

    @classmethod
    def build(cls, config: RegressorConfig, device: DeviceSpec = AUTO
              ) -> RegressorMethod:
        device = resolve_device(device)  # the CLIP loads straight onto it
        encoder = ClipEncoder.from_pretrained(resolve_clip_name(config.clip), device=device)
        model = RegressorModel(config, encoder.model)
        clip_preprocess = encoder.preprocess_config
        collate = RegressorCollator(
            tokenizer=encoder.tokenizer,
            max_length=encoder.max_length,
            clip_preprocess=squash_config(encoder.image_size, clip_preprocess.image_mean,
                                          clip_preprocess.image_std),
            cnn_preprocess=squash_config(config.cnn_image_size, IMAGENET_MEAN, IMAGENET_STD),
        )
        return cls(config, model, device, collate=collate, encoder=encoder)

    def feature_groups(self) -> list[FeatureGroup]:
        """CLIP patch tokens and embeddings per image, text embeddings per expression and the
        CNN's preprocessed pixels per image; none while the CLIP is fine-tuned."""
        if not self.config.freeze_clip:
            return []
        collate, encoder = self._collate, self._encoder
        identity = clip_identity(encoder)
        cnn = collate.cnn_preprocess
        return [
            clip_image_group(encoder, collate.clip_preprocess, identity),
            clip_text_group(encoder, lambda samples: [s.expression for s in samples], identity),
            pixel_group(CNN_PIXELS, {"preprocess": dataclasses.asdict(cnn)},
                        lambda paths: preprocess_tensor([decode(p) for p in paths], cnn)),
        ]

    def use_features(self, tables: Mapping[str, FeatureTable]) -> None:
        self._collate.features.update(tables)

    def collator(self) -> RegressorCollator:
        return self._collate

    def loss(self, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        target = require_target(batch, self.name)
        losses = box_regression_loss(outputs["boxes"].float(), target,
                                     SmoothL1(self.config.huber_delta),
                                     giou_weight=self.config.giou_weight)
        if "cell_weights" in outputs and self.config.heatmap_weight > 0:
            heat = heatmap_loss(outputs["cell_weights"], target)
            losses["heatmap"] = heat.detach()
            losses["loss"] = losses["loss"] + self.config.heatmap_weight * heat
        return losses

    def decode(self, batch: Batch, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        boxes = outputs["boxes"]
        return boxes, torch.ones(boxes.shape[0], device=boxes.device)


METHODS.register("regressor")(trainable_factory(RegressorMethod))
