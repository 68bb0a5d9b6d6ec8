"""SynthRef expressions: logical forms, their evaluation on a scene, and their English wording.

Every expression starts as a *logical form* (a small frozen dataclass such as
``Relate(Attr("circle", "red"), "left of", Attr("square", "blue"))``). A form is evaluated on the
scene's geometry in three-valued logic -- ``TRUE``, ``FALSE`` or ``UNSURE`` per object -- where
``UNSURE`` marks geometry too close to call ("left of" for two objects stacked almost
vertically, "leftmost" of two circles a few pixels apart). A form is kept only when it is
TRUE for the target and FALSE for every other object: exactly one referent, with a clear margin,
so no human reader could reasonably pick another object.

Only then is the form worded (templates with synonyms, articles, optional "that is") and turned
into its gold :class:`~refground.types.SceneGraph`. Graph conventions:

* entity 0 is the referent; in relational expressions entity 1 is the anchor;
* ``span`` is the noun phrase up to its head noun ("the large blue square", "the second star");
* ``head`` is the head noun as written, singular ("circle", or "object" / "shape" / "thing" /
  "one" when the expression names no shape);
* ``attributes`` are the colour and size words as written ("big", "red");
* ``spatial`` holds the selection operators in a canonical vocabulary, whatever the wording:
  ``leftmost`` / ``rightmost`` / ``topmost`` / ``bottommost``, ``on the left`` ... ``in the top
  right``, ``second from the left``, ``middle``, and the comparatives ``bigger`` / ``smaller``;
* relation predicates are canonical: ``left of``, ``right of``, ``above``, ``below``,
  ``closest to``, ``next to``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from refground import vocabulary
from refground.data.synth.scenes import Scene
from refground.types import Entity, Relation, SceneGraph

TRUE, UNSURE, FALSE = 1.0, 0.5, 0.0

EXPRESSION_TYPES: tuple[str, ...] = ("attribute", "position", "relation", "comparative",
                                     "ordinal")
DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "attribute": 0.25, "position": 0.2, "relation": 0.25, "comparative": 0.1, "ordinal": 0.2,
}
PREDICATES: tuple[str, ...] = vocabulary.SPATIAL_PREDICATES
DIRECTIONS: tuple[str, ...] = vocabulary.DIRECTIONS
REGIONS: tuple[str, ...] = tuple(vocabulary.REGIONS)


# --- logical forms ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attr:
    """Objects with these attributes; ``None`` leaves one free (``Attr()`` is every object)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None

    @property
    def specificity(self) -> int:
        return sum(value is not None for value in (self.shape, self.color, self.size))


@dataclass(frozen=True)
class Extreme:
    """The member of ``base`` furthest towards ``direction``: "the leftmost circle"."""

    base: Attr
    direction: str


@dataclass(frozen=True)
class Region:
    """The member of ``base`` inside an image region: "the circle on the left"."""

    base: Attr
    region: str


@dataclass(frozen=True)
class Ordinal:
    """The ``rank``-th member of ``base`` counted from ``direction``: "the second star from the
    top"."""

    base: Attr
    rank: int
    direction: str


@dataclass(frozen=True)
class Middle:
    """The middle one of exactly three members of ``base`` lying roughly in a row."""

    base: Attr


@dataclass(frozen=True)
class Compare:
    """The bigger (or smaller) of exactly two members of ``base``."""

    base: Attr
    bigger: bool


@dataclass(frozen=True)
class Relate:
    """A member of ``subject`` standing in ``predicate`` to the unique ``anchor``."""

    subject: Attr
    predicate: str
    anchor: Attr | Extreme


LogicalForm = Attr | Extreme | Region | Ordinal | Middle | Compare | Relate


def expression_type(form: LogicalForm) -> str:
    """The SynthRef expression type a logical form belongs to."""
    match form:
        case Attr():
            return "attribute"
        case Extreme() | Region():
            return "position"
        case Ordinal() | Middle():
            return "ordinal"
        case Compare():
            return "comparative"
        case Relate():
            return "relation"
    raise TypeError(f"not a logical form: {form!r}")


