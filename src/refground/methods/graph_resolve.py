"""``graph-resolve``: ground each noun phrase with CLIP, then resolve the arrangement with geometry.

crop-rank and visual-prompt score a proposal against the *whole* expression, so "the circle left
of the blue square" is, for CLIP, mostly "circle" and "blue square": which circle is left of the
square is exactly what a crop (or a marked view) cannot tell. This method splits the expression
into its scene graph (entity 0 is the referent; others are anchors; relations link them; spatial
modifiers such as "leftmost" or "second from the top" sit on entities) and

1. scores every proposal against every entity's own phrase with a proposal-scoring method
   (``scorer``: crop-rank by default), all entities of a batch in *one* scorer call, so each
   image's proposal features are computed once;
2. turns each entity's scores into membership probabilities ``p_e(i)``: how likely proposal i is
   one of the things the phrase names (see :func:`log_membership`);
3. resolves the graph from the leaves up with the soft geometry of
   :mod:`refground.language.spatial`: the referent's score of proposal i is

   ``log p_0(i) + sum_m log g_m(i) + sum_(0, pred, e) log sum_(j != i) q_e(j) r_pred(i, j)``

   where ``g_m`` are the referent's modifiers, ``q_e`` is anchor e's own resolved distribution
   (its modifiers and *its* relations applied recursively, normalised), and ``r_pred`` the soft
   truth of the relation.

A relation without geometry ("holding", "wearing", "riding", "behind", "of", any predicate
not in :data:`~refground.language.spatial.GEOMETRIC_PREDICATES`) is scored by the scorer itself,
as ReCLIP scores what its spatial rules do not cover with CLIP: the phrase "subject predicate
object" against the union box of each likely (subject, object) pair (the top
``pair_candidates`` proposals of each end by membership), turned into memberships like an
entity's scores; so no relation is dropped for want of geometry.

A graph with no entities (the parser could not structure the expression, or a gold graph is
missing) falls back to the scorer's own prediction on the full expression.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import ValidationInfo, field_validator
from torch import Tensor

from refground import boxes as B
from refground.data.dataset import Dataset
from refground.errors import ConfigError
from refground.language import spatial
from refground.language.queries import entity_phrase
from refground.language.text import cache_key, normalize
from refground.methods.base import METHODS, Method
from refground.methods.options import parse_config
from refground.methods.proposal_scoring import (
    ProposalScoringMethod,
    ScoringItem,
    ScoringOptions,
    rank,
)
from refground.types import Entity, GraphUse, Prediction, Sample, SceneGraph
from refground.vision.proposals import Proposals, graph_queries
from refground.vocabulary import GENERIC_HEAD_WORDS

log = logging.getLogger(__name__)

GRAPH_SOURCES = ("parsed", "gold")
MEMBERSHIPS = ("relative", "split")
ENTITY_TEXTS = ("span", "noun")
#: Options that belong to the scorer but are accepted top-level for convenience: the ones
#: every proposal-scoring method shares.
FORWARDED = tuple(ScoringOptions.model_fields)
#: Floor inside every log, so a violated constraint costs about -9 instead of -inf.
LOG_FLOOR = 1e-4


@dataclass(frozen=True)
class ResolveConfig:
    """How scores become probabilities and how much each kind of constraint weighs.

    ``temperature`` is in the scorer's score units (cosine similarities); the method's option
    of that name is in CLIP logits and is divided by the encoder's ``logit_scale`` to get it.
    """

    membership: str = "relative"
    temperature: float = 0.3
    modifier_weight: float = 1.0
    relation_weight: float = 1.0
    size_words: bool = True  # "large"/"small"/"medium" as size classes among the members


# --- membership ---------------------------------------------------------------------------------

def log_membership(scores: Tensor, mode: str, temperature: float) -> Tensor:
    """``log p(i)``: how likely proposal i is one of the things a noun phrase names.

    ``relative``: ``(s_i - max s) / T``, i.e. ``p = exp((s - max) / T)``. Not a softmax: a
    softmax shares one unit of mass among all matching proposals, so with three circles each
    would get 1/3 and "no other circle is further left" (a product of ``1 - p``) would barely
    exclude anything. Here the best match is a member for sure and the others by how far
    their score falls short, so several matches are all members.

    ``split``: a threshold halfway through the largest drop in the sorted scores (the boundary
    between "matches" and "does not match"), ``p = sigmoid((s - threshold) / T)``; robust when
    true members themselves score unevenly, at the price of always finding *some* boundary.
    Both are monotone in ``s``, so an entity without geometry ranks exactly as the scorer does.
    """
    scores = scores.float()
    if mode == "relative" or scores.numel() < 2:
        return (scores - scores.max()) / temperature
    ordered = scores.sort(descending=True).values
    drops = ordered[:-1] - ordered[1:]
    cut = int(drops.argmax())
    threshold = (ordered[cut] + ordered[cut + 1]) / 2
    return torch.nn.functional.logsigmoid((scores - threshold) / temperature)


def score_scale(scorer: ProposalScoringMethod) -> float:
    """The scorer's CLIP logit scale (mean over its backbones): cosine -> logit.

    Temperatures are stated in logits because cosine spreads differ a lot between CLIPs (the
    shipped SynthRef CLIP: scale 11.6, member/non-member gaps ~0.3; OpenAI's: scale 100, gaps
    ~0.03), and the logit scale is what each CLIP learnt to divide its cosines by.
    """
    scales = [float(encoder.logit_scale) for encoder in getattr(scorer, "encoders", ())
              if hasattr(encoder, "logit_scale")]
    return sum(scales) / len(scales) if scales else 1.0


def is_generic(entity: Entity) -> bool:
    return not entity.attributes and entity.head.lower() in GENERIC_HEAD_WORDS


def entity_text(entity: Entity, how: str) -> str:
    """What the scorer is asked about: the noun phrase (:func:`entity_phrase`) or just
    "[attributes] head"."""
    noun = " ".join((*entity.attributes, entity.head)).strip()
    if how == "noun" and noun:
        return noun
    return entity_phrase(entity)


def plain_text(graph: SceneGraph, expression: str) -> str:
    """The scorer's text for an unstructured expression: the expression itself when it is
    its one noun phrase (so graph-resolve equals its scorer there exactly), else that noun
    phrase (:func:`entity_text`) without the words around it ("find the red circle",
    "the circle that is red")."""
    if len(graph.entities) != 1:
        return expression
    phrase = entity_text(graph.entities[0], "span")
    return expression if cache_key(normalize(expression)) == cache_key(phrase) else phrase


def size_adjectives(entity: Entity) -> list[tuple[int, str]]:
    """(position among the attributes, word) of each size adjective of ``entity``."""
    return [(position, word) for position, word in enumerate(entity.attributes)
            if word in spatial.SIZE_ADJECTIVES]


def is_unstructured(graph: SceneGraph, size_words: bool = True) -> bool:
    """One entity, no relation, no spatial modifier (nor, with ``size_words``, a size
    adjective): nothing for geometry to add.

    Such an expression goes to the scorer whole (:func:`plain_text`), so graph-resolve
    equals its scorer on it exactly. Scoring the entity's span instead, through membership
    probabilities, was only ever a lossy copy of that (the span can drop words; ties break
    differently).
    """
    entity = graph.entities[0] if len(graph.entities) == 1 else None
    return (entity is not None and not graph.relations and not entity.spatial
            and not (size_words and size_adjectives(entity)))


# --- resolving one graph ------------------------------------------------------------------------

@dataclass
class GraphResolver:
    """Resolves one sample's graph over its proposals (mutable only to collect what it used).

    Every relation and modifier that contributes a term is marked as used; whatever is left
    unmarked after :meth:`resolve` (no geometry for it, a malformed or cycle-closing relation,
    a part not connected to the referent) was dropped, and :meth:`graph_use` says so.
    """

    graph: SceneGraph
    log_members: list[Tensor]  # per entity, (N,)
    geometry: spatial.Geometry
    config: ResolveConfig
    #: Relation number -> ``(N, N)`` truth of "i predicate j" from the scorer on pair boxes,
    #: for the relations without geometry (see :func:`pair_truth`).
    scored_relations: Mapping[int, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    used_relations: set[int] = field(default_factory=set)  # relation numbers
    used_modifiers: set[tuple[int, int]] = field(default_factory=set)  # (entity, position)

    def resolve(self) -> Tensor:
        """The referent's (entity 0's) log-score for every proposal."""
        return self.entity_scores(0, None, frozenset())

    def graph_use(self) -> GraphUse:
        """What :meth:`resolve` acted on and what it dropped, by predicate / modifier name."""
        relations = [(number in self.used_relations, relation.predicate)
                     for number, relation in enumerate(self.graph.relations)]
        modifiers = [((index, position) in self.used_modifiers, name)
                     for index, entity in enumerate(self.graph.entities)
                     for position, name in enumerate(entity.spatial)]
        if self.config.size_words:
            modifiers += [((index, -1 - position) in self.used_modifiers, f"{word} (size)")
                          for index, entity in enumerate(self.graph.entities)
                          for position, word in size_adjectives(entity)]
        return GraphUse(
            used_relations=tuple(name for used, name in relations if used),
            dropped_relations=tuple(name for used, name in relations if not used),
            used_modifiers=tuple(name for used, name in modifiers if used),
            dropped_modifiers=tuple(name for used, name in modifiers if not used))

    def note(self, text: str) -> None:
        if text not in self.notes:
            log.debug("graph-resolve: %s", text)
            self.notes.append(text)

    def members(self, index: int) -> Tensor:
        return self.log_members[index].exp()

    def distribution(self, index: int, via: int, path: frozenset[int]) -> Tensor:
        """Entity ``index``'s resolved, normalised distribution over proposals."""
        return torch.softmax(self.entity_scores(index, via, path), dim=0)

    def entity_scores(self, index: int, via: int | None, path: frozenset[int]) -> Tensor:
        """``log p_e`` plus modifiers plus every relation of ``e`` except the one we came by
        (``via``); ``path`` holds the entities above on the recursion, which guards cycles."""
        entity = self.graph.entities[index]
        members = self.members(index)
        score = self.log_members[index].clone()
        for position, name in enumerate(entity.spatial):
            values = spatial.modifier(name, self.geometry, members)
            if values is None:
                self.note(f"ignored unknown modifier {name!r}")
                continue
            self.used_modifiers.add((index, position))
            score = score + self.config.modifier_weight * torch.log(values + LOG_FLOOR)
        for position, word in size_adjectives(entity) if self.config.size_words else ():
            values = spatial.size_class(spatial.SIZE_ADJECTIVES[word], members, self.geometry)
            self.used_modifiers.add((index, -1 - position))
            score = score + self.config.modifier_weight * torch.log(values + LOG_FLOOR)
        between_objects: list[tuple[int, int]] = []
        inner = path | {index}
        for number, relation in enumerate(self.graph.relations):
            other = self.partner(number, index, via, inner)
            if other is None:
                continue
            predicate = spatial.canonical_predicate(relation.predicate)
            if predicate == "between":
                if relation.subject == index:
                    between_objects.append((number, other))
                else:
                    self.note("ignored 'between' with the referent as one of the ends")
                continue
            score = score + self.config.relation_weight * self.relation_term(
                number, index, other, inner)
        if between_objects:
            score = score + self.config.relation_weight * self.between_term(
                between_objects, inner)
        return score

    def partner(self, number: int, index: int, via: int | None, path: frozenset[int]
                ) -> int | None:
        """The other end of relation ``number`` if it touches ``index`` and may be followed."""
        relation = self.graph.relations[number]
        if number == via or index not in (relation.subject, relation.object):
            return None
        other = relation.object if relation.subject == index else relation.subject
        if not 0 <= other < len(self.graph.entities) or other == index:
            self.note(f"ignored malformed relation {relation}")
            return None
        if other in path:
            self.note(f"ignored relation {number} closing a cycle")
            return None
        return other

    def relation_term(self, number: int, index: int, other: int, path: frozenset[int]
                      ) -> Tensor:
        """``log sum_(j != i) q_other(j) r(i, j)`` (r transposed when ``index`` is the object)."""
        relation = self.graph.relations[number]
        forward = relation.subject == index
        subject_members = self.members(index if forward else other)
        matrix = spatial.relation(relation.predicate, self.geometry, subject_members)
        if matrix is None:
            matrix = self.scored_relations.get(number)
        if matrix is None:
            self.note(f"no geometry for predicate {relation.predicate!r}")
            return torch.zeros(len(self.geometry))
        if not forward:
            matrix = matrix.T
        self.used_relations.add(number)
        anchor = self.distribution(other, number, path)
        return torch.log(matrix @ anchor + LOG_FLOOR)

    def between_term(self, objects: Sequence[tuple[int, int]], path: frozenset[int]) -> Tensor:
        """"Between" two anchors (two relations), or among the members of one plural anchor
        ("between the two squares"): pairs weighted by how likely they are the two ends."""
        n = len(self.geometry)
        if n < 3:
            self.note("ignored 'between': fewer than three proposals")
            return torch.zeros(n)
        if len(objects) >= 2:
            (first_rel, first), (second_rel, second) = objects[:2]
            pairs = torch.outer(self.distribution(first, first_rel, path),
                                self.distribution(second, second_rel, path))
        else:
            ends = self.members(objects[0][1])
            pairs = torch.outer(ends, ends).fill_diagonal_(0.0)
        pairs = (pairs + pairs.T) / 2
        total = pairs.sum()
        if total <= 0:
            self.note("ignored 'between': no plausible pair of ends")
            return torch.zeros(n)
        self.used_relations.update(number for number, _ in objects[:2])
        values = torch.einsum("ijk,jk->i", spatial.between(self.geometry), pairs / total)
        return torch.log(values + LOG_FLOOR)


