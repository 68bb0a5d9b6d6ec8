"""graph-resolve and its soft geometry.

The geometry is checked against hand-built boxes and against SynthRef's own (hard, numpy)
rules; the counting dynamic programs against brute-force enumeration; the method end to end on
a tiny generated SynthRef with the shipped CLIP and gold graphs.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from refground import boxes as B
from refground.data.synth import generate_synthref, synthref_dataset
from refground.data.synth.logical_forms import TRUE, _box_gaps, _directional, _next_to
from refground.errors import ConfigError, UnknownNameError
from refground.language import spatial
from refground.methods import METHODS, build_method
from refground.methods.crop_rank import CropRank
from refground.methods.graph_resolve import (
    LOG_FLOOR,
    GraphResolve,
    GraphResolver,
    ResolveConfig,
    likely_pairs,
    log_membership,
    pair_truth,
)
from refground.methods.proposal_scoring import ScoringItem
from refground.types import Entity, Relation, Sample, SceneGraph
from refground.vision.proposals import Proposals

# Three boxes in a row near the bottom of a 100 x 200 image, and one high above the middle one.
ROW = torch.tensor([[0.0, 140, 10, 150], [20, 140, 30, 150], [40, 140, 50, 150],
                    [20, 0, 30, 10]])


def geometry(boxes: torch.Tensor = ROW, width: float = 100, height: float = 200
             ) -> spatial.Geometry:
    return spatial.Geometry.of(boxes, width, height)


def argmax(values: torch.Tensor) -> int:
    return int(values.argmax())


# --- relations ----------------------------------------------------------------------------------

def test_directional_truth_tables_on_a_row() -> None:
    left_of = spatial.relation("left of", geometry())
    above = spatial.relation("above", geometry())
    assert left_of is not None and above is not None
    expected_left = torch.zeros(4, 4)
    expected_left[0, 1] = expected_left[0, 2] = expected_left[1, 2] = 1.0
    torch.testing.assert_close(left_of, expected_left)
    expected_above = torch.zeros(4, 4)
    expected_above[3, :3] = 1.0  # box 3 is above all three (within 45 degrees of vertical)
    torch.testing.assert_close(above, expected_above)
    torch.testing.assert_close(spatial.relation("right of", geometry()), expected_left.T)
    torch.testing.assert_close(spatial.relation("below", geometry()), expected_above.T)
    assert spatial.relation("to the left of", geometry()) is not None  # alias


def random_layout(seed: int, count: int = 7) -> np.ndarray:
    """Non-overlapping square boxes of mixed sizes in a 400 x 400 image."""
    rng = np.random.default_rng(seed)
    boxes: list[list[float]] = []
    while len(boxes) < count:
        side = rng.uniform(15, 60)
        x, y = rng.uniform(0, 400 - side, size=2)
        box = [x, y, x + side, y + side]
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
               for b in boxes):
            boxes.append(box)
    return np.array(boxes)


@pytest.mark.parametrize("seed", range(5))
def test_soft_relations_agree_with_synthref_where_it_is_sure(seed: int) -> None:
    boxes = random_layout(seed)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    hard = {"left of": _directional(boxes, centers, 0), "above": _directional(boxes, centers, 1),
            "next to": _next_to(_box_gaps(boxes), sides)}
    geo = geometry(torch.tensor(boxes, dtype=torch.float32), 400, 400)
    for predicate, truth in hard.items():
        soft = spatial.relation(predicate, geo)
        assert soft is not None
        sure = truth != 0.5
        np.testing.assert_allclose(soft.numpy()[sure], (truth[sure] == TRUE).astype(np.float32),
                                   atol=1e-5, err_msg=predicate)


def test_closest_to_depends_on_the_other_members() -> None:
    # anchor 0; box 1 is 20 px from it, box 2 60 px, box 3 far away.
    boxes = torch.tensor([[0.0, 0, 10, 10], [30, 0, 40, 10], [70, 0, 80, 10], [300, 0, 310, 10]])
    geo = geometry(boxes, 400, 100)
    everyone = spatial.relation("closest to", geo, torch.ones(4))
    assert everyone is not None
    assert everyone[1, 0] == pytest.approx(1.0) and everyone[2, 0] == pytest.approx(0.0, abs=1e-5)
    without_1 = spatial.relation("closest to", geo, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert without_1 is not None and without_1[2, 0] == pytest.approx(1.0)
    half = spatial.relation("closest to", geo, torch.tensor([1.0, 0.5, 1.0, 1.0]))
    assert half is not None and half[2, 0] == pytest.approx(0.5)  # 1 - P(box 1 is a member)
    assert torch.diagonal(everyone).abs().max() == 0


def test_between_containment_size_and_distance_relations() -> None:
    geo = geometry()
    between = spatial.between(geo)
    assert between[1, 0, 2] == pytest.approx(1.0) and between[1, 2, 0] == pytest.approx(1.0)
    assert between[0, 1, 2] == 0 and between[3, 0, 2] == 0 and between[1, 1, 2] == 0
    nested = geometry(torch.tensor([[0.0, 0, 100, 100], [10, 10, 30, 30], [90, 90, 120, 120],
                                    [300, 300, 310, 310]]), 400, 400)
    inside = spatial.relation("inside", nested)
    assert inside is not None
    assert inside[1, 0] == 1 and inside[0, 1] == 0 and inside[2, 0] == 0  # 2 is 1/9 inside
    bigger = spatial.relation("bigger than", nested)
    smaller = spatial.relation("smaller than", nested)
    assert bigger is not None and smaller is not None
    assert bigger[0, 1] == 1 and bigger[1, 0] == 0 and smaller[1, 0] == 1
    far = spatial.relation("far from", nested)
    near = spatial.relation("near", nested)
    assert far is not None and near is not None
    assert far[3, 1] == 1 and far[1, 0] == 0 and near[1, 0] == 1 and near[3, 1] == 0
    assert spatial.relation("wearing", geo) is None


# --- counting and modifiers ---------------------------------------------------------------------

def test_poisson_binomial_matches_enumeration() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(3, 6, generator=generator, dtype=torch.float64)
    got = spatial.count_distribution(probabilities, 6)
    expected = torch.zeros(3, 7, dtype=torch.float64)
    for outcome in itertools.product((0, 1), repeat=6):
        chosen = torch.tensor(outcome, dtype=torch.bool)
        mass = torch.where(chosen, probabilities, 1 - probabilities).prod(1)
        expected[:, sum(outcome)] += mass
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(spatial.count_distribution(probabilities, 2), expected[:, :3])


def test_balance_distribution_matches_enumeration() -> None:
    generator = torch.Generator().manual_seed(1)
    raw = torch.rand(2, 4, 3, generator=generator, dtype=torch.float64)
    raw = raw / raw.sum(-1, keepdim=True)  # before / after / neither per event
    before, after = raw[..., 0], raw[..., 1]
    expected = torch.zeros(2, 9, dtype=torch.float64)
    for outcome in itertools.product((0, 1, 2), repeat=4):
        mass = torch.stack([raw[:, j, o] for j, o in enumerate(outcome)], 1).prod(1)
        expected[:, 4 + outcome.count(0) - outcome.count(1)] += mass
    torch.testing.assert_close(spatial.balance_distribution(before, after), expected)


def test_superlatives_ordinals_and_middle_pick_the_right_box() -> None:
    geo = geometry()
    row = torch.tensor([1.0, 1.0, 1.0, 0.0])  # box 3 (above) is not a member
    expected = {"leftmost": 0, "rightmost": 2, "middle": 1, "second from the right": 1,
                "second from the left": 1, "third from the left": 2, "first from the right": 2}
    for name, index in expected.items():
        values = spatial.modifier(name, geo, row)
        assert values is not None, name
        assert argmax(values * row) == index, name
    topmost = spatial.modifier("topmost", geo, torch.ones(4))
    assert topmost is not None and argmax(topmost) == 3
    gap = torch.tensor([1.0, 0.0, 1.0, 0.0])  # without the middle box, box 2 is second
    second = spatial.modifier("second from the left", geo, gap)
    assert second is not None and argmax(second * gap) == 2
    leftmost = spatial.modifier("leftmost", geo, torch.tensor([0.5, 1.0, 1.0, 0.0]))
    assert leftmost is not None  # box 1 is leftmost unless box 0 is a member: P = 1 - 0.5
    torch.testing.assert_close(leftmost[:3], torch.tensor([1.0, 0.5, 0.0]))
    assert spatial.modifier("shiny", geo, row) is None


def test_regions_and_size_superlatives() -> None:
    boxes = torch.tensor([[5.0, 5, 25, 25], [150, 160, 170, 180], [100, 100, 140, 140]])
    geo = geometry(boxes, 200, 200)
    for name in ("on the left", "at the top", "in the top left"):
        values = spatial.modifier(name, geo, torch.ones(3))
        assert values is not None
        torch.testing.assert_close(values, torch.tensor([1.0, 0.0, 0.0]))
    corner = spatial.modifier("in the bottom right", geo, torch.ones(3))
    assert corner is not None  # box 2's centre is 0.4 from the bottom: SynthRef's UNSURE zone
    assert corner[0] == 0 and corner[1] == 1 and 0 < corner[2] < 1
    largest = spatial.modifier("largest", geo, torch.ones(3))
    smaller = spatial.modifier("smaller", geo, torch.tensor([1.0, 1.0, 0.0]))
    assert largest is not None and smaller is not None
    assert argmax(largest) == 2
    assert smaller[0] == smaller[1] == 0.5  # equal sizes: either is smaller by half a chance


def test_tallest_and_shortest_compare_box_heights_not_areas() -> None:
    """A wide, low box is the largest but not the tallest: "the tallest giraffe" is by height."""
    boxes = torch.tensor([[0.0, 80, 150, 120], [160, 10, 180, 110], [10, 10, 30, 40]])
    geo = geometry(boxes, 200, 200)  # heights 40, 100, 30; areas 6000, 2000, 600
    tallest = spatial.modifier("tallest", geo, torch.ones(3))
    shortest = spatial.modifier("shortest", geo, torch.ones(3))
    largest = spatial.modifier("largest", geo, torch.ones(3))
    assert tallest is not None and shortest is not None and largest is not None
    assert (argmax(tallest), argmax(shortest), argmax(largest)) == (1, 2, 0)


# --- resolving graphs ---------------------------------------------------------------------------

def entity(span: str, *spatial_words: str) -> Entity:
    return Entity(span, span.split()[-1], (), tuple(spatial_words))


def log_members(*members: list[float]) -> list[torch.Tensor]:
    return [torch.tensor(m).clamp(min=1e-6).log() for m in members]


def test_resolver_chains_relations_and_survives_cycles() -> None:
    # "the circle left of the square above the triangle": squares 1 and 3; only 3 is above
    # a triangle (box 1 is not above anything), so the circle must be left of box 3.
    boxes = torch.tensor([[0.0, 140, 10, 150], [20, 140, 30, 150], [40, 140, 50, 150],
                          [60, 0, 70, 10], [30, 0, 40, 10], [80, 140, 90, 150]])
    geo = geometry(boxes, 100, 200)
    circles, squares, triangles = [0, 0, 0, 0, 1, 0], [0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]
    graph = SceneGraph((entity("circle"), entity("square"), entity("triangle")),
                       (Relation(0, "left of", 1), Relation(1, "above", 2)))
    resolver = GraphResolver(graph, log_members(circles, squares, triangles), geo,
                             ResolveConfig())
    assert argmax(resolver.resolve()) == 4
    # Without the chain, the circle (box 4) is not left of box 1, the other square.
    cyclic = replace(graph, relations=(*graph.relations, Relation(2, "right of", 0),
                                       Relation(0, "wearing", 2)))
    resolver = GraphResolver(cyclic, log_members(circles, squares, triangles), geo,
                             ResolveConfig())
    assert argmax(resolver.resolve()) == 4
    assert any("cycle" in note for note in resolver.notes)
    assert any("wearing" in note for note in resolver.notes)
    use = resolver.graph_use()
    # "right of" closes a cycle when reached from the triangle, but 0 -> 2 uses it directly
    assert use.used_relations == ("left of", "above", "right of")
    assert use.dropped_relations == ("wearing",) and use.dropped_any


def test_graph_use_names_what_was_dropped_and_what_was_not_reached() -> None:
    geo = geometry()
    graph = SceneGraph(
        (entity("circle", "rightmost", "glowing"), entity("square", "far-flung"),
         entity("cup"), entity("table", "leftmost")),
        (Relation(0, "behind", 1), Relation(0, "left of", 2),
         Relation(3, "holding", 3)))  # a self-relation: malformed
    resolver = GraphResolver(graph, log_members([1.0] * 4, [1.0] * 4, [1.0] * 4, [1.0] * 4),
                             geo, ResolveConfig())
    resolver.resolve()
    use = resolver.graph_use()
    assert use.used_relations == ("left of",)
    assert use.dropped_relations == ("behind", "holding")
    assert use.used_modifiers == ("rightmost",)
    # "far-flung" is unknown; entity 3 is connected to nothing, so its "leftmost" never counts
    assert use.dropped_modifiers == ("glowing", "far-flung", "leftmost")
    clean = GraphResolver(SceneGraph((entity("circle", "rightmost"),)), log_members([1.0] * 4),
                          geo, ResolveConfig())
    clean.resolve()
    assert not clean.graph_use().dropped_any


def test_resolver_applies_modifiers_and_the_inverse_direction() -> None:
    geo = geometry()
    rows = [1.0, 1.0, 1.0, 0.0]
    resolver = GraphResolver(SceneGraph((entity("circle", "rightmost", "glowing"),)),
                             log_members(rows), geo, ResolveConfig())
    assert argmax(resolver.resolve()) == 2 and resolver.notes == [
        "ignored unknown modifier 'glowing'"]
    # "the square that the leftmost circle is right of": the referent is the relation's object.
    graph = SceneGraph((entity("square"), entity("circle", "topmost")),
                       (Relation(1, "above", 0),))
    resolver = GraphResolver(graph, log_members([1.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]), geo,
                             ResolveConfig())
    scores = resolver.resolve()
    assert scores[0] == pytest.approx(scores[2].item())  # box 3 is above both squares
    between = SceneGraph((entity("thing"), entity("squares")), (Relation(0, "between", 1),))
    resolver = GraphResolver(between, log_members([1.0] * 4, [1.0, 0, 1.0, 0]), geo,
                             ResolveConfig())
    assert argmax(resolver.resolve()) == 1


def test_log_membership_keeps_the_scorer_order() -> None:
    scores = torch.tensor([0.5, 0.45, 0.1, -0.2])
    for mode in ("relative", "split"):
        values = log_membership(scores, mode, 0.1)
        assert values.argsort(descending=True).tolist() == [0, 1, 2, 3]
        assert values.max() <= 0
    relative = log_membership(scores, "relative", 0.1).exp()
    assert relative[0] == 1 and relative[1] == pytest.approx(math.exp(-0.5))
    split = log_membership(scores, "split", 0.01).exp()
    assert split[1] > 0.99 and split[2] < 0.01  # the cut falls in the 0.45 -> 0.1 drop


# --- the method ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthref(root, seed=11, num_images=48, workers=1)
    return list(synthref_dataset(root).split("train").samples)


@pytest.fixture(scope="module")
def crop_rank() -> CropRank:
    return CropRank()


def test_gold_graphs_beat_crop_rank_on_spatial_expressions(
        synth_samples: list[Sample], crop_rank: CropRank, one_thread: None) -> None:
    spatial_samples = [s for s in synth_samples
                       if s.expression_type in ("relation", "position", "ordinal")]
    assert len(spatial_samples) >= 40
    method = build_method("graph-resolve", graphs="gold")
    assert isinstance(method, GraphResolve)
    method.scorer = crop_rank  # share the loaded CLIP and its caches

    def accuracy(predictions: list) -> float:
        hits = [p.box == s.gt_box for p, s in zip(predictions, spatial_samples, strict=True)]
        return sum(hits) / len(hits)

    graph_predictions = method.predict(spatial_samples)
    baseline = accuracy(crop_rank.predict(spatial_samples))
    resolved = accuracy(graph_predictions)
    assert resolved > baseline + 0.1, (resolved, baseline)
    assert all(p.extras["graph"] == "gold" for p in graph_predictions)


def record_scorer_calls(scorer: CropRank, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Patch ``scorer.score`` to record the texts of each call (undo with the monkeypatch)."""
    calls: list[list[str]] = []
    original = scorer.score

    def recording(items):  # type: ignore[no-untyped-def]
        calls.append([item.sample.expression for item in items])
        return original(items)

    monkeypatch.setattr(scorer, "score", recording)
    return calls


