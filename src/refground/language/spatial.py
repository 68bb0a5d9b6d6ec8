"""Soft geometry for scene-graph grounding: relations, superlatives, ordinals and regions.

A parsed expression says *what* to look for ("the red circle") and *how it is arranged*
("left of the blue square", "second from the left"). CLIP is good at the first and blind to
the second, so :mod:`refground.methods.graph_resolve` lets CLIP score each noun phrase and
decides the arrangement here, on the proposal boxes, with plain geometry.

Everything is a probability in [0, 1] computed for *all* proposals at once with torch (no
Python loop over boxes or pairs, except the ordinal dynamic programs, which loop over the
``N`` proposals while vectorising over the ``N`` candidates and counts):

* ``relation(predicate, geometry, members)`` -> ``(N, N)``, ``[i, j]`` = "i predicate j";
* ``between(geometry)`` -> ``(N, N, N)``, ``[i, j, k]`` = "i between j and k";
* ``modifier(name, geometry, members)`` -> ``(N,)``, ``g(i)`` = the probability that ``i``
  satisfies the modifier *given that i is itself a member*; ``members[j]`` is the probability
  that proposal ``j`` is one of the things the noun phrase names. The caller multiplies by
  ``members[i]`` (in log space, adds) exactly once, however many modifiers an entity has.

The thresholds soften SynthRef's (:mod:`refground.data.synth.logical_forms`): where SynthRef says
TRUE the score is 1, where it says FALSE it is 0, and its UNSURE zone becomes a smooth ramp,
so the same rules carry over to detector boxes that never sit exactly on a threshold.
Unknown predicates and modifiers return ``None``: the caller then applies no geometry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from refground import boxes as B
from refground import vocabulary

EPS = 1e-9

#: Non-canonical spellings a parser (or a person) may produce, mapped to the canonical name.
PREDICATE_ALIASES: dict[str, str] = {
    "to the left of": "left of", "on the left of": "left of", "on the left side of": "left of",
    "to the right of": "right of", "on the right of": "right of",
    "on the right side of": "right of",
    "over": "above", "on top of": "on", "under": "below", "beneath": "below",
    "underneath": "below",
    "near": "next to", "beside": "next to", "by": "next to", "close to": "next to",
    "nearest to": "closest to", "nearest": "closest to", "closest": "closest to",
    "far away from": "far from", "away from": "far from",
    "within": "inside", "inside of": "inside",
    "larger than": "bigger than", "greater than": "bigger than",
}
#: Endings of the participles that lead a predicate ("sitting on", "parked behind").
VERB_ENDINGS = ("ing", "ed")
_AXIS_SIGN = {"left": (0, 1.0), "right": (0, -1.0), "top": (1, 1.0), "bottom": (1, -1.0)}
SUPERLATIVES: dict[str, str] = {
    **{word: direction for direction, word in vocabulary.SUPERLATIVES.items()},
    "highest": "top", "lowest": "bottom", "uppermost": "top", "lowermost": "bottom",
}
#: Size superlatives and the two-member comparatives; ``closest`` / ``farthest`` (to the
#: viewer) are read as the biggest / smallest, since nearer things look bigger in a photo, and
#: so are "in front" and "in the back".
SIZE_SUPERLATIVES: dict[str, bool] = {
    "largest": True, "biggest": True, "bigger": True, "larger": True, "closest": True,
    "nearest": True, "smallest": False, "smaller": False, "tiniest": False,
    "farthest": False, "furthest": False, "in front": True, "in the back": False,
}
#: Height superlatives: "the tallest giraffe" has the tallest box (True), "the shortest woman"
#: the shortest; in a photo that is the box's height, whatever its width.
HEIGHT_SUPERLATIVES: dict[str, bool] = {"tallest": True, "shortest": False}
#: Size adjectives, read as a size class among the entity's own members: "the small red
#: circle" is one of the red circles that no other red circle is clearly smaller than, whatever
#: its size in pixels ("small" is relative to the things compared, in RefCOCO as in SynthRef).
#: Not "the smallest": "the small square left of the circle" may pick one of two small squares
#: by the relation, and the slightly smaller one must not win by size. "medium" is a member
#: with a clearly bigger and a clearly smaller one beside it (:func:`medium`).
SIZE_ADJECTIVES: dict[str, str] = {
    "large": "large", "big": "large", "huge": "large", "giant": "large",
    "small": "small", "little": "small", "tiny": "small",
    "medium": "medium", "mid-sized": "medium", "medium-sized": "medium",
}
REGIONS: dict[str, tuple[str, ...]] = {
    phrase: tuple(region.split()) for region, phrase in vocabulary.REGIONS.items()}
ORDINAL_WORDS: dict[str, int] = {
    "first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
    "fifth": 5, "5th": 5,
}
_ORDINAL = re.compile(r"^(\w+) from the (left|right|top|bottom)$")

# Softening constants (fractions of the larger object's side unless noted); see each user.
ORDER_MARGIN = 0.25  # "j is further left than i" ramps over +-0.25 sides of centre offset
SIZE_ORDER_MARGIN = 0.2  # log-area margin of "bigger": ratios within e^0.2 = 1.22 are unsure
#: "Clearly bigger" for size classes, in log box side: ratios up to e^0.10 = 1.11 are the same
#: class, from e^0.28 = 1.32 another (a ramp between). SynthRef's classes are at least 1.25x
#: apart in side and vary by at most 1.25x within; typical pairs are 1.1x within, 1.6x across.
SIZE_CLASS_GAP = (0.10, 0.28)
#: Box side as a share of the image side (sqrt of the area share) that reads as medium-sized
#: on its own, with soft edges: "medium" among two members (is it the smaller or the bigger
#: one?) needs a scale, and the image is the only one there is. The band is where RefCOCO-scale
#: SynthRef draws its medium class (96-120 px on 320-384 px canvases: 0.25-0.375).
MEDIUM_SIDE_SHARE = ((0.20, 0.25), (0.42, 0.37))  # (0 at, 1 at) of the lower and upper edge
CLOSER_RATIO = 1.15  # k is "closer" than i when its distance is 1.15x smaller (ramped)


@dataclass(frozen=True, eq=False)
class Geometry:
    """Proposal boxes ``(N, 4)`` xyxy in pixels and the image size they live in."""

    boxes: Tensor
    width: float
    height: float

    @classmethod
    def of(cls, boxes: Tensor, width: float, height: float) -> Geometry:
        return cls(boxes.detach().float().cpu(), float(width), float(height))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def centers(self) -> Tensor:
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2

    @property
    def sides(self) -> Tensor:
        """The longer side of each box: the unit in which SynthRef states distances."""
        return (self.boxes[:, 2:] - self.boxes[:, :2]).amax(1).clamp(min=1.0)

    @property
    def areas(self) -> Tensor:
        return B.area(self.boxes).clamp(min=1.0)

    def pair_scale(self) -> Tensor:
        """``[i, j]`` = the larger of the two boxes' sides."""
        sides = self.sides
        return torch.maximum(sides[:, None], sides[None, :])