# --- relations without geometry: the scorer on pairs ------------------------------------------

@dataclass(frozen=True)
class PairQuery:
    """One relation of one sample scored on pair boxes: ``pairs[k] = (i, j)`` is scored by the
    batch's query ``query`` at its proposal ``k`` (the union box of proposals i and j)."""

    relation: int
    pairs: Tensor  # (P, 2) long
    query: int


def relation_text(graph: SceneGraph, relation_number: int) -> str:
    """What the scorer reads for a pair: "[attributes] subject predicate [attributes] object"
    ("man holding umbrella"), short as CLIP prompts go."""
    relation = graph.relations[relation_number]
    subject, obj = graph.entities[relation.subject], graph.entities[relation.object]
    return " ".join((entity_text(subject, "noun"), relation.predicate.strip(),
                     entity_text(obj, "noun")))


def likely_pairs(subject: Tensor, obj: Tensor, count: int) -> Tensor:
    """``(P, 2)`` (i, j), i != j: the ``count`` likeliest subjects times the ``count`` likeliest
    objects (by log-membership), so a scene of N proposals costs count^2 crops, not N^2."""
    top_subjects = subject.topk(min(count, len(subject))).indices
    top_objects = obj.topk(min(count, len(obj))).indices
    pairs = torch.cartesian_prod(top_subjects, top_objects).reshape(-1, 2)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def pair_truth(pairs: Tensor, scores: Tensor, n: int, config: ResolveConfig) -> Tensor:
    """``(N, N)`` truth of "i predicate j": the pairs' scores as memberships (the best pair 1,
    the others by how far they fall short, as for an entity's proposals); pairs not scored
    get the lowest scored value, no evidence either way beyond the worst tested pair."""
    values = log_membership(scores.float().cpu(), config.membership, config.temperature).exp()
    matrix = torch.full((n, n), float(values.min()))
    matrix[pairs[:, 0], pairs[:, 1]] = values
    return matrix