# --- scene geometry -----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Layout:
    """A scene as arrays, with pairwise relation truth tables and a memo of evaluated forms."""

    width: int
    height: int
    shapes: tuple[str, ...]
    colors: tuple[str, ...]
    sizes: tuple[str, ...]
    boxes: np.ndarray  # (n, 4) xyxy
    centers: np.ndarray  # (n, 2)
    sides: np.ndarray  # (n,) longer side of the tight box
    areas: np.ndarray  # (n,) drawn pixels
    relations: dict[str, np.ndarray]  # predicate -> (n, n), [i, j] = "i predicate j"
    gaps: np.ndarray  # (n, n) distance between boxes (0 where they touch)
    _memo: dict[LogicalForm, np.ndarray] = field(default_factory=dict, repr=False)
    _forms: dict[tuple[str, int], tuple[LogicalForm, ...]] = field(default_factory=dict,
                                                                  repr=False)

    @classmethod
    def from_scene(cls, scene: Scene) -> Layout:
        objects = scene.objects
        boxes = np.array([o.box for o in objects], dtype=np.float64)
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        gaps = _box_gaps(boxes)
        left_of = _directional(boxes, centers, axis=0)
        above = _directional(boxes, centers, axis=1)
        relations = {
            "left of": left_of, "right of": left_of.T, "above": above, "below": above.T,
            "next to": _next_to(gaps, sides),
        }
        return cls(
            width=scene.width, height=scene.height,
            shapes=tuple(o.shape for o in objects), colors=tuple(o.color for o in objects),
            sizes=tuple(o.size for o in objects), boxes=boxes, centers=centers, sides=sides,
            areas=np.array([o.area for o in objects], dtype=np.float64),
            relations=relations, gaps=gaps,
        )

    def __len__(self) -> int:
        return len(self.shapes)

    def truth(self, form: LogicalForm) -> np.ndarray:
        """Per-object truth of ``form`` (memoised: enumeration re-asks the same sub-forms)."""
        if form not in self._memo:
            values = _evaluate(form, self)
            values.setflags(write=False)
            self._memo[form] = values
        return self._memo[form]

    def forms(self, kind: str, target: int) -> tuple[LogicalForm, ...]:
        """Candidate forms of ``kind`` for ``target`` (memoised: a ref asks several times)."""
        key = (kind, target)
        if key not in self._forms:
            self._forms[key] = tuple(FORM_ENUMERATORS[kind](self, target))
        return self._forms[key]

    def members(self, base: Attr) -> np.ndarray:
        return np.flatnonzero(self.truth(base) == TRUE)

    def picks_only(self, form: LogicalForm, target: int) -> bool:
        """True when ``form`` names ``target`` and clearly excludes every other object."""
        values = self.truth(form)
        return bool(values[target] == TRUE and np.count_nonzero(values) == 1)


def _box_gaps(boxes: np.ndarray) -> np.ndarray:
    """Euclidean distance between every two boxes (0 for touching or overlapping ones)."""
    gap_x = np.maximum(boxes[None, :, 0] - boxes[:, None, 2], boxes[:, None, 0] - boxes[None, :, 2])
    gap_y = np.maximum(boxes[None, :, 1] - boxes[:, None, 3], boxes[:, None, 1] - boxes[None, :, 3])
    return np.hypot(np.maximum(gap_x, 0), np.maximum(gap_y, 0))


def _directional(boxes: np.ndarray, centers: np.ndarray, axis: int) -> np.ndarray:
    """``[i, j]``: is i before j along ``axis`` ("left of" for x, "above" for y)?

    TRUE needs i's box to end before j's begins and the offset to lie within 45 degrees of the
    axis; FALSE means i is not before j at all or the pair is clearly arranged along the other
    axis; everything between is UNSURE.
    """
    along = centers[None, :, axis] - centers[:, None, axis]
    across = np.abs(centers[None, :, 1 - axis] - centers[:, None, 1 - axis])
    disjoint = boxes[:, None, axis + 2] < boxes[None, :, axis]
    clearly = disjoint & (across <= along)
    clearly_not = (along <= 0) | (across > 3 * along)
    values = np.where(clearly, TRUE, np.where(clearly_not, FALSE, UNSURE))
    np.fill_diagonal(values, FALSE)
    return values


