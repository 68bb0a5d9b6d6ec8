"""``detr``: a text-conditioned DETR (GLIP-style) trained to put one box on the referent.

Architecture (Carion et al. 2020, with the text fusion of GLIP, Li et al. 2022):

* a small residual CNN (no torchvision) to stride ``2 ** (1 + len(backbone_widths))``, a 1x1
  conv to ``d_model``;
* the expression through a pretrained text tower (:mod:`refground.vision.text_encoders`),
  projected to ``d_model``;
* a transformer encoder over ``[image tokens; text tokens]`` (text padding masked). Image tokens
  carry 2D sinusoidal positions, text tokens a learned "text" embedding; both are added to
  queries and keys in every layer, as in DETR, so values stay position-free;
* a decoder whose ``queries`` learned query embeddings are shifted by the projected, pooled text
  (GLIP's conditioning: the same slots look for different things per expression) and whose
  query content starts from that text, with self-attention between queries and
  cross-attention to the fused memory;
* per query one "this is the referent" logit and a 3-layer MLP box (sigmoid ``cxcywh``).

With ``reference_points`` (DAB-DETR, Liu et al. 2022; the reference points of Deformable DETR,
Zhu et al. 2021) each query also owns a learnt anchor point, initialised on a grid over the
image: its sine encoding (the image tokens' own) is added to the query's position, and the box
head predicts the centre as an offset from the anchor in logit space. Without anchors all
queries start at the same place and, on SynthRef, the model settled on one central box.

Training matches queries to the one target by the Hungarian algorithm (classification + L1 +
GIoU costs) after every decoder layer (auxiliary losses); inference takes the top-scoring
query. The frozen text tower is not saved in checkpoints: it is rebuilt from the options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from refground.devices import AUTO, DeviceSpec
from refground.errors import ConfigError
from refground.images import ImageInput, decode_images
from refground.methods.base import METHODS
from refground.methods.detr_matching import hungarian_match, set_loss
from refground.methods.options import MethodConfig
from refground.methods.trainable import (
    Batch,
    FrozenPartModel,
    TrainableMethod,
    image_sizes,
    image_tensor,
    target_boxes,
    trainable_factory,
)
from refground.types import Sample
from refground.vision.feature_cache import FeatureGroup, FeatureTable, image_row_keys
from refground.vision.feature_groups import pixel_group, token_group
from refground.vision.text_encoders import (
    DEFAULT_TEXT_MODELS,
    TEXT_ENCODERS,
    TextTower,
    load_text_encoder,
)

#: ImageNet statistics: the backbone is trained from scratch, any fixed centring would do.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
TEXT_PREFIX = "text_encoder."


class DetrConfig(MethodConfig):
    """Options of ``detr``; every field is recorded in ``method.json``."""

    text_encoder: str = "clip"
    text_model: str = DEFAULT_TEXT_MODELS["clip"]
    freeze_text: bool = True
    max_text_tokens: int = Field(40, ge=2, le=512)
    image_size: int = Field(224, ge=16)
    backbone_widths: tuple[Annotated[int, Field(ge=1)], ...] = Field((32, 64, 128), min_length=1)
    backbone_blocks: int = Field(2, ge=1)
    norm: Literal["batch", "group"] = "batch"
    d_model: int = Field(128, ge=4)
    heads: int = Field(4, ge=1)
    encoder_layers: int = Field(2, ge=0)
    decoder_layers: int = Field(2, ge=1)
    queries: int = Field(16, ge=1)
    ffn: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    class_loss: Literal["focal", "bce"] = "focal"
    focal_alpha: float = 0.25
    focal_gamma: float = Field(2.0, ge=0.0)
    class_weight: float = Field(2.0, ge=0.0)
    l1_weight: float = Field(5.0, ge=0.0)
    giou_weight: float = Field(2.0, ge=0.0)
    aux_loss: bool = True
    #: DAB-DETR-style anchors: each query owns a learnt reference point (spread over the image
    #: at the start), its sine encoding is added to the query's position, and the box head
    #: predicts the centre as an offset from it (in logit space) instead of absolutely
    reference_points: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_text_model(cls, data: Any) -> Any:
        """Without ``text_model``, each encoder kind loads its own default model."""
        if isinstance(data, dict) and data.get("text_model") is None:
            default = DEFAULT_TEXT_MODELS.get(data.get("text_encoder", "clip"))
            # an unknown kind keeps the field default; the text_encoder check then reports it
            data = {k: v for k, v in data.items() if k != "text_model"}
            if default is not None:
                data["text_model"] = default
        return data

    @field_validator("text_encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        if value not in TEXT_ENCODERS.names():
            raise ValueError(f"unknown text encoder {value!r}; known: "
                             f"{', '.join(TEXT_ENCODERS.names())}")
        return value

    @field_validator("d_model")
    @classmethod
    def _d_model_for_positions(cls, value: int) -> int:
        if value % 4:
            raise ValueError(f"must be a multiple of 4 (2D sine positions), got {value}")
        return value

    @field_validator("heads")
    @classmethod
    def _heads_divide_d_model(cls, value: int, info: ValidationInfo) -> int:
        d_model = info.data.get("d_model")
        if d_model is not None and d_model % value:
            raise ValueError(f"{value} heads do not divide d_model {d_model}")
        return value

    @property
    def stride(self) -> int:
        """Downsampling of the backbone: one stride-2 stem plus one per stage."""
        return 2 ** (1 + len(self.backbone_widths))


# --- the network ------------------------------------------------------------------------------

def _norm2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm (fast, default) or GroupNorm (batch-independent: identical results however a
    batch is split over processes)."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.BatchNorm2d(channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm2d(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          _norm2d(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class Backbone(nn.Module):
    """Stride-2 stem, then one stage per width, each starting with a stride-2 block."""

    def __init__(self, widths: Sequence[int], blocks: int, norm: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  _norm2d(norm, widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = widths[0]
        for width in widths:
            layers.append(ResidualBlock(cin, width, 2, norm))
            layers.extend(ResidualBlock(width, width, 1, norm) for _ in range(blocks - 1))
            cin = width
        self.stages = nn.Sequential(*layers)
        self.out_channels = widths[-1]

    def forward(self, pixels: Tensor) -> Tensor:
        return self.stages(self.stem(pixels))


def sine_positions_2d(height: int, width: int, dim: int, device: torch.device,
                      temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2D sine encoding, ``(height * width, dim)``: y in the first half;
    the :func:`sine_points` of the cell centres, row by row."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1)
    return sine_points(points, dim, temperature)


def initial_references(count: int) -> Tensor:
    """``(count, 2)`` anchor logits: the centres of a near-square grid over the image, row by
    row, so the queries start spread out rather than all at the centre."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    index = torch.arange(count)
    xy = torch.stack(((index % columns + 0.5) / columns, (index // columns + 0.5) / rows), -1)
    return torch.logit(xy.float())


def sine_points(xy: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``(..., dim)`` sine encoding of ``(x, y)`` points in [0, 1], y half first: what
    :func:`sine_positions_2d` gives the image tokens, so an anchor on a token's centre has
    exactly that token's encoding."""
    quarter = dim // 4
    freqs = temperature ** (torch.arange(quarter, dtype=torch.float32, device=xy.device)
                            / quarter)

    def encode(coords: Tensor) -> Tensor:
        angles = coords.float()[..., None] * (2 * math.pi) / freqs
        return torch.cat((angles.sin(), angles.cos()), dim=-1)

    return torch.cat((encode(xy[..., 1]), encode(xy[..., 0])), dim=-1)


def _ffn(d_model: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, d_model))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; positions go into queries and keys, not values."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(d_model, ffn, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, pad: Tensor) -> Tensor:
        qk = src + pos
        attended = self.attn(qk, qk, src, key_padding_mask=pad, need_weights=False)[0]
        src = self.norm1(src + self.drop(attended))
        return self.norm2(src + self.drop(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the memory, FFN; post-norm as in DETR."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout,
                                                batch_first=True)
        self.ffn = _ffn(d_model, ffn, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_pad: Tensor) -> Tensor:
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.drop(self.self_attn(qk, qk, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, memory + memory_pos, memory,
                                   key_padding_mask=memory_pad, need_weights=False)[0]
        tgt = self.norm2(tgt + self.drop(attended))
        return self.norm3(tgt + self.drop(self.ffn(tgt)))


class MLP(nn.Module):
    """``layers`` linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DetrModel(FrozenPartModel):
    """The network; ``forward(batch)`` returns per decoder layer ``logits`` and ``boxes``.

    Outputs: ``{"logits": (L, B, Q), "boxes": (L, B, Q, 4)}`` with ``L = decoder_layers``, the
    last layer last. A plain dict of tensors, so DDP and autocast handle it without help.
    """

    def __init__(self, config: DetrConfig, text_encoder: TextTower) -> None:
        super().__init__()
        d = config.d_model
        self.freeze_text = config.freeze_text
        self.text_encoder = text_encoder
        self.freeze_part("text_encoder", self.freeze_text)
        self.backbone = Backbone(config.backbone_widths, config.backbone_blocks, config.norm)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, d, 1)
        self.text_proj = nn.Sequential(nn.Linear(text_encoder.hidden_size, d), nn.LayerNorm(d))
        self.text_pos = nn.Parameter(torch.zeros(d))
        self.encoder = nn.ModuleList(EncoderLayer(d, config.heads, config.ffn, config.dropout)
                                     for _ in range(config.encoder_layers))
        self.query_embed = nn.Embedding(config.queries, d)
        self.query_text = nn.Linear(d, d)
        self.decoder = nn.ModuleList(DecoderLayer(d, config.heads, config.ffn, config.dropout)
                                     for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.class_head = nn.Linear(d, 1)
        self.box_head = MLP(d, d, 4, 3)
        nn.init.normal_(self.text_pos, std=0.02)
        self.reference = None
        if config.reference_points:
            self.reference = nn.Parameter(initial_references(config.queries))
            self.reference_pos = MLP(d, d, d, 2)
        # start at the prior "1 of Q queries is the referent", so the first steps are not spent
        # pushing every logit down (the focal-loss initialisation of Lin et al.)
        nn.init.constant_(self.class_head.bias, -math.log(max(config.queries - 1, 1)))
        self.train()

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.freeze_text:
            with torch.no_grad():
                return self.text_encoder(input_ids, attention_mask)
        return self.text_encoder(input_ids, attention_mask)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        features = self.input_proj(self.backbone(batch["pixels"]))
        size, _, height, width = features.shape
        image = features.flatten(2).transpose(1, 2)  # (B, HW, d)
        dtype = image.dtype
        image_pos = sine_positions_2d(height, width, image.shape[-1], image.device)
        mask = batch["attention_mask"].bool()
        states = (batch["text_states"] if "text_states" in batch  # from the feature cache
                  else self.encode_text(batch["input_ids"], mask.long()))
        text = self.text_proj(states).to(dtype)

        tokens = torch.cat((image, text), dim=1)
        pos = torch.cat((image_pos.to(dtype)[None].expand(size, -1, -1),
                         self.text_pos.to(dtype).expand_as(text)), dim=1)
        pad = torch.cat((mask.new_zeros((size, image.shape[1])), ~mask), dim=1)
        for layer in self.encoder:
            tokens = layer(tokens, pos, pad)

        weights = mask.to(dtype)[..., None]
        pooled = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        condition = self.query_text(pooled)[:, None]  # (B, 1, d)
        query_pos = self.query_embed.weight.to(dtype)[None] + condition
        if self.reference is not None:
            anchors = sine_points(self.reference.sigmoid(), query_pos.shape[-1])
            query_pos = query_pos + self.reference_pos(anchors).to(dtype)[None]
        # DETR starts the query content at zero; starting it at the text instead lets the very
        # first self-attention and the heads' residual path see the expression (tried on the
        # overfitting test: memorising 4 expressions took ~250 steps from zero, ~60 from text)
        tgt = condition.expand_as(query_pos)
        states = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, tokens, pos, pad)
            states.append(self.decoder_norm(tgt))
        hidden = torch.stack(states)  # (L, B, Q, d)
        raw = self.box_head(hidden)
        if self.reference is not None:  # the centre relative to the query's anchor
            shift = F.pad(self.reference.to(raw.dtype), (0, 2))
            raw = raw + shift
        return {"logits": self.class_head(hidden).squeeze(-1), "boxes": raw.sigmoid()}


# --- data -------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DetrCollator:
    """``samples -> Batch`` in DataLoader workers: images and tokens, never the model."""

    tokenizer: Any
    image_size: int
    max_length: int
    features: dict[str, FeatureTable] = field(default_factory=dict)

    def pixels(self, images: Sequence[ImageInput]) -> Tensor:
        mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        squashed = torch.stack([image_tensor(image, self.image_size) for image in images])
        return (squashed - mean) / std

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        batch = self.cached(samples) if self.features else None
        if batch is None:
            tokens = self.tokenizer([s.expression for s in samples], padding=True,
                                    truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            batch = {"pixels": self.pixels(decode_images(samples)),
                     "input_ids": tokens["input_ids"],
                     "attention_mask": tokens["attention_mask"]}
        batch["size"] = image_sizes(samples)
        target = target_boxes(samples)
        if target is not None:
            batch["target"] = target
        return batch

    def cached(self, samples: Sequence[Sample]) -> Batch | None:
        """Pixels (and, with a frozen text tower, token states) from the feature tables, or
        None when a row is missing."""
        images = image_row_keys(samples)
        texts = [s.expression for s in samples]
        pixels, tokens = self.features[DETR_PIXELS], self.features.get(DETR_TOKENS)
        if images is None or not pixels.has_all(images) or (
                tokens is not None and not tokens.has_all(texts)):
            return None
        batch: Batch = {"pixels": pixels.gather(images)["pixels"]}
        if tokens is None:
            encoded = self.tokenizer(texts, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
            batch.update(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        else:
            rows = tokens.gather(texts)
            mask = rows["mask"].bool()
            length = int(mask.sum(1).max())  # the batch's longest text, as padding=True gives
            batch.update(text_states=rows["states"][:, :length],
                         attention_mask=mask[:, :length].long())
        return batch


DETR_PIXELS = "detr-pixels"
DETR_TOKENS = "detr-text-tokens"


# --- the method -------------------------------------------------------------------------------

class DetrMethod(TrainableMethod):
    """Text-conditioned DETR: one referent logit per query, the best query's box wins."""

    name = "detr"
    summary = "trained: a text-conditioned detection transformer predicts the box (no candidates)"
    config_type: ClassVar[type[MethodConfig]] = DetrConfig
    frozen_prefixes: ClassVar[tuple[str, ...]] = (TEXT_PREFIX,)
    freeze_option: ClassVar[str | None] = "freeze_text"
    config: DetrConfig

    def __init__(self, config: DetrConfig, model: DetrModel, collator: DetrCollator,
                 device: DeviceSpec = AUTO) -> None:
        super().__init__(config, model, device)
        self._collator = collator

    @classmethod
    def build(cls, config: DetrConfig, device: DeviceSpec = AUTO) -> DetrMethod:
        text = load_text_encoder(config.text_encoder, config.text_model, config.max_text_tokens)
        model = DetrModel(config, text.tower)
        return cls(config, model, DetrCollator(text.tokenizer, config.image_size,
                                               text.max_length), device)

    def collator(self) -> DetrCollator:
        return self._collator

    def feature_groups(self) -> list[FeatureGroup]:
        """The backbone's preprocessed pixels per image (the backbone itself trains) and,
        with a frozen text tower, its token states per expression."""
        collate = self._collator
        groups = [pixel_group(DETR_PIXELS, {"size": collate.image_size, "resample": "bicubic",
                                            "mean": PIXEL_MEAN, "std": PIXEL_STD},
                              collate.pixels)]
        if self.config.freeze_text:
            model = self.model
            assert isinstance(model, DetrModel)
            groups.append(token_group(DETR_TOKENS, model.text_encoder, collate.tokenizer,
                                      collate.max_length, {"kind": self.config.text_encoder,
                                                           "name": self.config.text_model}))
        return groups

    def use_features(self, tables: Mapping[str, FeatureTable]) -> None:
        self._collator.features.update(tables)

    def loss(self, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weighted Hungarian set loss of the last decoder layer plus (``aux_loss``) the others.

        The logged ``class`` / ``l1`` / ``giou`` are the last layer's unweighted terms.
        """
        target = batch.get("target")
        if target is None:
            raise ConfigError("detr's loss needs ground-truth boxes; some samples have none")
        cfg = self.config
        targets = target[:, None, :].float()
        layers = outputs["logits"].shape[0]
        chosen = range(layers) if cfg.aux_loss else range(layers - 1, layers)
        total = outputs["logits"].new_zeros((), dtype=torch.float32)
        last: dict[str, Tensor] = {}
        for layer in chosen:
            logits, boxes = outputs["logits"][layer], outputs["boxes"][layer]
            matches = hungarian_match(logits, boxes, targets, cfg.class_weight, cfg.l1_weight,
                                      cfg.giou_weight)
            terms = set_loss(logits, boxes, targets, matches, class_loss=cfg.class_loss,
                             focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
            total = total + (cfg.class_weight * terms["class"] + cfg.l1_weight * terms["l1"]
                             + cfg.giou_weight * terms["giou"])
            last = terms
        return {"loss": total, **{k: v.detach() for k, v in last.items()}}

    def decode(self, batch: Batch, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The box of the highest-scoring query of the last layer; score = its probability."""
        logits = outputs["logits"][-1].float()
        boxes = outputs["boxes"][-1].float()
        best = logits.argmax(dim=-1)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return boxes[rows, best], logits[rows, best].sigmoid()


METHODS.register("detr")(trainable_factory(DetrMethod))