# --- the method ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """Which scorer queries one sample needs: one per entity, or one for the fallback."""

    graph: SceneGraph
    queries: tuple[int | None, ...]  # per entity: index into the batch's queries (None: generic)
    fallback: int | None = None  # index of the full-expression query when the graph is empty


def _check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def _check_backend(backend: object) -> str:
    """The parser backend name, checked against the parser's list."""
    from refground.language import BACKENDS

    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ConfigError(f"parser_backend must name a parser backend; one of "
                          f"{', '.join(BACKENDS)}; got {backend!r}")
    return backend


def _choice(name: str, value: object, options: Sequence[str]) -> str:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return str(value)


class GraphResolveOptions(ScoringOptions):
    """graph-resolve's options (see :class:`GraphResolve`): its own, and the scorer's shared
    ones (:class:`ScoringOptions`), forwarded to the scorer when given. Each value is checked
    here, before any model loads; ``parser_backend`` only matters with parsed graphs and is
    checked then."""

    unknown_hint: ClassVar[str] = (
        "options for the scorer go in scorer_options (e.g. -o 'scorer_options={\"debias\": 0}'); "
        f"only {', '.join(FORWARDED)} are forwarded from the top level")

    scorer: str = "crop-rank"
    scorer_options: dict[str, Any] | None = None
    graphs: str = "parsed"
    parser_backend: str = "auto"
    graph_cache: str | Path | None = None
    membership: str = "relative"
    temperature: float = 3.5
    modifier_weight: float = 1.0
    relation_weight: float = 1.0
    entity_text: str = "span"
    size_words: bool = True
    pair_candidates: int = 4

    @field_validator("scorer_options", mode="before")
    @classmethod
    def _mapping(cls, value: object) -> object:
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"scorer_options must be a mapping of options for the scorer, "
                             f"got {value!r}")
        return value

    @field_validator("graphs", "membership", "entity_text", mode="before")
    @classmethod
    def _one_of(cls, value: object, info: ValidationInfo) -> str:
        choices = {"graphs": GRAPH_SOURCES, "membership": MEMBERSHIPS,
                   "entity_text": ENTITY_TEXTS}[str(info.field_name)]
        return _choice(str(info.field_name), value, choices)

    @field_validator("temperature", mode="before")
    @classmethod
    def _positive(cls, value: object) -> float:
        return _check_positive("temperature", value)

    @field_validator("modifier_weight", "relation_weight", mode="before")
    @classmethod
    def _weight(cls, value: object, info: ValidationInfo) -> float:
        return _check_positive(str(info.field_name), value, allow_zero=True)

    @field_validator("size_words", mode="before")
    @classmethod
    def _switch(cls, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"size_words must be true or false, got {value!r}")
        return value

    @field_validator("pair_candidates", mode="before")
    @classmethod
    def _pairs(cls, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"pair_candidates must be an integer >= 0 (0: relations without "
                             f"geometry are dropped), got {value!r}")
        return value


