"""A small class-agnostic CenterNet: the detector that lets refground ground from text alone.

Follows "Objects as Points" (Zhou, Wang and Krähenbühl, 2019): every object is the peak of a
heatmap at its box centre, with the box's size and the centre's sub-cell offset regressed at
that cell. Chosen over the project's own detr for the offline detector because it has no
anchors, no matching and no NMS (a 3x3 max-pool keeps local peaks), and converges in minutes on
a CPU, where a DETR needs hundreds of epochs. The Gaussian around each centre is elliptical,
its sides proportional to the box's (TTFNet, Liu et al. 2019), so tall and wide boxes train
alike.

The network is a plain strided CNN (strides 2..32) with a top-down path back to the output
stride (8 by default, as a feature-pyramid level), wide enough for SynthRef's 60-192 px
objects; heads for heatmap (one class: "object"), log box size and centre offset.

Weights are ``model.safetensors`` beside ``detector.json`` (the :class:`CenterNetConfig`), read
by :func:`load_centernet` and written by :func:`save_centernet`; the shipped ``synthref-det``
is such a directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from refground import boxes as B
from refground.errors import ModelLoadError

CONFIG_FILE = "detector.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE = "centernet"
#: Prior probability of "object" at initialisation (the heatmap bias), as in CenterNet/RetinaNet.
PRIOR = 0.1


@dataclass(frozen=True)
class CenterNetConfig:
    """The network's shape; saved in ``detector.json`` so a directory rebuilds its model."""

    image_size: int = 256  # images are resized to image_size x image_size
    widths: tuple[int, ...] = (16, 32, 64, 96, 128)  # one stage per stride 2, 4, 8, 16, 32
    output_level: int = 2  # index into widths: stride 2 ** (output_level + 1)
    head_width: int = 64
    gaussian_alpha: float = 0.54  # Gaussian sigma = alpha * side / 6 (TTFNet)

    def __post_init__(self) -> None:
        if not 0 <= self.output_level < len(self.widths):
            raise ValueError(f"output_level {self.output_level} has no stage in {self.widths}")
        if self.image_size % (2 ** len(self.widths)):
            raise ValueError(f"image_size {self.image_size} must be a multiple of "
                             f"{2 ** len(self.widths)} (the deepest stride)")

    @property
    def stride(self) -> int:
        return 2 ** (self.output_level + 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.stride


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class CenterNet(nn.Module):
    """Images ``(B, 3, S, S)`` in [0, 1] -> heatmap logits ``(B, 1, G, G)``, log sizes
    ``(B, 2, G, G)`` (box w, h as fractions of the image) and offsets ``(B, 2, G, G)`` (centre
    within its cell, in cells)."""

    def __init__(self, config: CenterNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        stages, cin = [], 3
        for level, width in enumerate(widths):  # the stride-2 stem is one convolution
            convs = [_conv(cin, width, 2)] + ([_conv(width, width)] if level else [])
            stages.append(nn.Sequential(*convs))
            cin = width
        self.stages = nn.ModuleList(stages)
        levels = range(config.output_level, len(widths))
        self.lateral = nn.ModuleList(nn.Conv2d(widths[i], config.head_width, 1) for i in levels)
        self.smooth = nn.Sequential(_conv(config.head_width, config.head_width),
                                    _conv(config.head_width, config.head_width))
        # 1x1 heads on shared features: CenterNet's per-head 3x3 convolutions would triple
        # the cost of the largest grid for no gain on SynthRef
        self.heatmap = nn.Conv2d(config.head_width, 1, 1)
        self.size = nn.Conv2d(config.head_width, 2, 1)
        self.offset = nn.Conv2d(config.head_width, 2, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = (images - 0.5) / 0.5
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        pyramid = features[self.config.output_level:]
        top = self.lateral[-1](pyramid[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(pyramid[:-1]),
                                    strict=True):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode="nearest")
        top = self.smooth(top)
        return {"heatmap": self.heatmap(top), "size": self.size(top),
                "offset": self.offset(top)}


# --- inputs ---------------------------------------------------------------------------------

def image_batch(images: Sequence[Image.Image], size: int) -> Tensor:
    """RGB images resized (bilinear) to ``size`` x ``size``, as ``(B, 3, size, size)`` in [0, 1]."""
    arrays = [np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
              for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


# --- targets and loss -----------------------------------------------------------------------

@dataclass(frozen=True)
class Targets:
    """One batch's training targets on the output grid: Gaussian heatmap, and at each object's
    centre cell (``index``, flattened; ``mask`` marks real objects) its log size and offset."""

    heatmap: Tensor  # (B, 1, G, G)
    index: Tensor  # (B, M) long
    log_size: Tensor  # (B, M, 2)
    offset: Tensor  # (B, M, 2)
    mask: Tensor  # (B, M) bool


def build_targets(boxes: Sequence[Tensor], config: CenterNetConfig) -> Targets:
    """Targets from each image's boxes, normalised xyxy in [0, 1] (``(N_i, 4)``).

    Each object's Gaussian is centred on the cell holding its centre, so that cell is exactly 1
    (the focal loss's positive); where Gaussians overlap the heatmap keeps the maximum."""
    grid = config.grid
    slots = max(1, max((len(b) for b in boxes), default=0))
    heatmap = torch.zeros(len(boxes), 1, grid, grid)
    index = torch.zeros(len(boxes), slots, dtype=torch.long)
    log_size = torch.zeros(len(boxes), slots, 2)
    offset = torch.zeros(len(boxes), slots, 2)
    mask = torch.zeros(len(boxes), slots, dtype=torch.bool)
    for b, image_boxes in enumerate(boxes):
        n = len(image_boxes)
        if not n:
            continue
        cxcywh = B.xyxy_to_cxcywh(image_boxes.float())
        sides = cxcywh[:, 2:].clamp_min(1e-6)
        cells = (cxcywh[:, :2] * grid).floor().clamp(0, grid - 1)
        snapped = torch.cat([(cells + 0.5) / grid, sides], dim=1)
        gaussians = B.gaussian_heatmaps(snapped, grid, config.gaussian_alpha / 6, 0.5 / grid)
        heatmap[b, 0] = gaussians.amax(0).view(grid, grid)
        index[b, :n] = (cells[:, 1] * grid + cells[:, 0]).long()
        log_size[b, :n] = sides.log()
        offset[b, :n] = cxcywh[:, :2] * grid - cells
        mask[b, :n] = True
    return Targets(heatmap, index, log_size, offset, mask)


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of peaks."""
    prob = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    peaks = target.eq(1.0).float()
    positive = -torch.log(prob) * (1 - prob) ** alpha * peaks
    negative = -torch.log(1 - prob) * prob ** alpha * (1 - target) ** beta * (1 - peaks)
    return (positive.sum() + negative.sum()) / peaks.sum().clamp(min=1.0)


def _gather(maps: Tensor, index: Tensor) -> Tensor:
    """``(B, C, G, G)`` values at flattened cells ``(B, M)`` -> ``(B, M, C)``."""
    flat = maps.flatten(2)
    return flat.gather(2, index[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def centernet_loss(outputs: dict[str, Tensor], targets: Targets, size_weight: float = 1.0,
                   offset_weight: float = 1.0) -> dict[str, Tensor]:
    """Focal heatmap loss + L1 on log size and offset at the object centres."""
    heat = focal_loss(outputs["heatmap"], targets.heatmap)
    mask = targets.mask[..., None].float()
    n = mask.sum().clamp(min=1.0)
    size = (F.l1_loss(_gather(outputs["size"], targets.index).float(), targets.log_size,
                      reduction="none") * mask).sum() / n
    offset = (F.l1_loss(_gather(outputs["offset"], targets.index).float(), targets.offset,
                        reduction="none") * mask).sum() / n
    return {"loss": heat + size_weight * size + offset_weight * offset, "heatmap": heat,
            "size": size, "offset": offset}


# --- decoding -------------------------------------------------------------------------------

def decode(outputs: dict[str, Tensor], config: CenterNetConfig, top_k: int = 100
           ) -> tuple[Tensor, Tensor]:
    """Local heatmap peaks (3x3 max-pool) as boxes: ``(B, K, 4)`` normalised xyxy and ``(B, K)``
    scores, best first, ``K = min(top_k, G * G)``."""
    heat = torch.sigmoid(outputs["heatmap"].float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    batch, grid = heat.shape[0], heat.shape[-1]
    scores, index = peaks.flatten(1).topk(min(top_k, grid * grid))
    offset = _gather(outputs["offset"].float(), index)
    size = _gather(outputs["size"].float(), index).clamp(max=0.0).exp()
    cx = ((index % grid).float() + offset[..., 0]) / grid
    cy = ((index // grid).float() + offset[..., 1]) / grid
    boxes = torch.stack([cx - size[..., 0] / 2, cy - size[..., 1] / 2,
                         cx + size[..., 0] / 2, cy + size[..., 1] / 2], dim=-1)
    return boxes.clamp(0.0, 1.0).reshape(batch, -1, 4), scores


# --- files ----------------------------------------------------------------------------------

def save_centernet(model: CenterNet, directory: Path, dtype: torch.dtype = torch.float32
                   ) -> Path:
    """Write ``detector.json`` and the weights (cast to ``dtype``) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    record = {"architecture": ARCHITECTURE, **asdict(model.config)}
    (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return directory


def load_centernet(directory: str | Path) -> CenterNet:
    """Rebuild a :class:`CenterNet` from a directory written by :func:`save_centernet`.

    Every weight must be present with its shape; anything else raises
    :class:`~refground.errors.ModelLoadError` naming the file and the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        record = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{directory} is not a refground detector ({CONFIG_FILE}: "
                             f"{exc})") from None
    if not isinstance(record, dict) or record.pop("architecture", None) != ARCHITECTURE:
        raise ModelLoadError(f"{directory / CONFIG_FILE} does not describe a {ARCHITECTURE}")
    try:
        config = CenterNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in record.items()})
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{directory / CONFIG_FILE}: {exc}") from None
    model = CenterNet(config)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read detector weights {directory / WEIGHTS_FILE}: "
                             f"{exc}") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ModelLoadError(f"{directory / WEIGHTS_FILE} does not fit {CONFIG_FILE}: missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}, wrong shape "
                             f"{sorted(wrong)[:3]}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()