def _next_to(gaps: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """``[i, j]``: TRUE within 0.6 object sides of each other, FALSE beyond 1.5 sides."""
    scale = np.maximum(sides[:, None], sides[None, :])
    values = np.where(gaps <= 0.6 * scale, TRUE, np.where(gaps >= 1.5 * scale, FALSE, UNSURE))
    np.fill_diagonal(values, FALSE)
    return values


# --- evaluation ---------------------------------------------------------------------------------

_AXIS_SIGN = {"left": (0, 1.0), "right": (0, -1.0), "top": (1, 1.0), "bottom": (1, -1.0)}


def _evaluate(form: LogicalForm, layout: Layout) -> np.ndarray:
    match form:
        case Attr():
            return _attr_truth(form, layout)
        case Extreme():
            return _ordinal_truth(layout, form.base, 1, form.direction)
        case Ordinal():
            return _ordinal_truth(layout, form.base, form.rank, form.direction)
        case Region():
            return _region_truth(form, layout)
        case Middle():
            return _middle_truth(form, layout)
        case Compare():
            return _compare_truth(form, layout)
        case Relate():
            return _relate_truth(form, layout)
    raise TypeError(f"not a logical form: {form!r}")


def _attr_truth(form: Attr, layout: Layout) -> np.ndarray:
    match = np.ones(len(layout), dtype=bool)
    for wanted, values in ((form.shape, layout.shapes), (form.color, layout.colors),
                           (form.size, layout.sizes)):
        if wanted is not None:
            match &= np.array([value == wanted for value in values])
    return np.where(match, TRUE, FALSE)


def _clearly_apart(layout: Layout, axis: int, a: int, b: int) -> bool:
    """Centres apart along ``axis`` by at least 0.75 of the larger object's side and 6% of the
    image: enough that "the lower one" is obvious at a glance, for small objects too."""
    extent = layout.width if axis == 0 else layout.height
    margin = max(0.75 * max(layout.sides[a], layout.sides[b]), 0.06 * extent)
    return bool(abs(layout.centers[b, axis] - layout.centers[a, axis]) >= margin)


def _ordinal_truth(layout: Layout, base: Attr, rank: int, direction: str) -> np.ndarray:
    """The ``rank``-th member from ``direction``; UNSURE if any step up to it is too close."""
    axis, sign = _AXIS_SIGN[direction]
    key = sign * layout.centers[:, axis]
    members = layout.members(base)
    order = members[np.argsort(key[members], kind="stable")]
    values = np.zeros(len(layout))
    if len(order) < rank:
        return values
    window = order[:rank + 1]
    if all(_clearly_apart(layout, axis, a, b) for a, b in pairwise(window)):
        values[order[rank - 1]] = TRUE
    else:
        values[window] = UNSURE
    return values


def _band(position: np.ndarray) -> np.ndarray:
    """Membership of the low band of an axis (``position`` in [0, 1] from that side): TRUE in
    the outer third, FALSE clearly past the middle, UNSURE between."""
    return np.where(position < 1 / 3, TRUE, np.where(position > 0.55, FALSE, UNSURE))


def _region_truth(form: Region, layout: Layout) -> np.ndarray:
    fx = layout.centers[:, 0] / layout.width
    fy = layout.centers[:, 1] / layout.height
    positions = {"left": fx, "right": 1.0 - fx, "top": fy, "bottom": 1.0 - fy}
    values = layout.truth(form.base)
    for side in form.region.split():
        values = np.minimum(values, _band(positions[side]))
    return values


def _middle_truth(form: Middle, layout: Layout) -> np.ndarray:
    """TRUE for the middle of three members in a clear row; UNSURE for all if not a row."""
    members = layout.members(form.base)
    values = np.zeros(len(layout))
    if len(members) != 3:
        values[members] = UNSURE
        return values
    points = layout.centers[members]
    axis = int(np.ptp(points[:, 1]) > np.ptp(points[:, 0]))
    key = layout.centers[:, axis]
    first, middle, last = members[np.argsort(key[members], kind="stable")]
    ends = layout.centers[last] - layout.centers[first]
    offset = layout.centers[middle] - layout.centers[first]
    off_line = abs(ends[0] * offset[1] - ends[1] * offset[0]) / max(np.hypot(*ends), 1e-9)
    in_row = off_line <= 0.35 * np.hypot(*ends)
    spaced = (_clearly_apart(layout, axis, first, middle)
              and _clearly_apart(layout, axis, middle, last))
    if in_row and spaced:
        values[middle] = TRUE
    else:
        values[members] = UNSURE
    return values


def _compare_truth(form: Compare, layout: Layout) -> np.ndarray:
    """TRUE for the bigger/smaller of exactly two members whose areas differ by >= 1.6x."""
    members = layout.members(form.base)
    values = np.zeros(len(layout))
    values[members] = UNSURE
    if len(members) != 2:
        return values
    small, big = members[np.argsort(layout.areas[members], kind="stable")]
    if layout.areas[big] >= 1.6 * layout.areas[small]:
        values[members] = FALSE
        values[big if form.bigger else small] = TRUE
    return values


def _relate_truth(form: Relate, layout: Layout) -> np.ndarray:
    anchor_values = layout.truth(form.anchor)
    anchors = np.flatnonzero(anchor_values == TRUE)
    subject = layout.truth(form.subject).copy()
    if len(anchors) != 1 or np.count_nonzero(anchor_values) != 1:
        return np.minimum(subject, UNSURE)  # an ambiguous anchor makes the whole phrase unclear
    anchor = int(anchors[0])
    subject[anchor] = FALSE
    if form.predicate == "closest to":
        return _closest_truth(layout, subject, anchor)
    return np.minimum(subject, layout.relations[form.predicate][:, anchor])


def _closest_truth(layout: Layout, subject: np.ndarray, anchor: int) -> np.ndarray:
    """TRUE for the subject member nearest the anchor when the runner-up is clearly further
    (>= 1.3x the centre distance, and further by box gap too)."""
    members = np.flatnonzero(subject == TRUE)
    values = np.zeros(len(layout))
    if len(members) == 0:
        return values
    distances = np.hypot(*(layout.centers[members] - layout.centers[anchor]).T)
    order = members[np.argsort(distances, kind="stable")]
    if len(order) == 1:
        values[order[0]] = TRUE
        return values
    nearest, runner_up = order[0], order[1]
    d_near = float(np.hypot(*(layout.centers[nearest] - layout.centers[anchor])))
    d_next = float(np.hypot(*(layout.centers[runner_up] - layout.centers[anchor])))
    gaps = layout.gaps[order, anchor]
    if d_next >= 1.3 * d_near and gaps[0] < gaps[1:].min():
        values[nearest] = TRUE
    else:
        values[order[:2]] = UNSURE
    return values


# --- enumerating forms for a target -------------------------------------------------------------

def _bases(layout: Layout, target: int, min_members: int) -> list[Attr]:
    """Descriptions of the target's kind that leave at least ``min_members`` candidates."""
    shape, color = layout.shapes[target], layout.colors[target]
    options = [Attr(shape), Attr(shape, color), Attr(None, color), Attr()]
    return [b for b in options if len(layout.members(b)) >= min_members]


def attribute_forms(layout: Layout, target: int) -> list[Attr]:
    s, c, z = layout.shapes[target], layout.colors[target], layout.sizes[target]
    return [Attr(s), Attr(s, c), Attr(s, None, z), Attr(s, c, z), Attr(None, c),
            Attr(None, c, z), Attr(None, None, z)]


def position_forms(layout: Layout, target: int) -> list[LogicalForm]:
    forms: list[LogicalForm] = []
    for base in _bases(layout, target, 2):
        forms += [Extreme(base, d) for d in DIRECTIONS]
        forms += [Region(base, r) for r in REGIONS]
    return forms


def ordinal_forms(layout: Layout, target: int) -> list[LogicalForm]:
    forms: list[LogicalForm] = []
    for base in _bases(layout, target, 3):
        forms += [Ordinal(base, rank, d) for rank in (2, 3) for d in DIRECTIONS]
        if len(layout.members(base)) == 3:
            forms.append(Middle(base))
    return forms


def comparative_forms(layout: Layout, target: int) -> list[LogicalForm]:
    shape, color = layout.shapes[target], layout.colors[target]
    forms: list[LogicalForm] = []
    for base in (Attr(shape), Attr(shape, color), Attr(None, color)):
        members = layout.members(base)
        if len(members) == 2:
            other = int(members[members != target][0])
            forms.append(Compare(base, bigger=bool(layout.areas[target] > layout.areas[other])))
    return forms


def anchor_forms(layout: Layout, anchor: int) -> list[Attr | Extreme]:
    """Short unique descriptions of a would-be anchor: its minimal shape-naming attribute
    descriptions, plus superlatives over its shape ("the leftmost square")."""
    unique = [f for f in attribute_forms(layout, anchor)
              if f.shape is not None and layout.picks_only(f, anchor)]
    fewest = min((f.specificity for f in unique), default=0)
    forms: list[Attr | Extreme] = [f for f in unique if f.specificity == fewest]
    same_shape = Attr(layout.shapes[anchor])
    if len(layout.members(same_shape)) >= 2:
        superlatives = [Extreme(same_shape, d) for d in DIRECTIONS]
        forms += [f for f in superlatives if layout.picks_only(f, anchor)]
    return forms


def relation_forms(layout: Layout, target: int) -> list[LogicalForm]:
    """Relations that are *needed*: the subject alone leaves >= 2 candidates besides the anchor."""
    s, c, z = layout.shapes[target], layout.colors[target], layout.sizes[target]
    subjects = [Attr(s), Attr(s, c), Attr(s, None, z), Attr(None, c), Attr()]
    forms: list[LogicalForm] = []
    for anchor in range(len(layout)):
        if anchor == target:
            continue
        anchors = layout.forms("anchor", anchor)
        for subject in subjects:
            members = layout.members(subject)
            if np.count_nonzero(members != anchor) < 2:
                continue
            forms += [Relate(subject, p, a) for p in PREDICATES for a in anchors]
    return forms


FORM_ENUMERATORS: dict[str, Callable[[Layout, int], Sequence[LogicalForm]]] = {
    "anchor": anchor_forms,
    "attribute": attribute_forms,
    "position": position_forms,
    "relation": relation_forms,
    "comparative": comparative_forms,
    "ordinal": ordinal_forms,
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


# --- wording ------------------------------------------------------------------------------------

SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium",), "large": ("large", "big")}
GENERIC_HEADS = vocabulary.GENERIC_NOUNS
SUPERLATIVES = {
    "left": ("leftmost",), "right": ("rightmost",), "top": ("topmost", "highest", "top"),
    "bottom": ("lowest", "bottommost", "bottom"),
}
SUPERLATIVE_POSTMODIFIERS = {
    "left": ("furthest to the left", "on the far left"),
    "right": ("furthest to the right", "on the far right"),
    "top": ("at the very top", "highest up"),
    "bottom": ("at the very bottom", "furthest down"),
}
CANONICAL_SUPERLATIVE = vocabulary.SUPERLATIVES
_REGION_SYNONYMS = {
    "left": ("on the left side", "at the left"),
    "right": ("on the right side", "at the right"),
    "top": ("near the top",),
    "bottom": ("near the bottom",),
    **{corner: (f"in the {corner} corner", f"at the {corner}")
       for corner in ("top left", "top right", "bottom left", "bottom right")},
}
#: Region -> its wordings, the canonical one (the gold graph's) first.
REGION_PHRASES = {region: (vocabulary.REGIONS[region], *others)
                  for region, others in _REGION_SYNONYMS.items()}
ORDINAL_WORDS = {2: ("second", "2nd"), 3: ("third", "3rd")}
CANONICAL_ORDINAL = {rank: vocabulary.ORDINALS[rank] for rank in (2, 3)}
COMPARATIVE_WORDS = {True: ("bigger", "larger"), False: ("smaller",)}
PREDICATE_PHRASES = {
    "left of": ("left of", "to the left of", "on the left side of"),
    "right of": ("right of", "to the right of", "on the right side of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "closest to": ("closest to", "nearest to", "nearest"),
    "next to": ("next to", "beside", "by"),
}
CONNECTORS = ("", "", "", "that is", "which is")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


@dataclass(frozen=True)
class _Wording:
    """Choices that hold for a whole expression: which article, if any."""

    article: str  # "the", "that" or "" (terse, article-free style)

    def determiner(self, referent: bool) -> str:
        if self.article == "that" and not referent:
            return "the"
        return self.article


def _noun_phrase(attr: Attr, rng: np.random.Generator, determiner: str,
                 modifiers: Sequence[str] = (), plural: bool = False
                 ) -> tuple[str, str, tuple[str, ...]]:
    """(text, head, attribute words) of "[det] [modifiers] [size] [colour] head"."""
    words: list[str] = []
    if attr.size is not None:
        words.append(_pick(rng, SIZE_WORDS[attr.size]))
    if attr.color is not None:
        words.append(attr.color)
    if attr.shape is not None:
        head = attr.shape
    else:
        generic = GENERIC_HEADS + (("one",) if words and determiner and not plural else ())
        head = _pick(rng, generic)
    noun = _plural(head) if plural else head
    text = " ".join(w for w in (determiner, *modifiers, *words, noun) if w)
    return text, head, tuple(words)


def _entity(attr: Attr, rng: np.random.Generator, determiner: str,
            modifiers: Sequence[str] = (), spatial: Sequence[str] = ()) -> Entity:
    text, head, words = _noun_phrase(attr, rng, determiner, modifiers)
    return Entity(span=text, head=head, attributes=words, spatial=tuple(spatial))


def _word_extreme(form: Extreme, rng: np.random.Generator, det: str,
                  allow_postmodifier: bool = True) -> tuple[str, Entity]:
    spatial = (CANONICAL_SUPERLATIVE[form.direction],)
    if allow_postmodifier and rng.random() < 0.35:
        entity = _entity(form.base, rng, det, spatial=spatial)
        return f"{entity.span} {_pick(rng, SUPERLATIVE_POSTMODIFIERS[form.direction])}", entity
    modifier = _pick(rng, SUPERLATIVES[form.direction])
    entity = _entity(form.base, rng, det, (modifier,), spatial)
    return entity.span, entity


def _word_region(form: Region, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    phrases = REGION_PHRASES[form.region]
    entity = _entity(form.base, rng, det, spatial=(phrases[0],))
    return f"{entity.span} {_pick(rng, phrases)}", entity


def _word_ordinal(form: Ordinal, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    origin = f"from the {form.direction}"
    spatial = (f"{CANONICAL_ORDINAL[form.rank]} {origin}",)
    entity = _entity(form.base, rng, det, (_pick(rng, ORDINAL_WORDS[form.rank]),), spatial)
    return f"{entity.span} {origin}", entity


def _word_middle(form: Middle, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    if rng.random() < 0.5:
        entity = _entity(form.base, rng, det, ("middle",), ("middle",))
        return entity.span, entity
    entity = _entity(form.base, rng, det, spatial=("middle",))
    return f"{entity.span} in the middle", entity


def _word_compare(form: Compare, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    word = _pick(rng, COMPARATIVE_WORDS[form.bigger])
    spatial = ("bigger" if form.bigger else "smaller",)
    if rng.random() < 0.5:
        entity = _entity(form.base, rng, det, (word,), spatial)
        return entity.span, entity
    group, head, words = _noun_phrase(form.base, rng, "the two" if det else "two", plural=True)
    span = " ".join(w for w in ("the" if det else "", word, "of", group) if w)
    return span, Entity(span=span, head=head, attributes=words, spatial=spatial)


def _word_relation(form: Relate, rng: np.random.Generator, wording: _Wording
                   ) -> tuple[str, SceneGraph]:
    subject = _entity(form.subject, rng, wording.determiner(True))
    anchor_det = wording.determiner(False)
    if isinstance(form.anchor, Extreme):
        anchor_text, anchor = _word_extreme(form.anchor, rng, anchor_det, allow_postmodifier=False)
    else:
        anchor = _entity(form.anchor, rng, anchor_det)
        anchor_text = anchor.span
    connector = _pick(rng, CONNECTORS) if wording.article else ""
    phrase = _pick(rng, PREDICATE_PHRASES[form.predicate])
    text = " ".join(w for w in (subject.span, connector, phrase, anchor_text) if w)
    graph = SceneGraph((subject, anchor), (Relation(0, form.predicate, 1),))
    return text, graph


def word(form: LogicalForm, rng: np.random.Generator) -> tuple[str, SceneGraph]:
    """English text (as generated, before lowercasing) and gold scene graph of ``form``."""
    roll = rng.random()
    wording = _Wording("" if roll < 0.15 else "that" if roll < 0.23 else "the")
    det = wording.determiner(True)
    match form:
        case Relate():
            text, graph = _word_relation(form, rng, wording)
        case Attr():
            entity = _entity(form, rng, det)
            text, graph = entity.span, SceneGraph((entity,))
        case _:
            worder = {Extreme: _word_extreme, Region: _word_region, Ordinal: _word_ordinal,
                      Middle: _word_middle, Compare: _word_compare}[type(form)]
            text, entity = worder(form, rng, det)
            graph = SceneGraph((entity,))
    if rng.random() < 0.2:
        text = text[:1].upper() + text[1:]
    return text, graph


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
