"""The shipped models work: accuracy floors a broken model cannot pass by luck.

The floors sit well below what the shipped models score on these fixed sets (measured when they
were set: crop-rank 52.6% and graph-resolve 98.4% with the RefCOCO-scale synthref-clip,
issue 12; synthref-erpa 84.7%, issue 13; all on the same 557 expressions; with issue 25's
domain-randomised models: 52.4%, 98.2%, 89.2%) and far above
chance: the test computes, exactly, the probability that a picker choosing uniformly among each
image's annotated boxes reaches the floor, and requires it to be below 1e-6. A model with random
weights, a CLIP that lost its tokenizer, or a checkpoint that loads into the wrong layers fails;
a retrained model that is merely different passes.

The sets are SynthRef seed 21 (the shipped models were trained on seed 0), 140 images, the
train split, at the scale each model was trained for, in the standard drawing and in the
``shifted`` test drawing (issue 25: the CLIP and the detector were trained with domain
randomisation, and must keep working on a drawing they never saw).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from refground.data.synth import generate_synthref, synthref_dataset
from refground.evaluate.runner import evaluate
from refground.methods import build_method
from refground.types import Sample

pytestmark = pytest.mark.slow  # each floor evaluates a real model on 557 expressions

#: Floors on the shifted drawing (issue 25), below what the domain-randomised models scored on
#: this set when shipped (crop-rank 50.5%, graph-resolve 95.6% on gt boxes and 91.6% on the
#: detector's, erpa 85.8%; printed by each test with -s) and above what the standard-drawing
#: models they replaced score on shifted drawings (seed 0 test: crop-rank 43.2%, graph-resolve
#: 77.5% with synthref-clip-1), so a CLIP that lost its robustness fails.
SHIFTED_CROP_RANK_FLOOR = 0.45
SHIFTED_GRAPH_RESOLVE_FLOOR = 0.85
SHIFTED_ERPA_FLOOR = 0.75
#: method, options, (SynthRef scale, rendering) it is measured on, Acc@0.5 floor
FLOORS = [
    ("crop-rank", {}, ("refcoco", "standard"), 0.40),
    ("graph-resolve", {}, ("refcoco", "standard"), 0.85),
    # the shipped detector's boxes
    ("graph-resolve", {"proposals": "auto"}, ("refcoco", "standard"), 0.85),
    ("erpa", {"checkpoint": "synthref-erpa"}, ("refcoco", "standard"), 0.70),
    ("crop-rank", {}, ("refcoco", "shifted"), SHIFTED_CROP_RANK_FLOOR),
    ("graph-resolve", {}, ("refcoco", "shifted"), SHIFTED_GRAPH_RESOLVE_FLOOR),
    ("graph-resolve", {"proposals": "auto"}, ("refcoco", "shifted"), SHIFTED_GRAPH_RESOLVE_FLOOR),
    ("erpa", {"checkpoint": "synthref-erpa"}, ("refcoco", "shifted"), SHIFTED_ERPA_FLOOR),
]
#: The shipped detector: referent recall@0.5 among its top 50 boxes (measured: 100% on SynthRef
#: seed 0 test, testC and testR).
DETECTOR_RECALL_FLOOR = 0.98
LUCK = 1e-6


def chance_of_at_least(probabilities: list[float], hits: int) -> float:
    """P(at least ``hits`` successes) for independent trials with these success chances
    (the Poisson-binomial tail, by dynamic programming over the count)."""
    counts = [1.0]  # counts[k] = P(k successes so far)
    for p in probabilities:
        counts = [(counts[k] if k < len(counts) else 0.0) * (1 - p)
                  + (counts[k - 1] * p if k > 0 else 0.0) for k in range(len(counts) + 1)]
    return sum(counts[hits:])


def test_chance_tail_matches_a_binomial() -> None:
    # 10 fair coins: P(>= 8 heads) = (45 + 10 + 1) / 1024
    assert chance_of_at_least([0.5] * 10, 8) == pytest.approx(56 / 1024)
    assert chance_of_at_least([1.0, 0.0], 1) == pytest.approx(1.0)


Drawn = tuple[str, str]  # (scale, rendering)


@pytest.fixture(scope="module")
def unseen_splits(tmp_path_factory: pytest.TempPathFactory
                  ) -> Callable[[Drawn], tuple[Path, list[Sample]]]:
    """SynthRef seed 21 at a scale and rendering, generated once per pair."""
    made: dict[Drawn, tuple[Path, list[Sample]]] = {}

    def split(drawn: Drawn) -> tuple[Path, list[Sample]]:
        if drawn not in made:
            scale, rendering = drawn
            root = tmp_path_factory.mktemp(f"shipped-{scale}-{rendering}") / "data"
            generate_synthref(root, seed=21, num_images=140, scale=scale, rendering=rendering)
            made[drawn] = root, list(synthref_dataset(root).split("train").samples)
        return made[drawn]

    return split


@pytest.mark.parametrize(("name", "options", "drawn", "floor"), FLOORS,
                         ids=[f"{name}-{options.get('proposals', 'gt')}-{drawn[1]}"
                              for name, options, drawn, _ in FLOORS])
def test_shipped_models_clear_their_floor(
        unseen_splits: Callable[[Drawn], tuple[Path, list[Sample]]], name: str,
        options: dict[str, str], drawn: Drawn, floor: float) -> None:
    root, samples = unseen_splits(drawn)
    chances = [1 / len(s.annotations) for s in samples]
    needed = -(-int(floor * 1000) * len(samples) // 1000)  # ceil(floor * n)
    assert len(samples) >= 500
    assert chance_of_at_least(chances, needed) < LUCK, "too few samples for this floor"
    method = build_method(name, **options)
    method.prepare(synthref_dataset(root))
    metrics = evaluate(method, samples, progress=False).metrics
    print(f"{name} on {len(samples)} unseen expressions ({drawn}): Acc@0.5 {metrics['acc@0.5']}")
    assert metrics["acc@0.5"] >= floor, (name, metrics["acc@0.5"], metrics["by_type"])


@pytest.mark.parametrize("rendering", ["standard", "shifted"])
def test_the_shipped_detector_recalls_every_referent(
        unseen_splits: Callable[[Drawn], tuple[Path, list[Sample]]], rendering: str) -> None:
    from refground.evaluate.proposal_recall import proposer_recall
    from refground.vision.proposals import build_proposer

    _, samples = unseen_splits(("refcoco", rendering))
    recall = proposer_recall(build_proposer("auto", device="cpu"), samples)
    print(f"synthref-det on {len(samples)} unseen expressions: {recall}")
    assert recall["recall@0.5@50"] >= DETECTOR_RECALL_FLOOR, recall
    assert recall["proposals_per_image"] <= 12  # SynthRef draws at most 8 objects


#: The shipped box regressors (issue 13: they had collapsed to one constant box), Acc@0.5 on
#: the unseen set: floor, measured when shipped (seed 0 test: regressor 20.0, detr 17.6).
REGRESSOR_FLOORS = [("regressor", "synthref-regressor", 0.08), ("detr", "synthref-detr", 0.08)]


def constant_box_accuracy(samples: list[Sample]) -> float:
    """Acc@0.5 of the best one-box-for-everything answer: the mean normalised gt box."""
    import torch

    from refground import boxes as B

    scale = torch.tensor([[s.width, s.height] * 2 for s in samples], dtype=torch.float32)
    gt = B.as_tensor([s.gt_box for s in samples])
    constant = (gt / scale).mean(0, keepdim=True) * scale
    return float((B.iou(constant, gt) >= 0.5).float().mean())


@pytest.mark.parametrize(("name", "checkpoint", "floor"), REGRESSOR_FLOORS,
                         ids=[checkpoint for _, checkpoint, _ in REGRESSOR_FLOORS])
def test_shipped_regressors_beat_a_constant_box(
        unseen_splits: Callable[[Drawn], tuple[Path, list[Sample]]], name: str, checkpoint: str,
        floor: float) -> None:
    root, samples = unseen_splits(("refcoco", "standard"))
    baseline = constant_box_accuracy(samples)
    method = build_method(name, checkpoint=checkpoint)
    method.prepare(synthref_dataset(root))
    metrics = evaluate(method, samples, progress=False).metrics
    print(f"{checkpoint}: Acc@0.5 {metrics['acc@0.5']}, constant box {baseline}")
    assert metrics["acc@0.5"] >= max(floor, 3 * baseline), (metrics["acc@0.5"], baseline)
