"""A small HRNet-style CNN in plain torch: image features on one grid, at several resolutions.

Why HRNet: a box regressor needs *where* things are, and HRNet (Wang et al. 2019) keeps a
high-resolution branch alive through the whole network instead of recovering it from a
low-resolution bottleneck. Parallel branches at 1/4, 1/8, 1/16 (and optionally 1/32) of the
input exchange information after every stage (upsample + 1x1 conv from coarse to fine, strided
3x3 convs from fine to coarse), so the fine branch also sees context.

The network here is deliberately small (default widths ``(16, 32, 64)``) and self-contained:
torchvision and timm are not installed with the CPU torch we pin. :func:`build_cnn_branch` can
use a timm backbone instead (``"timm:<name>"``); timm is imported only then.

``norm="group"`` swaps batch norm for group norm: its output for a sample does not depend on
the rest of the batch, which multi-process (DDP) equivalence tests need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refground.errors import ConfigError, MissingDependencyError

NormKind = Literal["batch", "group"]
NORM_KINDS: tuple[str, ...] = ("batch", "group")
TIMM_PREFIX = "timm:"
#: ImageNet statistics: what the CNN branch's inputs are normalised with (timm's default too).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def norm_layer(kind: NormKind, channels: int) -> nn.Module:
    """Batch norm, or group norm with at most 8 groups of (where possible) 8+ channels each.

    Group norm normalises each sample on its own, so a per-sample offset shared by a group's
    channels (the tiled text embedding is one) is removed; wide groups keep the differences
    between channels, which carry it. Narrow branches of a small network get fewer groups.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, max(1, min(8, channels // 8))), channels)
    raise ConfigError(f"norm must be one of {', '.join(NORM_KINDS)}, got {kind!r}")


def conv_norm_relu(in_channels: int, out_channels: int, norm: NormKind, *, kernel: int = 3,
                   stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias: the norm has one) -> norm -> optional ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        norm_layer(norm, out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def resample(x: Tensor, size: int) -> Tensor:
    """Resize a ``(N, C, H, W)`` map to ``size x size``.

    Shrinking averages (adaptive pooling: no aliasing, exact block means for integer ratios);
    growing interpolates bilinearly.
    """
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    if height >= size and width >= size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """ResNet's two-3x3-conv residual block, at constant width and resolution."""

    def __init__(self, channels: int, norm: NormKind) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_norm_relu(channels, channels, norm),
                                  conv_norm_relu(channels, channels, norm, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.body(x))


class FuseLayer(nn.Module):
    """HRNet's exchange unit: every output branch sums all input branches brought to its size.

    From a coarser branch: 1x1 conv + norm, then upsampling (nearest, as in HRNet). From a finer
    branch: a chain of strided 3x3 convs, one per halving, ReLU between but not after the last.
    """

    def __init__(self, widths: Sequence[int], norm: NormKind) -> None:
        super().__init__()
        self.paths = nn.ModuleList()
        for i, width_out in enumerate(widths):
            row = nn.ModuleList()
            for j, width_in in enumerate(widths):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(conv_norm_relu(width_in, width_out, norm, kernel=1, relu=False))
                else:
                    steps = [conv_norm_relu(width_in, width_in, norm, stride=2)
                             for _ in range(i - j - 1)]
                    steps.append(conv_norm_relu(width_in, width_out, norm, stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        outputs = []
        for i, row in enumerate(self.paths):
            size = xs[i].shape[-2:]
            total = xs[i]
            for j, path in enumerate(row):
                if j == i:
                    continue
                y = path(xs[j])
                if j > i:
                    y = F.interpolate(y, size=size, mode="nearest")
                total = total + y
            outputs.append(self.relu(total))
        return outputs


class Stage(nn.Module):
    """``blocks`` basic blocks on each branch, then one multi-resolution fusion."""

    def __init__(self, widths: Sequence[int], blocks: int, norm: NormKind) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(w, norm) for _ in range(blocks))) for w in widths)
        self.fuse = FuseLayer(widths, norm) if len(widths) > 1 else None

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        return self.fuse(xs) if self.fuse is not None else xs


class HRNet(nn.Module):
    """Image ``(N, 3, H, W)`` -> features ``(N, out_channels, out_size, out_size)``.

    Stem: two stride-2 3x3 convs (1/4 resolution). Stage ``k`` (1-based) runs ``k`` parallel
    branches at 1/4 ... 1/2^(k+1); before it, a strided 3x3 conv from the coarsest branch opens
    the new one. ``widths`` gives one channel count per branch, so its length (2 to 4) is the
    number of stages. The head resamples every branch to ``out_size`` (pooling down, bilinear
    up), concatenates them (``sum(widths)`` channels) and, when ``out_channels`` is set, mixes
    them with a 1x1 conv + norm + ReLU.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: int = 2, *,
                 out_size: int = 14, out_channels: int | None = 64, norm: NormKind = "batch",
                 stem_channels: int | None = None) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not 2 <= len(widths) <= 4:
            raise ConfigError(f"HRNet widths need 2 to 4 branches (1/4 ... 1/32), got {widths}")
        if min(widths) < 1 or blocks < 1 or out_size < 1:
            raise ConfigError(f"HRNet widths, blocks and out_size must be positive, got "
                              f"widths={widths}, blocks={blocks}, out_size={out_size}")
        if out_channels is not None and out_channels < 1:
            raise ConfigError(f"HRNet out_channels must be positive, got {out_channels}")
        norm_layer(norm, widths[0])  # validates ``norm`` early, with the ConfigError message
        stem = stem_channels or max(widths[0], 16)
        self.widths = widths
        self.out_size = out_size
        self.stem = nn.Sequential(conv_norm_relu(3, stem, norm, stride=2),
                                  conv_norm_relu(stem, widths[0], norm, stride=2))
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList([Stage(widths[:1], blocks, norm)])
        for k in range(2, len(widths) + 1):
            self.transitions.append(conv_norm_relu(widths[k - 2], widths[k - 1], norm, stride=2))
            self.stages.append(Stage(widths[:k], blocks, norm))
        concat = sum(widths)
        self.out_channels = out_channels or concat
        self.head: nn.Module = (conv_norm_relu(concat, out_channels, norm, kernel=1)
                                if out_channels is not None else nn.Identity())

    def branch_features(self, images: Tensor) -> list[Tensor]:
        """The branches after the last stage, finest first (1/4, 1/8, ...)."""
        xs = self.stages[0]([self.stem(images)])
        for transition, stage in zip(self.transitions, self.stages[1:], strict=True):
            xs = stage([*xs, transition(xs[-1])])
        return xs

    def forward(self, images: Tensor) -> Tensor:
        xs = self.branch_features(images)
        return self.head(torch.cat([resample(x, self.out_size) for x in xs], dim=1))


class TimmFeatures(nn.Module):
    """A timm backbone's multi-scale feature maps, resampled to one grid and mixed like HRNet's.

    ``features_only=True`` makes any timm CNN (``hrnet_w18_small``, ``resnet50``, ...) return
    its stage outputs; the head is the same as :class:`HRNet`'s.
    """

    def __init__(self, name: str, *, out_size: int, out_channels: int | None, norm: NormKind,
                 pretrained: bool = True) -> None:
        super().__init__()
        timm = import_timm(name)
        try:
            self.backbone = timm.create_model(name, pretrained=pretrained, features_only=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(f"timm cannot build backbone {name!r}: {exc}") from exc
        concat = int(sum(self.backbone.feature_info.channels()))
        self.out_size = out_size
        self.out_channels = out_channels or concat
        self.head: nn.Module = (conv_norm_relu(concat, out_channels, norm, kernel=1)
                                if out_channels is not None else nn.Identity())

    def forward(self, images: Tensor) -> Tensor:
        xs = self.backbone(images)
        return self.head(torch.cat([resample(x, self.out_size) for x in xs], dim=1))


def import_timm(name: str) -> Any:
    """Import timm (and check torchvision, which timm needs), or explain how to get them."""
    try:
        import timm
        import torchvision  # noqa: F401 - timm's models import it; fail here with a clear hint
    except ImportError as exc:
        raise MissingDependencyError(
            f"the CNN backbone 'timm:{name}' needs timm and torchvision, which are not "
            f"installed ({exc}). Install them with `pip install timm torchvision` (matching "
            "your torch build), or use the built-in backbone 'hrnet'."
        ) from exc
    return timm


def build_cnn_branch(backbone: str = "hrnet", *, widths: Sequence[int] = (16, 32, 64),
                     blocks: int = 2, out_size: int = 14, out_channels: int | None = 64,
                     norm: NormKind = "batch") -> HRNet | TimmFeatures:
    """The image CNN by name: ``"hrnet"`` (built in) or ``"timm:<model name>"`` (pretrained)."""
    if backbone == "hrnet":
        return HRNet(widths, blocks, out_size=out_size, out_channels=out_channels, norm=norm)
    if backbone.startswith(TIMM_PREFIX) and backbone[len(TIMM_PREFIX):]:
        return TimmFeatures(backbone[len(TIMM_PREFIX):], out_size=out_size,
                            out_channels=out_channels, norm=norm)
    raise ConfigError(f"CNN backbone must be 'hrnet' or 'timm:<model name>', got {backbone!r}")