# --- helpers ------------------------------------------------------------------------------------

def ramp(x: Tensor, zero: float, one: float) -> Tensor:
    """0 at ``zero``, 1 at ``one`` (either may be the larger), smoothstep in between.

    Smoothstep rather than linear so that scores saturate gently: a pair just past a threshold
    is not treated as differently from one far past it as a linear ramp's kink would suggest.
    """
    t = ((x - zero) / (one - zero)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def _off_diagonal(matrix: Tensor) -> Tensor:
    """Zero the diagonal: nothing is left of, next to, or before itself."""
    eye = torch.eye(matrix.shape[0], dtype=torch.bool)
    return matrix.masked_fill(eye, 0.0)


def box_gaps(boxes: Tensor) -> Tensor:
    """``[i, j]`` = Euclidean distance between boxes i and j (0 when they touch/overlap)."""
    gap_x = torch.maximum(boxes[None, :, 0] - boxes[:, None, 2],
                          boxes[:, None, 0] - boxes[None, :, 2])
    gap_y = torch.maximum(boxes[None, :, 1] - boxes[:, None, 3],
                          boxes[:, None, 1] - boxes[None, :, 3])
    return torch.hypot(gap_x.clamp(min=0), gap_y.clamp(min=0))


def canonical_predicate(predicate: str) -> str:
    """The canonical name of a predicate: aliases mapped ("beside" -> "next to"), and a verb
    before a geometric predicate dropped ("lying on" -> "on", "parked next to" -> "next to"),
    as the parser's lexicon reads them. Anything else is kept as written ("holding")."""
    text = " ".join(predicate.lower().split())
    text = PREDICATE_ALIASES.get(text, text)
    words = text.split()
    for start in range(1, len(words)):
        if not all(word.endswith(VERB_ENDINGS) for word in words[:start]):
            break
        rest = " ".join(words[start:])
        rest = PREDICATE_ALIASES.get(rest, rest)
        if rest in GEOMETRIC_PREDICATES:
            return rest
    return text


# --- binary relations ---------------------------------------------------------------------------

def directional(geometry: Geometry, axis: int) -> Tensor:
    """``[i, j]``: i is before j along ``axis`` ("left of" for x, "above" for y).

    SynthRef's rule made soft: the centre offset must point along the axis (1 within 45
    degrees, 0 beyond atan(3) = 72 degrees) and i's box must end before j's begins (1 when
    disjoint, 0 when they overlap by half the larger side along the axis).
    """
    boxes, centers = geometry.boxes, geometry.centers
    along = centers[None, :, axis] - centers[:, None, axis]
    across = (centers[None, :, 1 - axis] - centers[:, None, 1 - axis]).abs()
    slope = across / along.clamp(min=EPS)
    angle = torch.where(along > 0, ramp(slope, 3.0, 1.0), torch.zeros_like(along))
    gap = boxes[None, :, axis] - boxes[:, None, axis + 2]
    separated = ramp(gap / geometry.pair_scale(), -0.5, 0.0)
    return _off_diagonal(angle * separated)


def next_to(geometry: Geometry) -> Tensor:
    """1 within 0.6 object sides of each other, 0 beyond 1.5 sides (SynthRef's thresholds)."""
    relative = box_gaps(geometry.boxes) / geometry.pair_scale()
    return _off_diagonal(ramp(relative, 1.5, 0.6))


def far_from(geometry: Geometry) -> Tensor:
    """The complement of "next to" pushed further out: 0 within 1 side, 1 beyond 2.5."""
    relative = box_gaps(geometry.boxes) / geometry.pair_scale()
    return _off_diagonal(ramp(relative, 1.0, 2.5))


def closest_to(geometry: Geometry, members: Tensor) -> Tensor:
    """``[i, j]``: no other member ``k`` (k != i, j) is nearer to j than i is.

    ``prod_k (1 - members[k] * closer[k, i, j])``: the probability that none of the other
    subject members beats i, treating memberships as independent. "Closer" is a ramp over a
    15% distance ratio either way (SynthRef wants the runner-up 1.3x further).
    """
    centers = geometry.centers
    distance = torch.cdist(centers, centers).clamp(min=EPS)  # [a, j]
    ratio = distance[None, :, :] / distance[:, None, :]  # [k, i, j] = d(i, j) / d(k, j)
    closer = ramp(ratio.log(), -math.log(CLOSER_RATIO), math.log(CLOSER_RATIO))
    n = len(geometry)
    index = torch.arange(n)
    excluded = (index[:, None, None] == index[None, :, None]) | (
        index[:, None, None] == index[None, None, :])  # k == i or k == j
    beaten = (members[:, None, None] * closer).masked_fill(excluded, 0.0)
    return _off_diagonal(torch.log1p(-beaten.clamp(max=1 - 1e-6)).sum(0).exp())


def containment(geometry: Geometry) -> Tensor:
    """``[i, j]`` = the fraction of i's area inside j, ramped: 0 below half, 1 above 90%."""
    boxes = geometry.boxes
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return _off_diagonal(ramp(inter / geometry.areas[:, None], 0.5, 0.9))


def resting_on(geometry: Geometry) -> Tensor:
    """"On": inside j (a sticker on a box) or just above it and touching (a cup on a table)."""
    boxes = geometry.boxes
    touching = ramp(box_gaps(boxes) / geometry.pair_scale(), 0.3, 0.0)
    return torch.maximum(containment(geometry), directional(geometry, axis=1) * touching)


def bigger_than(geometry: Geometry) -> Tensor:
    """1 when i's area is >= 1.6x j's (SynthRef's comparative margin), 0 when not bigger."""
    log_ratio = geometry.areas.log()[:, None] - geometry.areas.log()[None, :]
    return _off_diagonal(ramp(log_ratio, 0.0, math.log(1.6)))


#: "i predicate j" matrices of the canonical predicates that need only the boxes.
RELATION_BUILDERS: dict[str, Callable[[Geometry], Tensor]] = {
    "left of": lambda geometry: directional(geometry, 0),
    "right of": lambda geometry: directional(geometry, 0).T,
    "above": lambda geometry: directional(geometry, 1),
    "below": lambda geometry: directional(geometry, 1).T,
    "next to": next_to,
    "far from": far_from,
    "in": containment,
    "inside": containment,
    "on": resting_on,
    "bigger than": bigger_than,
    "smaller than": lambda geometry: bigger_than(geometry).T,
}


def relation(predicate: str, geometry: Geometry, members: Tensor | None = None
             ) -> Tensor | None:
    """``(N, N)`` truth of ``[i, j]`` = "i predicate j", or ``None`` for predicates without
    geometry (:func:`has_geometry`).

    ``members`` (``(N,)``) is the subject's membership, needed only by "closest to"; without it
    every proposal counts as a competitor.
    """
    name = canonical_predicate(predicate)
    if name == "closest to":
        return closest_to(geometry, torch.ones(len(geometry)) if members is None else members)
    builder = RELATION_BUILDERS.get(name)
    return builder(geometry) if builder is not None else None


#: Canonical predicates with geometry: :func:`relation`'s and :func:`between`.
GEOMETRIC_PREDICATES: frozenset[str] = frozenset(
    (*RELATION_BUILDERS, "closest to", "between"))


def has_geometry(predicate: str) -> bool:
    """Whether the predicate's truth follows from the boxes alone ("left of" does; "holding",
    "wearing", "behind" need the pixels)."""
    return canonical_predicate(predicate) in GEOMETRIC_PREDICATES


def between(geometry: Geometry) -> Tensor:
    """``[i, j, k]``: i's centre lies between j's and k's.

    Its projection on the segment j -> k must fall inside it (ramped over the outer 15% of the
    segment) and its distance from the line must stay under a quarter of the segment's length
    (ramped to 0 at a half).
    """
    c = geometry.centers
    segment = c[None, None, :, :] - c[None, :, None, :]  # [., j, k] = c_k - c_j
    offset = c[:, None, None, :] - c[None, :, None, :]  # [i, j, .] = c_i - c_j
    length2 = (segment ** 2).sum(-1).clamp(min=EPS)
    t = (offset * segment).sum(-1) / length2
    cross = (offset[..., 0] * segment[..., 1] - offset[..., 1] * segment[..., 0]).abs()
    off_line = cross / length2  # perpendicular distance / segment length
    inside = ramp(t, 0.0, 0.15) * ramp(t, 1.0, 0.85)
    values = inside * ramp(off_line, 0.5, 0.25)
    n = len(geometry)
    index = torch.arange(n)
    same = ((index[:, None, None] == index[None, :, None])
            | (index[:, None, None] == index[None, None, :])
            | (index[None, :, None] == index[None, None, :]))
    return values.masked_fill(same, 0.0)


# --- counting -----------------------------------------------------------------------------------

def count_distribution(probabilities: Tensor, max_count: int) -> Tensor:
    """Poisson-binomial: ``[i, c]`` = P(exactly c of the independent events ``[i, :]`` happen),
    for ``c = 0 .. max_count``.

    The dynamic program adds one event (column) at a time, vectorised over rows and counts;
    counts above ``max_count`` are dropped, since ordinals only ask about small ones.
    """
    rows, events = probabilities.shape
    dist = torch.zeros(rows, max_count + 1, dtype=probabilities.dtype)
    dist[:, 0] = 1.0
    for j in range(events):
        q = probabilities[:, j:j + 1]
        shifted = torch.cat((torch.zeros(rows, 1, dtype=dist.dtype), dist[:, :-1]), dim=1)
        dist = dist * (1 - q) + shifted * q
    return dist


def balance_distribution(before: Tensor, after: Tensor) -> Tensor:
    """``[i, d + E]`` = P(#before - #after = d) over ``E`` independent three-way events
    (before / after / neither with the given probabilities), d in ``-E .. E``."""
    rows, events = before.shape
    dist = torch.zeros(rows, 2 * events + 1, dtype=before.dtype)
    dist[:, events] = 1.0
    zero = torch.zeros(rows, 1, dtype=dist.dtype)
    for j in range(events):
        b, a = before[:, j:j + 1], after[:, j:j + 1]
        up = torch.cat((zero, dist[:, :-1]), dim=1)  # difference + 1
        down = torch.cat((dist[:, 1:], zero), dim=1)  # difference - 1
        dist = dist * (1 - a - b) + up * b + down * a
    return dist


def precedence(keys: Tensor, scale: Tensor, margin: float) -> Tensor:
    """``[i, j]`` = P(j comes before i) by ``keys`` (smaller first): a ramp over
    ``(key_i - key_j) / scale_ij`` in ``[-margin, margin]``; the diagonal is 0."""
    return _off_diagonal(ramp((keys[:, None] - keys[None, :]) / scale, -margin, margin))


def _position_order(geometry: Geometry, direction: str) -> Tensor:
    axis, sign = _AXIS_SIGN[direction]
    return precedence(sign * geometry.centers[:, axis], geometry.pair_scale(), ORDER_MARGIN)


def _height_order(geometry: Geometry, tallest: bool) -> Tensor:
    heights = (geometry.boxes[:, 3] - geometry.boxes[:, 1]).clamp(min=1.0).log()
    keys = -heights if tallest else heights
    return precedence(keys, torch.ones(len(geometry), len(geometry)), SIZE_ORDER_MARGIN)


def _size_order(geometry: Geometry, largest: bool) -> Tensor:
    keys = -geometry.areas.log() if largest else geometry.areas.log()
    return precedence(keys, torch.ones(len(geometry), len(geometry)), SIZE_ORDER_MARGIN)


def ordinal(members: Tensor, order: Tensor, rank: int) -> Tensor:
    """P(exactly ``rank - 1`` other members come before i | i is a member).

    ``order[i, j]`` = P(j before i); j counts when it is a member *and* before i, so the count
    is Poisson-binomial with probabilities ``members[j] * order[i, j]``. ``rank=1`` is the
    superlative: ``prod_j (1 - members[j] * order[i, j])``.
    """
    return count_distribution(members[None, :] * order, rank - 1)[:, rank - 1]


def middle(members: Tensor, geometry: Geometry) -> Tensor:
    """P(as many members before i as after it | i is a member), with half credit for a
    difference of one (the two central ones of an even row).

    The row's axis is the one along which the members' centres spread most (membership
    weighted), as SynthRef takes the axis of larger extent.
    """
    weights = members / members.sum().clamp(min=EPS)
    centers = geometry.centers
    mean = (weights[:, None] * centers).sum(0)
    spread = (weights[:, None] * (centers - mean) ** 2).sum(0)
    axis = int(spread[1] > spread[0])
    order = _position_order(geometry, ("left", "top")[axis])  # [i, j] = P(j before i)
    others = members[None, :] * _off_diagonal(torch.ones_like(order))
    before = others * order
    after = others - before
    dist = balance_distribution(before, after)
    centre = dist.shape[1] // 2
    if dist.shape[1] < 3:  # no proposals at all
        return dist[:, centre]
    return dist[:, centre] + 0.5 * (dist[:, centre - 1] + dist[:, centre + 1])


def _size_class_order(geometry: Geometry, largest: bool) -> Tensor:
    """``[i, j]`` = P(j is a size class beyond i): bigger (``largest``) or smaller."""
    log_side = 0.5 * geometry.areas.clamp(min=EPS).log()
    beyond = log_side[None, :] - log_side[:, None]
    return _off_diagonal(ramp(beyond if largest else -beyond, *SIZE_CLASS_GAP))


def size_class(word: str, members: Tensor, geometry: Geometry) -> Tensor:
    """P(i is of the size class ``word`` names, among the members): "large" / "small" when no
    member is clearly bigger / smaller, "medium" by :func:`medium`."""
    if word == "medium":
        return medium(members, geometry)
    return ordinal(members, _size_class_order(geometry, largest=word == "large"), 1)


def medium(members: Tensor, geometry: Geometry) -> Tensor:
    """"The medium star": P(a member is clearly bigger than i) * P(one is clearly smaller), the
    middle of three or more; where that says nothing (two members: no one is in the middle),
    half credit for a box of medium size relative to the image (:data:`MEDIUM_SIDE_SHARE`)."""
    between = (1 - size_class("large", members, geometry)) * (
        1 - size_class("small", members, geometry))
    share = (geometry.areas / max(geometry.width * geometry.height, EPS)).sqrt()
    (low_zero, low_one), (high_zero, high_one) = MEDIUM_SIDE_SHARE
    prior = ramp(share, low_zero, low_one) * ramp(share, high_zero, high_one)
    return between + (1 - between) * 0.5 * prior


def band(position: Tensor) -> Tensor:
    """Membership of an axis' outer band (``position`` in [0, 1] from that side): 1 in the
    outer third, 0 past 0.55 (SynthRef's TRUE / FALSE limits), smooth between."""
    return ramp(position, 0.55, 1 / 3)


def region(sides: tuple[str, ...], geometry: Geometry) -> Tensor:
    fx = geometry.centers[:, 0] / max(geometry.width, EPS)
    fy = geometry.centers[:, 1] / max(geometry.height, EPS)
    positions = {"left": fx, "right": 1.0 - fx, "top": fy, "bottom": 1.0 - fy}
    values = torch.ones(len(geometry))
    for side in sides:
        values = values * band(positions[side])
    return values


def parse_ordinal(modifier: str) -> tuple[int, str] | None:
    """``"second from the left"`` -> ``(2, "left")``; ``None`` when not an ordinal."""
    match = _ORDINAL.match(modifier)
    if match is None or match.group(1) not in ORDINAL_WORDS:
        return None
    return ORDINAL_WORDS[match.group(1)], match.group(2)


def modifier(name: str, geometry: Geometry, members: Tensor) -> Tensor | None:
    """``g(i)`` for one spatial modifier of an entity (see the module docstring), or ``None``
    when the modifier is not one this module knows."""
    text = " ".join(name.lower().split())
    if text in SUPERLATIVES:
        return ordinal(members, _position_order(geometry, SUPERLATIVES[text]), 1)
    if text in SIZE_SUPERLATIVES:
        return ordinal(members, _size_order(geometry, SIZE_SUPERLATIVES[text]), 1)
    if text in HEIGHT_SUPERLATIVES:
        return ordinal(members, _height_order(geometry, HEIGHT_SUPERLATIVES[text]), 1)
    if text in REGIONS:
        return region(REGIONS[text], geometry)
    if text in ("middle", "center", "centre", "in the middle", "in the center"):
        return middle(members, geometry)
    parsed = parse_ordinal(text)
    if parsed is not None:
        rank, direction = parsed
        return ordinal(members, _position_order(geometry, direction), rank)
    return None
