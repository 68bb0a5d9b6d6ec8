"""Other wordings of SynthRef's logical forms: the same referents, said differently.

SynthRef's sentences come from one set of templates
(:func:`~refground.data.synth.wording.word`), so a method can score well by fitting that
grammar. ``refground synth --phrasing varied`` keeps every image, referent and logical form of
the standard dataset and re-words each sentence here: relative clauses ("the circle that is
red"), "colored", "of the squares, the one on the left", "right-most", "closest to the top",
"located to the left of", commands ("find the ..."). Scores on the two datasets are then
paired, sentence for sentence; the gap is what the grammar, not the scene, costs a method.

Every wording here means what the form means (a "that is second from the left" is the same
ordinal), and the gold graph carries the canonical values of the standard wording, so parse
quality can be measured on it too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
from refground.data.synth.wording import (
    CANONICAL_ORDINAL,
    CANONICAL_SUPERLATIVE,
    ORDINAL_WORDS,
    REGION_PHRASES,
    SIZE_WORDS,
    noun_phrase,
    pick,
)
from refground.types import Entity, Relation, SceneGraph

PHRASINGS: tuple[str, ...] = ("standard", "varied")
COMMANDS = ("find", "click on", "select", "locate", "point to", "show me", "pick")
COMMAND_SHARE = 0.2
RELATIVE = ("that is", "which is")
HYPHENATED_SUPERLATIVES = {
    "left": ("left-most",), "right": ("right-most",), "top": ("top-most", "uppermost"),
    "bottom": ("bottom-most", "lowermost"),
}
VARIED_POSTMODIFIERS = {
    "left": ("furthest to the left", "farthest left", "closest to the left edge",
             "all the way on the left"),
    "right": ("furthest to the right", "farthest right", "closest to the right edge",
              "all the way on the right"),
    "top": ("closest to the top", "nearest the top", "furthest up", "at the very top"),
    "bottom": ("closest to the bottom", "nearest the bottom", "furthest down",
               "at the very bottom"),
}
FRAMES = ("image", "picture", "photo")
#: Placing verbs before a relation ("the circle located left of the star"), where the
#: predicate carries the meaning. The parser knows each as a verb: a posture verb of
#: :data:`~refground.language.lexicon.POSTURE_VERBS` or an irregular participle.
PLACED = ("located", "positioned", "placed", "sitting", "situated", "found")
#: The ones also said before a region ("the circle placed on the left"): the parser reads a
#: verb there as an attribute of the noun unless it is a posture verb ("found" is not one).
PLACED_BEFORE_REGIONS = PLACED[:3]
VARIED_PREDICATES = {
    "left of": ("on the left of", "to the left of", "left of"),
    "right of": ("on the right of", "to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "underneath", "beneath"),
    "closest to": ("closest to", "nearest to"),
    "next to": ("next to", "adjacent to", "right beside", "alongside"),
}


def _entity(attr: Attr, rng: np.random.Generator, spatial: tuple[str, ...] = (),
            modifiers: tuple[str, ...] = ()) -> Entity:
    text, head, words = noun_phrase(attr, rng, "the", modifiers)
    return Entity(span=text, head=head, attributes=words, spatial=spatial)


def _group(attr: Attr, rng: np.random.Generator, count: str = ""
           ) -> tuple[str, str, tuple[str, ...]]:
    """"the (two) red circles": the plural phrase a selection is made from."""
    return noun_phrase(attr, rng, f"the {count}".strip(), plural=True)


def _of_group(attr: Attr, rng: np.random.Generator, chosen: str, spatial: tuple[str, ...],
              count: str = "") -> tuple[str, Entity]:
    """"of the red circles, the one on the left": one entity, the group's head."""
    group, head, words = _group(attr, rng, count)
    return f"of {group}, {chosen}", Entity(span=group, head=head, attributes=words,
                                           spatial=spatial)


def _word_attr(form: Attr, rng: np.random.Generator) -> tuple[str, Entity]:
    if form.color is not None and form.shape is not None and rng.random() < 0.5:
        entity = _entity(Attr(form.shape, None, form.size), rng)
        entity = Entity(entity.span, entity.head, (*entity.attributes, form.color))
        ending = pick(rng, (f"{pick(rng, RELATIVE)} {form.color}", f"colored {form.color}",
                             f"in {form.color}"))
        return f"{entity.span} {ending}", entity
    if form.color is not None:
        size = (pick(rng, SIZE_WORDS[form.size]),) if form.size else ()
        head_text, head, _ = noun_phrase(Attr(form.shape), rng, "")
        span = " ".join(("the", *size, f"{form.color} colored", head_text))
        return span, Entity(span, head, (*size, form.color))
    entity = _entity(form, rng)
    return entity.span, entity


