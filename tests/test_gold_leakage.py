"""No gold information reaches a prediction.

At predict time a method may read what a user could supply: the image (``image_path``,
``width``, ``height``), the ``expression`` and, with ``proposals="gt"``, the candidate boxes
(the annotations' *boxes*; their categories and ids are gold). ``sample_id`` only labels the
answer. Everything else on a :class:`~refground.types.Sample` - ``gt_box``, the ids,
``category_id``, ``expression_type``, SynthRef's gold ``graph``, the annotations' categories -
is for scoring and ablations.

So every method predicts twice: on a few SynthRef samples, and on copies in which every other
field is scrambled (a different valid graph, another annotation as the "gt" box, ...). The two
predictions must agree exactly. Nothing is mocked: the methods run with their default options
on the shipped CLIP (and the shipped ERP-A checkpoint), and the detector-backed variants use a
real tiny OWL-ViT saved and loaded like a hub snapshot (``tests/tiny_detectors.py``).

``oracle`` answers ``gt_box`` by design (a harness check) and ``graphs="gold"`` is an ablation
of graph-resolve and erpa: those are checked to *change* under the scramble, which also shows
that the scramble is strong enough to catch a leak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from refground.errors import ConfigError
from refground.methods import build_method
from refground.types import Annotation, Candidate, Entity, Prediction, Relation, Sample, SceneGraph
from refground.vision.proposals import default_queries
from tests.conftest import synthref_split
from tests.tiny_detectors import save_tiny_owlvit

pytestmark = pytest.mark.usefixtures("one_thread")

#: Sample fields a method may read at predict time (``annotations``: their boxes only).
ALLOWED = frozenset({"sample_id", "image", "width", "height", "expression", "annotations"})
#: Gold fields the scramble changes; together with ALLOWED, every field of Sample.
GOLD = frozenset({"gt_box", "image_id", "ann_id", "ref_id", "sent_id", "category_id",
                  "expression_type", "graph"})
EXPRESSION_TYPES = ("attribute", "position", "ordinal", "relation")
#: A valid graph unlike any SynthRef one: other heads, attributes, modifier and relation.
OTHER_GRAPH = SceneGraph((Entity("the striped zebra", "zebra", ("striped",), ("leftmost",)),
                          Entity("the tall lamp", "lamp", ("tall",))),
                         (Relation(0, "above", 1),))
SHIPPED_ERPA = {"checkpoint": "synthref-erpa"}


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Six test samples of a small SynthRef: several images, expression types, relations."""
    chosen = synthref_split(tmp_path_factory, "test", seed=3, images=10)[:6]
    assert all(s.graph is not None and s.gt_box is not None and s.annotations for s in chosen)
    return chosen


@pytest.fixture(scope="module")
def scrambled(samples: list[Sample]) -> list[Sample]:
    return [scramble(sample) for sample in samples]


@pytest.fixture(scope="module")
def owlvit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_owlvit(tmp_path_factory.mktemp("owlvit") / "model")


def scramble(sample: Sample) -> Sample:
    """The sample with every gold field changed; image, expression, sample_id and the
    annotation boxes (in order) kept."""
    assert sample.gt_box is not None
    others = [a.box for a in sample.annotations if a.box != sample.gt_box]
    gt_box = others[0] if others else (0.0, 0.0, sample.width / 2, sample.height / 2)
    kind = sample.expression_type or EXPRESSION_TYPES[0]
    other_kind = EXPRESSION_TYPES[(EXPRESSION_TYPES.index(kind) + 1) % len(EXPRESSION_TYPES)]
    annotations = tuple(
        Annotation(ann_id=a.ann_id + 1000, box=a.box, category_id=a.category_id + 1000,
                   category=f"zebra {k}")
        for k, a in enumerate(sample.annotations))
    return dataclasses.replace(
        sample, gt_box=gt_box, image_id=shift(sample.image_id), ann_id=shift(sample.ann_id),
        ref_id=shift(sample.ref_id), sent_id=shift(sample.sent_id),
        category_id=shift(sample.category_id), expression_type=other_kind, graph=OTHER_GRAPH,
        annotations=annotations)


def shift(value: int | None) -> int:
    return 1000 if value is None else value + 1000


def decisions(predictions: Sequence[Prediction], samples: Sequence[Sample]) -> list[Any]:
    """Everything each prediction says, comparable across the two runs.

    With ``gt`` proposals (and in center/largest) a candidate's label is its annotation's
    category: a display label carried through, never scored (visual-prompt's category prior
    refuses gt labels). It is replaced by the annotation's index, the same in both runs, so a
    label merely *echoed* compares equal and anything else is still compared as is.
    """
    result = []
    for prediction, sample in zip(predictions, samples, strict=True):
        assert prediction.sample_id == sample.sample_id
        result.append((
            prediction.sample_id, prediction.box, prediction.score, prediction.fallback,
            tuple((c.box, c.score, candidate_label(c, sample)) for c in prediction.candidates),
            prediction.extras))
    return result


def candidate_label(candidate: Candidate, sample: Sample) -> str | None:
    """``annotation #k`` when the label is the category of annotation k with this box."""
    for index, annotation in enumerate(sample.annotations):
        if annotation.box == candidate.box and annotation.category == candidate.label:
            return f"annotation #{index}"
    return candidate.label


def predict_both(method_name: str, options: dict[str, Any], samples: list[Sample],
                 scrambled: list[Sample]) -> tuple[list[Any], list[Any]]:
    torch.manual_seed(0)  # the untrained models' initialisation
    method = build_method(method_name, **options)
    before = decisions(method.predict(samples), samples)
    after = decisions(method.predict(scrambled), scrambled)
    return before, after