def test_one_scorer_call_per_batch_and_the_fallback(synth_samples: list[Sample],
                                                    crop_rank: CropRank,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    batch = synth_samples[:6]
    empty = replace(batch[0], graph=SceneGraph())
    no_graph = replace(batch[1], graph=None)
    method = GraphResolve(graphs="gold")
    method.scorer = crop_rank
    calls = record_scorer_calls(crop_rank, monkeypatch)
    predictions = method.predict([empty, no_graph, *batch[2:]])
    assert len(calls) == 1
    assert len(calls[0]) == len(set(calls[0]))  # repeated phrases of an image asked once
    monkeypatch.undo()
    expected = crop_rank.predict([empty, no_graph])
    for got, want in zip(predictions[:2], expected, strict=True):
        assert got.extras == {"graph": "none", "graph_fallback": True}
        assert got.graph_use is not None and not got.graph_use.structured
        assert got.box == want.box and got.candidates == want.candidates
    assert not predictions[2].extras["graph_fallback"]


def test_parsed_graphs_come_from_the_parser(synth_samples: list[Sample],
                                            crop_rank: CropRank) -> None:
    """graphs=parsed runs the real parser (rules backend here) on each expression."""
    from refground.language import parse

    method = GraphResolve(graphs="parsed", parser_backend="rules")
    method.scorer = crop_rank
    chosen = synth_samples[:3]
    for prediction, sample in zip(method.predict(chosen), chosen, strict=True):
        expected = parse(sample.expression, backend="rules")
        assert prediction.extras["scene_graph"] == expected.to_dict()
        assert prediction.extras["graph"] == "parsed"


@pytest.mark.parametrize(("options", "message"), [
    ({"graphs": "oracle"}, "graphs must be one of"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"relation_weight": -1}, "relation_weight must be >= 0"),
    ({"membership": "softmax"}, "membership must be one of"),
    ({"entity_text": "words"}, "entity_text must be one of"),
    ({"scorer": "largest"}, "does not score proposals"),
    ({"scorer": "graph-resolve"}, "proposal-scoring method"),
    ({"debias": 0}, "scorer_options"),
    ({"clip": "a", "scorer_options": {"clip": "b"}}, "give it once"),
    ({"scorer_options": "debias=0"}, "must be a mapping"),
    ({"graph_cache": "/no/such/graphs.jsonl"}, "does not exist"),
    ({"parser_backend": "gpt"}, "parser_backend must name a parser backend"),
])
def test_bad_options_are_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_method("graph-resolve", **options)