@METHODS.register("graph-resolve")
class GraphResolve(Method):
    """See the module docstring. Options:

    * ``scorer`` (``crop-rank``): the proposal-scoring method that scores noun phrases;
      ``scorer_options`` are passed to it, and ``clip``, ``proposals``, ``device`` (and the
      other :class:`ScoringOptions`, :data:`FORWARDED`) are accepted top-level and forwarded
      too;
    * ``graphs``: ``parsed`` (:func:`refground.language.graphs_for`, with the dataset's
      ``graphs.<backend>.jsonl`` cache when present, or ``graph_cache=PATH``) or ``gold``
      (``Sample.graph``, SynthRef's generator graphs: the ablation with a perfect parser);
      ``parser_backend``: ``auto``, ``spacy`` or ``rules``;
    * ``membership`` / ``temperature``: how scores become membership probabilities (see
      :func:`log_membership`); the temperature is in CLIP logits (see :func:`score_scale`);
      3.5 (0.3 in cosine units for the shipped CLIP) was the best of 0.6-12 tried on a
      separate SynthRef tuning set (seed 1, its val/test/testC), with crop-rank scores;
    * ``modifier_weight`` / ``relation_weight``: multipliers of the geometric log terms;
    * ``entity_text``: ask the scorer about the entity's ``span`` as written ("the bigger of
      the two red squares") or just its ``noun`` ("red square");
    * ``pair_candidates`` (4): for a relation without geometry, the likeliest proposals of
      each end whose union boxes the scorer reads with "subject predicate object" (0: such
      relations are dropped, as before);
    * ``size_words``: read "large"/"big", "small"/"little" and "medium" among an entity's
      attributes as size classes of its members (:func:`spatial.size_class`: no member clearly
      bigger / smaller; one of each beside it); a crop shows no size, so CLIP cannot tell "the
      large red circle" from the small one.
    """

    name = "graph-resolve"
    config_type = GraphResolveOptions
    demo_order = 60
    summary = ("the expression parsed into objects and relations; CLIP scores each object's "
               "candidates, geometry resolves the relations")

    def __init__(self, **options: Any) -> None:
        """Validate ``options`` (:class:`GraphResolveOptions`), then build the scorer."""
        config = parse_config(GraphResolveOptions, options, self.name)
        self.graphs = config.graphs
        self.entity_text = config.entity_text
        self.parser_backend = (_check_backend(config.parser_backend) if config.graphs == "parsed"
                               else "auto")
        forwarded = {name: getattr(config, name) for name in FORWARDED
                     if name in config.model_fields_set}
        self.scorer = self._build_scorer(config.scorer, config.scorer_options, forwarded)
        self.device = self.scorer.device  # the scorer's (its ``device`` option, "auto")
        self.pair_candidates = config.pair_candidates
        self.config = ResolveConfig(config.membership,
                                    config.temperature / score_scale(self.scorer),
                                    config.modifier_weight, config.relation_weight,
                                    config.size_words)
        self.cache: dict[str, SceneGraph] = {}
        if config.graph_cache is not None:
            self._load_cache(Path(config.graph_cache))

    @staticmethod
    def _build_scorer(name: object, scorer_options: Mapping[str, Any] | None,
                      options: Mapping[str, Any]) -> ProposalScoringMethod:
        merged = dict(scorer_options or {})
        for key, value in options.items():
            if key in merged and merged[key] != value:
                raise ConfigError(f"{key} is given both top-level ({value!r}) and in "
                                  f"scorer_options ({merged[key]!r}); give it once")
            merged[key] = value
        if not isinstance(name, str) or name == GraphResolve.name:
            raise ConfigError(f"scorer must name a proposal-scoring method such as crop-rank "
                              f"or visual-prompt, got {name!r}")
        built = METHODS.build(name, **merged)
        if not isinstance(built, ProposalScoringMethod):
            raise ConfigError(f"scorer {name!r} does not score proposals (it is not a "
                              f"ProposalScoringMethod); use crop-rank or visual-prompt")
        return built

    # --- graphs -----------------------------------------------------------------------------

    @property
    def needs_annotations(self) -> bool:
        return self.scorer.needs_annotations

    @property
    def proposer_name(self) -> str | None:
        return self.scorer.proposer_name

    def prepare(self, dataset: Dataset) -> None:
        """Prepare the scorer; with parsed graphs, load the dataset's graph cache
        (``refground prepare-graphs``) if it was written, so parsing (an LLM, perhaps) is not
        repeated."""
        self.scorer.prepare(dataset)
        if self.graphs != "parsed" or self.cache:
            return
        self.cache = dataset.graphs(self.parser_backend)
        log.info("graph-resolve: %d cached graphs for %s", len(self.cache), dataset.name)

    def _load_cache(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"graph_cache {path} does not exist")
        from refground.language.cache import load_graph_cache

        self.cache = dict(load_graph_cache(path))
        log.info("graph-resolve: %d cached graphs from %s", len(self.cache), path)

    def _graphs(self, samples: Sequence[Sample]) -> list[SceneGraph]:
        if self.graphs == "gold":
            return [s.graph if s.graph is not None else SceneGraph() for s in samples]
        from refground.language import graphs_for

        return list(graphs_for([s.expression for s in samples], self.cache,
                               backend=self.parser_backend))

    # --- prediction -------------------------------------------------------------------------

    def _plan(self, items: Sequence[ScoringItem], graphs: Sequence[SceneGraph]
              ) -> tuple[list[_Plan], list[ScoringItem]]:
        """One scorer query per distinct (image, boxes, text), generic entities skipped."""
        queries: list[ScoringItem] = []
        seen: dict[tuple[str, str], int] = {}

        def query(item: ScoringItem, text: str) -> int:
            key = (B.image_boxes_key(item.sample.image.key, item.proposals.boxes), text)
            if key not in seen:
                seen[key] = len(queries)
                queries.append(replace(item, sample=replace(item.sample, expression=text)))
            return seen[key]

        plans = []
        for item, graph in zip(items, graphs, strict=True):
            if not graph.entities or is_unstructured(graph, self.config.size_words):
                plans.append(_Plan(graph, (), query(item, plain_text(
                    graph, item.sample.expression))))
                continue
            plans.append(_Plan(graph, tuple(
                None if is_generic(e) else query(item, entity_text(e, self.entity_text))
                for e in graph.entities)))
        return plans, queries

    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        graphs = self._graphs(samples)
        # a detector looks for the entities of the graphs resolved below, not another parse
        items = self.scorer.prepare_items(samples, [
            graph_queries(graph, sample.expression)
            for graph, sample in zip(graphs, samples, strict=True)])
        plans, queries = self._plan(items, graphs)
        scores = self.scorer.score(queries) if queries else []
        members = [self._log_members(item, plan, scores)
                   for item, plan in zip(items, plans, strict=True)]
        pair_plans, pair_items = self._plan_pairs(items, plans, members)
        pair_scores = self.scorer.score(pair_items) if pair_items else []
        return [self._predict_one(item, plan, scores, log_members, pair_plan, pair_scores)
                for item, plan, log_members, pair_plan
                in zip(items, plans, members, pair_plans, strict=True)]

    def _log_members(self, item: ScoringItem, plan: _Plan, scores: Sequence[Tensor]
                     ) -> list[Tensor]:
        """Per entity, log-membership of every proposal (generic entities: all members)."""
        n = len(item.proposals)
        return [torch.zeros(n) if q is None else log_membership(
                    scores[q].float().cpu(), self.config.membership, self.config.temperature)
                for q in plan.queries]

    def _plan_pairs(self, items: Sequence[ScoringItem], plans: Sequence[_Plan],
                    members: Sequence[list[Tensor]]
                    ) -> tuple[list[list[PairQuery]], list[ScoringItem]]:
        """Per sample, its relations without geometry as scorer queries on pair boxes."""
        pair_plans: list[list[PairQuery]] = []
        queries: list[ScoringItem] = []
        for item, plan, log_members in zip(items, plans, members, strict=True):
            sample_pairs: list[PairQuery] = []
            pair_plans.append(sample_pairs)
            if plan.fallback is not None or not self.pair_candidates:
                continue
            for number, relation in enumerate(plan.graph.relations):
                ends = (relation.subject, relation.object)
                if (spatial.has_geometry(relation.predicate)
                        or not all(0 <= e < len(log_members) for e in ends)
                        or relation.subject == relation.object):
                    continue
                pairs = likely_pairs(log_members[relation.subject], log_members[relation.object],
                                     self.pair_candidates)
                if not len(pairs):
                    continue
                boxes = item.proposals.boxes
                union = B.enclosing_box(boxes[pairs[:, 0]], boxes[pairs[:, 1]])
                labels = tuple(f"{i}+{j}" for i, j in pairs.tolist())
                text = relation_text(plan.graph, number)
                queries.append(ScoringItem(replace(item.sample, expression=text), item.pixels,
                                           Proposals(union, torch.zeros(len(pairs)), labels)))
                sample_pairs.append(PairQuery(number, pairs, len(queries) - 1))
        return pair_plans, queries

    def _predict_one(self, item: ScoringItem, plan: _Plan, scores: Sequence[Tensor],
                     log_members: list[Tensor], pair_plan: Sequence[PairQuery],
                     pair_scores: Sequence[Tensor]) -> Prediction:
        if plan.fallback is not None:
            prediction = rank(item, scores[plan.fallback])
            if plan.graph.entities:  # one plain entity: nothing to resolve, nothing dropped
                return replace(prediction, graph_use=GraphUse(), extras={
                    "graph": self.graphs, "graph_fallback": False,
                    "scene_graph": plan.graph.to_dict(), "notes": []})
            return replace(prediction, graph_use=GraphUse(structured=False),
                           extras={"graph": "none", "graph_fallback": True})
        n = len(item.proposals)
        _, height, width = item.pixels.shape
        geometry = spatial.Geometry.of(item.proposals.boxes, width, height)
        scored = {query.relation: pair_truth(query.pairs, pair_scores[query.query], n,
                                             self.config)
                  for query in pair_plan}
        resolver = GraphResolver(plan.graph, log_members, geometry, self.config, scored)
        prediction = rank(item, resolver.resolve())
        return replace(prediction, graph_use=resolver.graph_use(), extras={
            "graph": self.graphs, "graph_fallback": False,
            "scene_graph": plan.graph.to_dict(), "notes": list(resolver.notes)})
