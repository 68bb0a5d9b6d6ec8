"""SynthRef scales: how big objects are relative to the image, as named, frozen scene settings.

``refcoco`` (the default)
    Referents as large, relative to the image, as RefCOCOg's people, animals, vehicles and
    furniture: 320-384 px canvases, nominal sides 60-192 px, median referent box about 6% of
    the image, almost all above 2%, some above 20%. The shipped ``synthref-clip`` is trained
    on it. Eight such objects cannot share a canvas at random sizes, so a fill budget makes
    crowded scenes draw smaller classes (as a photo of many things is taken from further
    away) and the biggest objects are placed first.
``small``
    The original SynthRef layout, kept as a stress setting: 320-640 px canvases, nominal sides
    24-76 px, so the median referent box covers under 1% of the image (under one patch of a
    whole-image CLIP view). The first SynthRef CLIP and erpa were trained on it (retired in
    issues 12 and 13 for the ``refcoco`` scale).

A scale is only scene geometry; expressions, splits and rendering are the same for every
scale, and every spatial rule in :mod:`~refground.data.synth.logical_forms` is relative to
object or image size, so the unambiguity checks hold unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from refground.data.synth.scenes import SceneConfig
from refground.errors import ConfigError

# The one place the default scale lives (the CLI and generate_synthref read it).
DEFAULT_SCALE = "refcoco"

SCALES: Mapping[str, SceneConfig] = MappingProxyType({
    "small": SceneConfig(),
    "refcoco": SceneConfig(
        min_side=320, max_side=384, gap=8,
        # adjacent classes >= 1.25x apart in side, as at the small scale
        sizes=(("small", 60, 75), ("medium", 96, 120), ("large", 150, 192)),
        max_fill=0.6, placement="largest-first", placement_tries=600,
    ),
})


def scene_config_for(scale: str) -> SceneConfig:
    """The frozen scene settings of a named scale."""
    try:
        return SCALES[scale]
    except KeyError:
        raise ConfigError(f"unknown SynthRef scale {scale!r}; choose one of: "
                          f"{', '.join(SCALES)}") from None


def scale_of(scene_record: Mapping[str, Any], sizes: Mapping[str, Any]) -> str | None:
    """The scale whose settings a dataset recorded (``info.args.scene`` and ``info.sizes`` of
    its ``instances.json``), or None for custom settings."""
    for name, config in SCALES.items():
        preset_sizes = {size: [low, high] for size, low, high in config.sizes}
        if dict(scene_record) == config.record() and dict(sizes) == preset_sizes:
            return name
    return None