def test_registered_and_forwarding_scorer_options() -> None:
    assert "graph-resolve" in METHODS.names()
    with pytest.raises(UnknownNameError, match="scorer-that-is-not"):
        build_method("graph-resolve", scorer="scorer-that-is-not")
    method = build_method("graph-resolve", graphs="gold", scorer="visual-prompt",
                          proposals="gt", scorer_options={"debias": 0, "aggregate": "mean"})
    assert isinstance(method, GraphResolve)
    assert method.scorer.name == "visual-prompt" and method.scorer.aggregate == "mean"
    assert method.config.temperature == pytest.approx(
        3.5 / method.scorer.encoders[0].logit_scale)


def test_cli_eval_with_gold_graphs(tmp_path: Path, one_thread: None) -> None:
    import json

    from typer.testing import CliRunner

    from refground.cli import app

    root = tmp_path / "data"
    generate_synthref(root, seed=5, num_images=12, workers=1)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "eval", "--data", str(root), "--split", "train", "--method", "graph-resolve",
        "-o", "graphs=gold", "--limit", "12", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["run"]["options"] == {"graphs": "gold"}


def test_prepare_loads_the_datasets_graph_cache(tmp_path: Path) -> None:
    from refground.language import cache  # the project's own module: a broken import fails

    graph = SceneGraph((entity("red circle"),))
    path = cache.graph_cache_path(tmp_path / "synthref", "rules")
    cache.write_graph_cache(path, {"the red circle": graph})
    method = GraphResolve(graphs="parsed", parser_backend="rules", scorer_options={"debias": 0},
                          scorer="visual-prompt")
    method.prepare(synthref_dataset(tmp_path))
    assert method.cache == {"the red circle": graph}
    explicit = GraphResolve(graphs="parsed", graph_cache=str(path))
    assert explicit.cache == {"the red circle": graph}


