"""What a scorer or a text encoder is asked about one entity of a scene graph."""

from __future__ import annotations

from refground.language.lexicon import DETERMINERS
from refground.language.text import singular
from refground.types import Entity


def entity_phrase(entity: Entity) -> str:
    """The entity as one singular noun phrase with its attributes before the head.

    The span as written, when it is one ("the big red circle"). A phrase whose attributes come
    after its head ("the circle that is red", "the man in blue") is put in the usual order,
    "the red circle": the span stops at the head, and CLIP-style encoders know noun phrases,
    not clauses. A group named in the plural ("of the red circles, the one on the left", "the
    bigger of the two circles") becomes "the red circle": a box is scored one at a time, and
    the entity's spatial modifiers say which member it is.
    """
    noun = " ".join((*entity.attributes, entity.head)).strip()
    span = entity.span.strip()
    words = span.lower().split()
    plural = bool(words) and words[-1] != entity.head and singular(words[-1]) == entity.head
    if span and not plural and all(attribute in words for attribute in entity.attributes):
        return span
    determiner = ["the"] if plural else words[:1] if words and words[0] in DETERMINERS else []
    return " ".join((*determiner, noun)) if noun else span
