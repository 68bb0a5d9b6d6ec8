"""The canonical vocabulary of scene graphs: the one place the spatial words are written.

A graph says "leftmost" whatever the sentence said ("furthest to the left", "left-most", "on
the far left"). The SynthRef generator writes its gold graphs in these words, the parser
rewrites free text into them, and graph-resolve's geometry reads them; all three import them
from here, so they cannot drift apart.
"""

from __future__ import annotations

DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
#: Direction -> the superlative of "furthest towards it".
SUPERLATIVES: dict[str, str] = {
    "left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost",
}
#: Image region -> its canonical phrase.
REGIONS: dict[str, str] = {
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "top left": "in the top left", "top right": "in the top right",
    "bottom left": "in the bottom left", "bottom right": "in the bottom right",
}
MIDDLE = "middle"
CLOSEST = "closest"  # unary: closest to the viewer
FARTHEST = "farthest"  # unary: farthest from the viewer, beyond SynthRef
LARGEST, SMALLEST = "largest", "smallest"
TALLEST, SHORTEST = "tallest", "shortest"  # box height, beyond SynthRef
COMPARATIVES: dict[str, str] = {"bigger": "bigger", "smaller": "smaller"}
DEPTH: dict[str, str] = {"front": "in front", "back": "in the back"}  # beyond SynthRef
ORDINALS: dict[int, str] = {
    1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh",
    8: "eighth", 9: "ninth", 10: "tenth",
}
#: "the second dog" names no origin; reading order (left to right) is the default reading.
DEFAULT_ORDINAL_DIRECTION = "left"

SPATIAL_VALUES: frozenset[str] = frozenset(
    (*SUPERLATIVES.values(), *REGIONS.values(), MIDDLE, CLOSEST, LARGEST, SMALLEST,
     *COMPARATIVES.values(), *DEPTH.values(), TALLEST, SHORTEST, FARTHEST))

#: SynthRef's relation predicates, the ones with geometry of their own; the parser keeps
#: others as written ("holding").
SPATIAL_PREDICATES: tuple[str, ...] = (
    "left of", "right of", "above", "below", "closest to", "next to")

#: The nouns SynthRef uses when an expression names no shape.
GENERIC_NOUNS: tuple[str, ...] = ("object", "shape", "thing")
#: Heads that name no category ("the one on the left"); with no attribute either, every
#: candidate is a member.
GENERIC_HEADS: tuple[str, ...] = (*GENERIC_NOUNS, "one")
#: The same, in any number and with "item": what a reader of graphs treats as generic.
GENERIC_HEAD_WORDS: frozenset[str] = frozenset(
    (*GENERIC_HEADS, "item", *(f"{word}s" for word in (*GENERIC_HEADS, "item"))))
IMPLICIT_HEAD = "object"  # head of a noun phrase that names no noun ("the leftmost", "left")


def ordinal_spatial(rank: int, direction: str) -> str:
    """The canonical value of "<rank> from the <direction>": the first is the superlative."""
    if rank == 1:
        return SUPERLATIVES[direction]
    return f"{ORDINALS[rank]} from the {direction}"