def test_dropped_parts_reach_predictions_metrics_and_the_cli(
        synth_samples: list[Sample], crop_rank: CropRank, tmp_path: Path) -> None:
    """Free-form relations graph-resolve has no geometry for are recorded per prediction,
    survive predictions.jsonl and are counted in metrics.json (issue 11, finding 6)."""
    from refground.evaluate.runner import evaluate, read_predictions
    from refground.evaluate.table import graph_use_line

    method = GraphResolve(graphs="parsed", parser_backend="rules", pair_candidates=0)
    method.scorer = crop_rank
    base = synth_samples[:4]
    texts = ["the circle behind the square", "the square left of the circle",
             "the red circle holding the blue square", "the leftmost circle"]
    samples = [replace(s, expression=t) for s, t in zip(base, texts, strict=True)]
    result = evaluate(method, samples, tmp_path, progress=False)
    uses = [r.graph_use for r in result.records]
    assert [u.dropped_relations for u in uses] == [("behind",), (), ("holding",), ()]
    assert uses[1].used_relations == ("left of",) and uses[3].used_modifiers == ("leftmost",)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dropped_relations"] == 2 and metrics["dropped_modifiers"] == 0
    assert metrics["samples_with_dropped_parts"] == 2 and metrics["used_relations"] == 1
    assert metrics["dropped_by_name"] == {"relation: behind": 1, "relation: holding": 1}
    assert [r.graph_use for r in read_predictions(tmp_path / "predictions.jsonl")] == uses
    line = graph_use_line("graph-resolve", metrics)
    assert "dropped 2 relation(s) and 0 modifier(s)" in line and "in 2 of 4 samples" in line
    # methods without graphs report nothing of the kind
    plain = evaluate(crop_rank, samples, progress=False).metrics
    assert "dropped_relations" not in plain


