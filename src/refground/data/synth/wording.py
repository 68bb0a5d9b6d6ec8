"""The standard English wording of SynthRef's logical forms, with their gold scene graphs.

A form (:mod:`~refground.data.synth.logical_forms`) is worded from templates with synonyms,
articles and an optional "that is", and turned into its gold :class:`~refground.types.SceneGraph`
at the same time. Graph conventions:

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

:func:`noun_phrase` and :func:`pick` are shared with :mod:`~refground.data.synth.paraphrase`,
the other wordings of the same forms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from refground import vocabulary
from refground.data.synth.logical_forms import (
    Attr,
    Compare,
    Extreme,
    LogicalForm,
    Middle,
    Ordinal,
    Region,
    Relate,
)
from refground.types import Entity, Relation, SceneGraph

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


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, uniformly, from one ``rng.integers`` draw (drawing otherwise would
    change every SynthRef sentence after it)."""
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


def noun_phrase(attr: Attr, rng: np.random.Generator, determiner: str,
                 modifiers: Sequence[str] = (), plural: bool = False
                 ) -> tuple[str, str, tuple[str, ...]]:
    """(text, head, attribute words) of "[det] [modifiers] [size] [colour] head".

    Without a shape the head is a generic noun ("object", "thing"...; "one" too when a word
    and a singular determiner come before it: "the red one").
    """
    words: list[str] = []
    if attr.size is not None:
        words.append(pick(rng, SIZE_WORDS[attr.size]))
    if attr.color is not None:
        words.append(attr.color)
    if attr.shape is not None:
        head = attr.shape
    else:
        generic = GENERIC_HEADS + (("one",) if words and determiner and not plural else ())
        head = pick(rng, generic)
    noun = _plural(head) if plural else head
    text = " ".join(w for w in (determiner, *modifiers, *words, noun) if w)
    return text, head, tuple(words)


def _entity(attr: Attr, rng: np.random.Generator, determiner: str,
            modifiers: Sequence[str] = (), spatial: Sequence[str] = ()) -> Entity:
    text, head, words = noun_phrase(attr, rng, determiner, modifiers)
    return Entity(span=text, head=head, attributes=words, spatial=tuple(spatial))


def _word_extreme(form: Extreme, rng: np.random.Generator, det: str,
                  allow_postmodifier: bool = True) -> tuple[str, Entity]:
    spatial = (CANONICAL_SUPERLATIVE[form.direction],)
    if allow_postmodifier and rng.random() < 0.35:
        entity = _entity(form.base, rng, det, spatial=spatial)
        return f"{entity.span} {pick(rng, SUPERLATIVE_POSTMODIFIERS[form.direction])}", entity
    modifier = pick(rng, SUPERLATIVES[form.direction])
    entity = _entity(form.base, rng, det, (modifier,), spatial)
    return entity.span, entity


def _word_region(form: Region, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    phrases = REGION_PHRASES[form.region]
    entity = _entity(form.base, rng, det, spatial=(phrases[0],))
    return f"{entity.span} {pick(rng, phrases)}", entity


def _word_ordinal(form: Ordinal, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    origin = f"from the {form.direction}"
    spatial = (f"{CANONICAL_ORDINAL[form.rank]} {origin}",)
    entity = _entity(form.base, rng, det, (pick(rng, ORDINAL_WORDS[form.rank]),), spatial)
    return f"{entity.span} {origin}", entity


def _word_middle(form: Middle, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    if rng.random() < 0.5:
        entity = _entity(form.base, rng, det, ("middle",), ("middle",))
        return entity.span, entity
    entity = _entity(form.base, rng, det, spatial=("middle",))
    return f"{entity.span} in the middle", entity


def _word_compare(form: Compare, rng: np.random.Generator, det: str) -> tuple[str, Entity]:
    word = pick(rng, COMPARATIVE_WORDS[form.bigger])
    spatial = ("bigger" if form.bigger else "smaller",)
    if rng.random() < 0.5:
        entity = _entity(form.base, rng, det, (word,), spatial)
        return entity.span, entity
    group, head, words = noun_phrase(form.base, rng, "the two" if det else "two", plural=True)
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
    connector = pick(rng, CONNECTORS) if wording.article else ""
    phrase = pick(rng, PREDICATE_PHRASES[form.predicate])
    text = " ".join(w for w in (subject.span, connector, phrase, anchor_text) if w)
    graph = SceneGraph((subject, anchor), (Relation(0, form.predicate, 1),))
    return text, graph


#: Form type -> its worder, for the forms that describe one entity with an operator.
_ENTITY_WORDERS: dict[type, Callable[..., tuple[str, Entity]]] = {
    Extreme: _word_extreme, Region: _word_region, Ordinal: _word_ordinal,
    Middle: _word_middle, Compare: _word_compare,
}


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
            text, entity = _ENTITY_WORDERS[type(form)](form, rng, det)
            graph = SceneGraph((entity,))
    if rng.random() < 0.2:
        text = text[:1].upper() + text[1:]
    return text, graph