def _word_extreme(form: Extreme, rng: np.random.Generator) -> tuple[str, Entity]:
    spatial = (CANONICAL_SUPERLATIVE[form.direction],)
    style = int(rng.integers(4))
    if style == 0:
        entity = _entity(form.base, rng, spatial,
                         (pick(rng, HYPHENATED_SUPERLATIVES[form.direction]),))
        return entity.span, entity
    post = pick(rng, VARIED_POSTMODIFIERS[form.direction])
    if style == 1:
        entity = _entity(form.base, rng, spatial)
        return f"{entity.span} {post}", entity
    if style == 2:
        entity = _entity(form.base, rng, spatial)
        return f"{entity.span} {pick(rng, RELATIVE)} {post}", entity
    chosen = pick(rng, (f"the one {post}", f"the {CANONICAL_SUPERLATIVE[form.direction]} one"))
    return _of_group(form.base, rng, chosen, spatial)


def _word_region(form: Region, rng: np.random.Generator) -> tuple[str, Entity]:
    canonical = REGION_PHRASES[form.region][0]
    entity = _entity(form.base, rng, (canonical,))
    style = int(rng.integers(3))
    if style == 0:
        verb = pick(rng, (*RELATIVE, *PLACED_BEFORE_REGIONS))
        ending = f"{verb} {pick(rng, REGION_PHRASES[form.region])}"
    elif style == 1:
        where = (f"on the {form.region} side" if form.region in ("left", "right")
                 else f"in the {form.region} corner" if " " in form.region
                 else f"at the {form.region}")
        ending = f"{where} of the {pick(rng, FRAMES)}"
    else:
        text, entity = _of_group(form.base, rng,
                                 f"the one {pick(rng, REGION_PHRASES[form.region])}",
                                 (canonical,))
        return text, entity
    return f"{entity.span} {ending}", entity


def _word_ordinal(form: Ordinal, rng: np.random.Generator) -> tuple[str, Entity]:
    rank = CANONICAL_ORDINAL[form.rank]
    spatial = (f"{rank} from the {form.direction}",)
    style = int(rng.integers(3))
    if style == 0:
        entity = _entity(form.base, rng, spatial)
        return f"{entity.span} {pick(rng, RELATIVE)} {rank} from the {form.direction}", entity
    if style == 1:
        entity = _entity(form.base, rng, spatial, (pick(rng, ORDINAL_WORDS[form.rank]),))
        return f"{entity.span} counting from the {form.direction}", entity
    return _of_group(form.base, rng, f"the {rank} one from the {form.direction}", spatial)


def _word_middle(form: Middle, rng: np.random.Generator) -> tuple[str, Entity]:
    style = int(rng.integers(3))
    if style == 0:
        entity = _entity(form.base, rng, ("middle",))
        return f"{entity.span} in the center", entity
    if style == 1:
        entity = _entity(form.base, rng, ("middle",), (pick(rng, ("center", "central")),))
        return entity.span, entity
    return _of_group(form.base, rng, "the one in the middle", ("middle",), "three")


def _word_compare(form: Compare, rng: np.random.Generator) -> tuple[str, Entity]:
    word = "bigger" if form.bigger else "smaller"
    if rng.random() < 0.5:
        entity = _entity(form.base, rng, (word,))
        return f"{entity.span} {pick(rng, RELATIVE)} {word}", entity
    chosen = pick(rng, (f"the {word} one", f"the one that is {word}"))
    return _of_group(form.base, rng, chosen, (word,), "two")


def _word_anchor(anchor: Attr | Extreme, rng: np.random.Generator) -> tuple[str, Entity]:
    if isinstance(anchor, Extreme):
        spatial = (CANONICAL_SUPERLATIVE[anchor.direction],)
        words = (*HYPHENATED_SUPERLATIVES[anchor.direction],
                 CANONICAL_SUPERLATIVE[anchor.direction])
        entity = _entity(anchor.base, rng, spatial, (pick(rng, words),))
        return entity.span, entity
    entity = _entity(anchor, rng)
    return entity.span, entity


def _word_relation(form: Relate, rng: np.random.Generator) -> tuple[str, SceneGraph]:
    subject = _entity(form.subject, rng)
    anchor_text, anchor = _word_anchor(form.anchor, rng)
    verb = pick(rng, (*RELATIVE, *PLACED, f"{pick(rng, RELATIVE)} {pick(rng, PLACED)}"))
    phrase = pick(rng, VARIED_PREDICATES[form.predicate])
    text = f"{subject.span} {verb} {phrase} {anchor_text}"
    return text, SceneGraph((subject, anchor), (Relation(0, form.predicate, 1),))


_WORDERS: dict[type, Callable[..., tuple[str, Entity]]] = {
    Attr: _word_attr, Extreme: _word_extreme, Region: _word_region, Ordinal: _word_ordinal,
    Middle: _word_middle, Compare: _word_compare,
}


def paraphrase(form: LogicalForm, rng: np.random.Generator) -> tuple[str, SceneGraph]:
    """A varied English wording of ``form`` and its gold scene graph."""
    if isinstance(form, Relate):
        text, graph = _word_relation(form, rng)
    else:
        text, entity = _WORDERS[type(form)](form, rng)
        graph = SceneGraph((entity,))
    if rng.random() < COMMAND_SHARE:
        text = f"{pick(rng, COMMANDS)} {text}"
    return text, graph