def test_relations_without_geometry_are_scored_on_pair_boxes(
        synth_samples: list[Sample], crop_rank: CropRank,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """"holding" / "behind" have no geometry: the scorer reads "subject predicate object" on
    the union boxes of the likeliest pairs, and the referent's score is the resolver's formula
    with that pair truth (computed here from the scorer's own scores)."""
    method = GraphResolve(graphs="parsed", parser_backend="rules", pair_candidates=2)
    method.scorer = crop_rank
    base = next(s for s in synth_samples if len(s.annotations) >= 3)
    sample = replace(base, expression="the red circle holding the blue square")
    asked = record_scorer_calls(crop_rank, monkeypatch)
    [prediction] = method.predict([sample])
    monkeypatch.undo()
    assert prediction.graph_use is not None
    assert prediction.graph_use.used_relations == ("holding",)
    assert prediction.graph_use.dropped_relations == ()
    assert asked[-1] == ["red circle holding blue square"]  # one pair query, second call

    # the same numbers from the public pieces
    [item] = crop_rank.prepare_items([sample], None)
    assert len(asked) == 2 and len(asked[0]) == 2  # the two entities' phrases, then the pair
    circle, square = (crop_rank.score([replace(item, sample=replace(sample, expression=t))])[0]
                      for t in asked[0])
    config = method.config
    members = [log_membership(v.float(), config.membership, config.temperature)
               for v in (circle, square)]
    pairs = likely_pairs(members[0], members[1], 2)
    assert len(pairs) >= 2 and all(i != j for i, j in pairs.tolist())
    union = B.enclosing_box(item.proposals.boxes[pairs[:, 0]], item.proposals.boxes[pairs[:, 1]])
    pair_item = ScoringItem(replace(sample, expression="red circle holding blue square"),
                            item.pixels, Proposals(union, torch.zeros(len(pairs)),
                                                   ("p",) * len(pairs)))
    [pair_scores] = crop_rank.score([pair_item])
    values = log_membership(pair_scores.float(), config.membership, config.temperature).exp()
    n = len(item.proposals)
    truth = torch.full((n, n), float(values.min()))
    truth[pairs[:, 0], pairs[:, 1]] = values
    anchor = torch.softmax(members[1], dim=0)
    expected = members[0] + config.relation_weight * torch.log(truth @ anchor + LOG_FLOOR)
    best = int(expected.argmax())
    assert prediction.box == B.to_tuple(item.proposals.boxes[best])
    assert prediction.score == pytest.approx(float(expected[best]), abs=1e-5)


def test_pair_truth_and_likely_pairs() -> None:
    pairs = likely_pairs(torch.tensor([0.0, -5.0, -1.0]), torch.tensor([-3.0, 0.0, -0.5]), 2)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 2), (2, 1)]  # (2, 2) left out
    truth = pair_truth(pairs, torch.tensor([0.2, 0.5, 0.1]), 3, ResolveConfig(temperature=0.1))
    assert truth[0, 2] == 1.0  # the best pair
    assert float(truth[0, 1]) == pytest.approx(math.exp(-3.0))
    assert float(truth[1, 1]) == pytest.approx(math.exp(-4.0))  # unscored: the lowest value


