"""SynthRef's logical forms: what an expression means, and whether it names one object only.

Every expression starts as a *logical form* (a small frozen dataclass such as
``Relate(Attr("circle", "red"), "left of", Attr("square", "blue"))``). A form is evaluated on the
scene's geometry in three-valued logic -- ``TRUE``, ``FALSE`` or ``UNSURE`` per object -- where
``UNSURE`` marks geometry too close to call ("left of" for two objects stacked almost
vertically, "leftmost" of two circles a few pixels apart). A form is kept only when it is
TRUE for the target and FALSE for every other object (:meth:`Layout.picks_only`): exactly one
referent, with a clear margin, so no human reader could reasonably pick another object.

This module knows nothing of English: :mod:`~refground.data.synth.wording` and
:mod:`~refground.data.synth.paraphrase` word a form, :mod:`~refground.data.synth.planning`
chooses which form to ask about an object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from refground import vocabulary
from refground.data.synth.scenes import Scene

TRUE, UNSURE, FALSE = 1.0, 0.5, 0.0

EXPRESSION_TYPES: tuple[str, ...] = ("attribute", "position", "relation", "comparative",
                                     "ordinal")
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
