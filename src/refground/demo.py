"""``refground demo``: everything end to end on a fresh offline machine.

It generates a small SynthRef (nothing to download), evaluates the built-in methods with the
shipped SynthRef CLIP -- and the shipped trained model, when the package carries one -- and
grounds a few expressions of one test image through the Python API, writing a picture of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refground import boxes as B
from refground.api import Grounder
from refground.data.synth import generate_synthref, synthref_dataset
from refground.evaluate.runner import evaluate
from refground.methods import (
    METHODS,
    build_method,
    method_type,
    trainable_methods,
)
from refground.types import Sample
from refground.vision.shipped import shipped_path

#: The method the picture examples use: the best zero-shot one on SynthRef.
EXAMPLE_METHOD = "graph-resolve"


def demo_methods() -> dict[str, tuple[str, dict[str, Any]]]:
    """The methods the demo evaluates, display name -> (registered method, options).

    A method is in the demo when it declares a ``demo_order`` (:class:`~refground.methods.
    Method`), its table row's place: each zero-shot one as it is, each trainable one with its
    ``demo_checkpoint`` when the package ships it (shown as "name (checkpoint)"). Adding a
    method to the demo is setting those attributes on its class, not editing this file.
    """
    trainable = set(trainable_methods())
    rows: list[tuple[int, str, tuple[str, dict[str, Any]]]] = []
    for name in METHODS.names():
        kind = method_type(name)
        order = getattr(kind, "demo_order", None)
        checkpoint = getattr(kind, "demo_checkpoint", None)
        if order is None:
            continue
        if checkpoint is not None:
            path = shipped_path(checkpoint)
            if path is not None:
                rows.append((order, f"{name} ({checkpoint})",
                             (name, {"checkpoint": str(path)})))
        elif name not in trainable:  # an untrained model has nothing to show
            rows.append((order, name, (name, {})))
    return {display: spec for _, display, spec in sorted(rows)}


@dataclass(frozen=True)
class GroundedExample:
    """One expression grounded through :class:`~refground.api.Grounder`, and its picture."""

    expression: str
    expression_type: str | None
    iou: float
    picture: Path


def example_image(samples: Sequence[Sample]) -> list[Sample]:
    """The samples of the test image whose expressions cover the most expression types."""
    by_image: dict[Path, list[Sample]] = {}
    for sample in samples:
        by_image.setdefault(sample.image_path, []).append(sample)
    return max(by_image.values(),
               key=lambda group: (len({s.expression_type for s in group}), len(group)))


def ground_examples(samples: Sequence[Sample], out: Path, count: int = 4) -> list[GroundedExample]:
    """Ground up to ``count`` expressions of one image (one per type first) and draw them.

    The candidate boxes are the image's annotations, given as ``boxes=`` exactly as a user
    would pass their own (no detector is available offline).
    """
    from refground.viz.draw import draw_prediction

    group = example_image(samples)
    chosen: list[Sample] = []
    for sample in group:  # one expression per type first, then whatever is left
        if sample.expression_type not in {s.expression_type for s in chosen}:
            chosen.append(sample)
    chosen += [s for s in group if s not in chosen]
    grounder = Grounder.load(EXAMPLE_METHOD)
    out.mkdir(parents=True, exist_ok=True)
    examples = []
    for index, sample in enumerate(chosen[:count]):
        boxes = [annotation.box for annotation in sample.annotations]
        prediction = grounder.ground(sample.image_path, sample.expression, boxes=boxes)
        picture = out / f"{index:02d}-{sample.expression_type or 'expression'}.png"
        draw_prediction(sample.image_path, prediction, sample.expression).save(picture)
        iou = float(B.iou(B.as_tensor([prediction.box]), B.as_tensor([sample.gt_box]))[0])
        examples.append(GroundedExample(sample.expression, sample.expression_type, iou,
                                        picture))
    return examples


@dataclass(frozen=True)
class DemoResult:
    metrics: dict[str, dict[str, Any]]
    examples: list[GroundedExample]
    expressions: int


def run_demo(out: Path, images: int = 200, seed: int = 7) -> DemoResult:
    """Generate SynthRef in ``out``, evaluate every demo method, ground and draw examples."""
    data_root = out / "synthref-data"
    generate_synthref(data_root, seed=seed, num_images=images)
    dataset = synthref_dataset(data_root)
    split = dataset.split("test")
    metrics = {}
    for display, (name, options) in demo_methods().items():
        method = build_method(name, **options)
        method.prepare(dataset)
        run_dir = out / display.split()[0]
        metrics[display] = evaluate(method, split.samples, run_dir, progress=False).metrics
    examples = ground_examples(split.samples, out / "pictures")
    return DemoResult(metrics, examples, len(split))