@pytest.mark.parametrize(("written", "canonical"), [
    ("sitting on top of", "on"), ("lying on", "on"), ("parked next to", "next to"),
    ("standing to the left of", "left of"), ("on top of", "on"), ("holding", "holding"),
    ("behind", "behind")])
def test_a_verb_before_a_geometric_predicate_is_dropped(written: str, canonical: str) -> None:
    assert spatial.canonical_predicate(written) == canonical
    assert spatial.has_geometry(written) == (canonical in spatial.GEOMETRIC_PREDICATES)


def test_one_plain_entity_equals_the_scorer(synth_samples: list[Sample],
                                            crop_rank: CropRank) -> None:
    """No relation, no spatial word: graph-resolve answers exactly what its scorer answers on
    the expression's one noun phrase (issue 12: it scored 44% where crop-rank scored 70% on
    attribute-only expressions phrased otherwise); the words around it ("please", a command,
    a relative clause) are left out, and attributes after the head are put before it."""
    method = GraphResolve(graphs="parsed", parser_backend="rules")
    method.scorer = crop_rank
    texts = ["red circle", "a blue star, please", "the green thing",
             "find the yellow triangle", "the square that is purple"]
    phrases = ["red circle", "a blue star", "the green thing", "the yellow triangle",
               "the purple square"]
    samples = [replace(s, expression=t) for s, t in zip(synth_samples, texts, strict=False)]
    asked = [replace(s, expression=t) for s, t in zip(samples, phrases, strict=True)]
    for got, want in zip(method.predict(samples), crop_rank.predict(asked), strict=True):
        assert got.box == want.box and got.candidates == want.candidates
        assert got.graph_use is not None and got.graph_use.structured
        assert not got.graph_use.dropped_any


