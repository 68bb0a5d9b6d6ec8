"""Planning SynthRef's refs: which objects of a scene to ask about, and with which forms.

For each target, sentences draw an expression type by weight, then a random unambiguous
logical form of that type (:mod:`~refground.data.synth.logical_forms`), worded by
:func:`~refground.data.synth.wording.word`. The random stream is consumed in a fixed order, so
the same seed gives the same sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refground.data.synth.logical_forms import Attr, Layout, LogicalForm, Relate
from refground.data.synth.scenes import Scene
from refground.data.synth.wording import word
from refground.types import SceneGraph

DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "attribute": 0.25, "position": 0.2, "relation": 0.25, "comparative": 0.1, "ordinal": 0.2,
}


# --- choosing a form ---------------------------------------------------------------------------

GENERIC_WEIGHT = 0.15  # how often a form naming no shape ("the red thing") is drawn, relatively


def _names_shape(form: LogicalForm) -> bool:
    """Does the referent's own noun phrase name its shape?"""
    match form:
        case Attr():
            return form.shape is not None
        case Relate():
            return form.subject.shape is not None
        case _:
            return form.base.shape is not None


# Relative chance of a group being tried first. "closest to" and superlatives are valid far
# more often than the others, so they would otherwise fill most relation / position sentences.
GROUP_WEIGHTS = {"closest to": 0.25, "Extreme": 0.5}


def _group(form: LogicalForm) -> str:
    """The variety a form stands for: its predicate for relations, its operator otherwise."""
    return form.predicate if isinstance(form, Relate) else type(form).__name__


def _search_order(forms: Sequence[LogicalForm], rng: np.random.Generator) -> list[int]:
    """The order in which to try ``forms``.

    Groups (predicates, operators) come in a random order weighted by ``GROUP_WEIGHTS``, so an
    easy-to-satisfy one such as "closest to" does not crowd out the rest; within a group,
    shape-naming forms tend to come first.
    """
    within = _weighted_permutation(
        [1.0 if _names_shape(f) else GENERIC_WEIGHT for f in forms], rng)
    groups = sorted({_group(f) for f in forms})
    group_order = _weighted_permutation([GROUP_WEIGHTS.get(g, 1.0) for g in groups], rng)
    rank = {groups[i]: position for position, i in enumerate(group_order)}
    return sorted(within, key=lambda i: rank[_group(forms[i])])


def _weighted_permutation(weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """Indices in random order, heavier ones earlier: weighted sampling without replacement
    (Efraimidis-Spirakis: sort by ``u ** (1 / w)``)."""
    keys = rng.random(len(weights)) ** (1.0 / np.asarray(weights, dtype=np.float64))
    return np.argsort(-keys, kind="stable").tolist()


def choose_form(layout: Layout, target: int, kind: str, rng: np.random.Generator,
                exclude: frozenset[LogicalForm] = frozenset()) -> LogicalForm | None:
    """A random unambiguous form of ``kind`` for ``target``, or None when there is none.

    Attribute forms are minimal 60% of the time and over-specified otherwise, as people's
    descriptions are; other kinds take the first valid form in :func:`_search_order`.
    """
    forms = [f for f in layout.forms(kind, target) if f not in exclude]
    if kind == "attribute":
        forms = [f for f in forms if layout.picks_only(f, target)]
        if forms and rng.random() < 0.6:
            fewest = min(_specificity(f) for f in forms)
            forms = [f for f in forms if _specificity(f) == fewest]
    for index in _search_order(forms, rng):
        if layout.picks_only(forms[index], target):
            return forms[index]
    return None


def _specificity(form: LogicalForm) -> int:
    return form.specificity if isinstance(form, Attr) else 99


# --- refs of a scene ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Expression:
    """One generated sentence: its text as generated, type, gold graph and logical form."""

    text: str
    type: str
    graph: SceneGraph
    form: LogicalForm


@dataclass(frozen=True)
class RefPlan:
    """The sentences chosen for one target object of a scene."""

    target: int
    expressions: tuple[Expression, ...]


def describe(layout: Layout, target: int, types: Sequence[str], weights: Sequence[float],
             count: int, rng: np.random.Generator) -> tuple[Expression, ...]:
    """Up to ``count`` expressions for ``target`` with distinct logical forms and texts.

    Each sentence draws a type by weight; when that type has no unambiguous form here, the
    remaining types are tried in weighted random order.
    """
    chosen: list[Expression] = []
    used_forms: set[LogicalForm] = set()
    used_texts: set[str] = set()
    probabilities = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    for _ in range(count):
        order = rng.choice(len(types), size=len(types), replace=False, p=probabilities)
        for index in order:
            form = choose_form(layout, target, types[index], rng, frozenset(used_forms))
            if form is None:
                continue
            text, graph = word(form, rng)
            if text.lower() in used_texts:
                continue
            chosen.append(Expression(text, types[index], graph, form))
            used_forms.add(form)
            used_texts.add(text.lower())
            break
    return tuple(chosen)


def plan_refs(scene: Scene, eligible: Sequence[int], types: Sequence[str],
              weights: Sequence[float], rng: np.random.Generator,
              refs_per_image: tuple[int, int] = (2, 4),
              sentences_per_ref: tuple[int, int] = (1, 3)) -> tuple[RefPlan, ...]:
    """Choose targets among ``eligible`` objects and describe each with 1-3 sentences.

    Targets are visited in random order; one that no allowed type can describe unambiguously is
    skipped, so an image may end up with fewer refs than drawn (possibly none).
    """
    layout = Layout.from_scene(scene)
    wanted = int(rng.integers(refs_per_image[0], refs_per_image[1] + 1))
    plans: list[RefPlan] = []
    for target in rng.permutation(np.asarray(eligible, dtype=np.int64)):
        if len(plans) == wanted:
            break
        count = int(rng.integers(sentences_per_ref[0], sentences_per_ref[1] + 1))
        expressions = describe(layout, int(target), types, weights, count, rng)
        if expressions:
            plans.append(RefPlan(int(target), expressions))
    return tuple(sorted(plans, key=lambda plan: plan.target))
