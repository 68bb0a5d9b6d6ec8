"""SynthRef: an offline, synthetic referring-expression benchmark in the REFER file layout.

Scenes of coloured shapes on textured backgrounds, with expressions of five types (attribute,
position, relation, comparative, ordinal), each carrying its gold scene graph and checked to
name exactly one object. Splits train / val / test / testC (held-out colour-shape
combinations) / testR (relations only). Object sizes relative to the image are a named scale
(:mod:`~refground.data.synth.scales`: ``refcoco``, the default, or ``small``). Load it with
``synthref_dataset(out_dir).split(split)`` (a :class:`~refground.data.Dataset`).
"""

from refground.data.synth.logical_forms import EXPRESSION_TYPES
from refground.data.synth.scales import DEFAULT_SCALE, SCALES, scale_of, scene_config_for
from refground.data.synth.scenes import COLORS, SHAPES, SIZES, SceneConfig
from refground.data.synth.writer import (
    DEFAULT_FRACTIONS,
    SPLITS,
    SplitStats,
    SynthStats,
    generate_synthref,
    synthref_dataset,
)

__all__ = [
    "COLORS",
    "DEFAULT_FRACTIONS",
    "DEFAULT_SCALE",
    "EXPRESSION_TYPES",
    "SCALES",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SceneConfig",
    "SplitStats",
    "SynthStats",
    "generate_synthref",
    "scale_of",
    "scene_config_for",
    "synthref_dataset",
]