def test_size_words_pick_the_largest_or_smallest_of_the_members() -> None:
    """"the large circle": the largest of the circles, not the larger square (a crop shows no
    size); "the small circle": the smallest circle; recorded as used size modifiers."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 0, 50, 30], [60, 0, 80, 20],
                          [0, 60, 60, 120]])
    circles = [1.0, 1.0, 1.0, 0.0]  # box 3, the biggest of all, is a square
    geo = geometry(boxes, 200, 200)
    for word, expected in (("large", 1), ("big", 1), ("small", 0), ("little", 0)):
        graph = SceneGraph((Entity(f"the {word} circle", "circle", (word,)),))
        resolver = GraphResolver(graph, log_members(circles), geo, ResolveConfig())
        assert argmax(resolver.resolve()) == expected, word
        assert resolver.graph_use().used_modifiers == (f"{word} (size)",)
    off = GraphResolver(SceneGraph((Entity("the large circle", "circle", ("large",)),)),
                        log_members(circles), geo, ResolveConfig(size_words=False))
    assert off.resolve().unique().numel() == 2  # the three circles tie: size is not read
    assert off.graph_use().used_modifiers == ()


def test_medium_is_the_member_between_a_bigger_and_a_smaller_one() -> None:
    """"the medium circle": of three circles the middle-sized one, wherever the others are;
    of two (smaller or bigger one?) the one whose size is medium for the image."""
    three = torch.tensor([[0.0, 0, 90, 90], [100, 0, 130, 30], [150, 0, 210, 60],
                          [0, 100, 100, 200]])
    circles = [1.0, 1.0, 1.0, 0.0]  # sides 90, 30, 60; box 3 (side 100) is a square
    graph = SceneGraph((Entity("the medium circle", "circle", ("medium",)),))
    resolver = GraphResolver(graph, log_members(circles), geometry(three, 300, 300),
                             ResolveConfig())
    assert argmax(resolver.resolve()) == 2
    assert resolver.graph_use().used_modifiers == ("medium (size)",)
    # two circles in a 300 px image: sides 100 (a third of the image) and 180 / 50
    for other, expected in (([0.0, 0, 180, 180], 0), ([0.0, 0, 50, 50], 0)):
        boxes = torch.tensor([[190.0, 190, 290, 290], other])
        two = GraphResolver(graph, log_members([1.0, 1.0]), geometry(boxes, 300, 300),
                            ResolveConfig())
        assert argmax(two.resolve()) == expected, other


def test_a_size_word_names_a_class_so_the_relation_picks_within_it() -> None:
    """"the small square left of the circle" with two small squares (sides 30 and 28) and a big
    one: both small squares are small, and the relation picks the one left of the circle,
    even though it is the (slightly) bigger of the two."""
    boxes = torch.tensor([[0.0, 100, 30, 130], [300, 100, 328, 128], [100, 0, 190, 90],
                          [200, 100, 240, 140]])
    squares = [1.0, 1.0, 1.0, 0.0]
    geo = geometry(boxes, 400, 400)
    small = spatial.size_class("small", torch.tensor(squares), geo)
    assert small[0] > 0.9 and small[1] > 0.9 and small[2] < 0.1
    large = spatial.size_class("large", torch.tensor(squares), geo)
    assert argmax(large) == 2 and large[0] < 0.1
    graph = SceneGraph((Entity("the small square", "square", ("small",)),
                        Entity("the circle", "circle")),
                       (Relation(0, "left of", 1),))
    resolver = GraphResolver(graph, log_members(squares, [0.0, 0, 0, 1]), geo, ResolveConfig())
    assert argmax(resolver.resolve()) == 0