# --- the scramble ---------------------------------------------------------------------------

def test_the_scramble_changes_every_gold_field(samples: list[Sample],
                                               scrambled: list[Sample]) -> None:
    """A field added to Sample must be classified here before these tests can pass."""
    assert {f.name for f in dataclasses.fields(Sample)} == ALLOWED | GOLD
    for original, changed in zip(samples, scrambled, strict=True):
        for name in ALLOWED - {"annotations"}:
            assert getattr(changed, name) == getattr(original, name), name
        for name in GOLD:
            assert getattr(changed, name) != getattr(original, name), name
        assert [a.box for a in changed.annotations] == [a.box for a in original.annotations]
        for old, new in zip(original.annotations, changed.annotations, strict=True):
            assert (new.ann_id, new.category_id, new.category) != (
                old.ann_id, old.category_id, old.category)
        # the gold graph's heads are no longer what the expression names
        assert original.graph is not None and changed.graph is not None
        assert {e.head for e in changed.graph.entities}.isdisjoint(
            e.head for e in original.graph.entities)


def test_detector_queries_come_from_the_expression(samples: list[Sample],
                                                   scrambled: list[Sample]) -> None:
    for original, changed in zip(samples, scrambled, strict=True):
        assert default_queries(changed) == default_queries(original)
        assert "zebra" not in default_queries(changed)


# --- every method ---------------------------------------------------------------------------

DEFAULTS = [
    pytest.param("center", {}, id="center"),
    pytest.param("largest", {}, id="largest"),
    pytest.param("crop-rank", {}, id="crop-rank"),
    pytest.param("visual-prompt", {}, id="visual-prompt"),
    pytest.param("graph-resolve", {}, id="graph-resolve"),
    pytest.param("erpa", {}, id="erpa"),
    pytest.param("erpa", SHIPPED_ERPA, id="erpa-shipped"),
    pytest.param("regressor", {}, id="regressor"),
    pytest.param("detr", {}, id="detr"),
]


@pytest.mark.parametrize(("method_name", "options"), DEFAULTS)
def test_default_predictions_ignore_gold_fields(method_name: str, options: dict[str, Any],
                                                samples: list[Sample],
                                                scrambled: list[Sample]) -> None:
    before, after = predict_both(method_name, options, samples, scrambled)
    assert after == before


DETECTOR_BACKED = [
    pytest.param("crop-rank", {}, id="crop-rank"),
    pytest.param("visual-prompt", {"category_prior": 1.0}, id="visual-prompt-category-prior"),
    pytest.param("graph-resolve", {}, id="graph-resolve"),
    pytest.param("erpa", SHIPPED_ERPA, id="erpa-shipped"),
]


@pytest.mark.parametrize(("method_name", "options"), DETECTOR_BACKED)
def test_detector_backed_predictions_ignore_the_gold_graph(
        method_name: str, options: dict[str, Any], owlvit_dir: Path, samples: list[Sample],
        scrambled: list[Sample]) -> None:
    """A text-conditioned detector's queries (and so its boxes, scores and the labels a
    category prior scores) come from parsing the expression, not from Sample.graph."""
    detector = {"proposals": "owlvit", "proposal_options": {"model": str(owlvit_dir)}}
    before, after = predict_both(method_name, {**options, **detector}, samples, scrambled)
    assert any(len(b[4]) > 1 for b in before)  # the detector found several boxes
    assert after == before


# --- the exceptions, and proof that the scramble catches a reader ---------------------------

def test_oracle_reads_the_gold_box_by_design(samples: list[Sample],
                                             scrambled: list[Sample]) -> None:
    """``oracle`` is the harness's sanity check (Acc@0.5 = 1), not a method: it answers
    ``gt_box``, so it is exempt - and must follow the scrambled box."""
    oracle = build_method("oracle")
    assert [p.box for p in oracle.predict(samples)] == [s.gt_box for s in samples]
    assert [p.box for p in oracle.predict(scrambled)] == [s.gt_box for s in scrambled]


@pytest.mark.parametrize(("method_name", "options"), [
    pytest.param("graph-resolve", {"graphs": "gold"}, id="graph-resolve"),
    pytest.param("erpa", {**SHIPPED_ERPA, "graphs": "gold"}, id="erpa-shipped"),
])
def test_gold_graph_ablations_do_read_the_graph(method_name: str, options: dict[str, Any],
                                                samples: list[Sample],
                                                scrambled: list[Sample]) -> None:
    """``graphs="gold"`` (the perfect-parser ablation, opt-in) reads Sample.graph, so the
    scramble changes its predictions: the comparison above would catch such a read."""
    before, after = predict_both(method_name, options, samples, scrambled)
    assert after != before


@pytest.mark.parametrize(("method_name", "options"), [
    pytest.param("visual-prompt", {"category_prior": 0.5}, id="default-proposals"),
    pytest.param("visual-prompt", {"category_prior": 0.5, "proposals": "gt"}, id="gt"),
    pytest.param("graph-resolve", {"scorer": "visual-prompt",
                                   "scorer_options": {"category_prior": 0.5}}, id="as-scorer"),
])
def test_category_prior_on_gt_labels_is_refused(method_name: str,
                                                options: dict[str, Any]) -> None:
    """With gt proposals the labels are the annotations' categories: gold."""
    with pytest.raises(ConfigError,
                       match=r"category_prior=0\.5 with proposals='gt'.*gold.*category_prior=0"):
        build_method(method_name, **options)
