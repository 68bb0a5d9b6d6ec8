"""Tokens with word classes -> :class:`~refground.types.SceneGraph`, the same way for every backend.

A backend only says what each word is (determiner, adjective, noun, verb, preposition, ...),
and optionally which noun a verb's object hangs off. Everything
that makes a *referring* expression's graph -- the lexicon's spatial phrases, ordinals and
their origin, "the bigger of the two circles", connectors, chained relations, frame nouns
("on the left of the picture") -- is decided here, so the spaCy and rule backends agree on it.

Conventions (those of SynthRef's gold graphs):

* entity 0 is the first noun phrase (the referent); an expression that starts with a relation
  ("left of the dog") gets an implicit referent with head ``object`` and an empty span;
* a noun phrase that names no noun ("the leftmost", "left", "the second from the right") has
  head ``object`` (:data:`~refground.vocabulary.IMPLICIT_HEAD`);
* a postmodifier ("on the left", "from the top") belongs to the nearest noun phrase before it,
  except that a possession or clothing object hands it on to its owner ("the lady wearing a
  hat on the left" is on the left); before a noun it is that noun's ("the sandwich on the left
  plate": the plate is on the left);
* a relation's subject is the nearest noun phrase before it, except that a possession or
  clothing object hands the relation on to its owner ("man in red shirt next to the woman":
  the man is next to the woman) -- not a body part ("a frisbee in its mouth"), nor a held
  thing to a placing relation ("holding the umbrella over the woman"); a backend may
  override this for free-form verbs;
* "held by the woman" and "the umbrella the woman is holding" make the woman the subject;
* commands ("find", "click on", "select") that open an expression are dropped;
* "of the three dogs, the one in the middle" is one phrase, the dog in the middle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from refground.language.lexicon import (
    ADJECTIVES,
    BODY_PARTS,
    CLIMBING_PREDICATES,
    COLOURS,
    COMPOUND_NOUNS,
    DOMINANT_PREDICATES,
    FRAME_NOUNS,
    FRAME_REGIONS,
    HANDLING_PREDICATES,
    LOCATIVE_PREDICATES,
    NOUN_ADJECTIVES,
    POSTURE_VERBS,
)
from refground.language.phrases import PhraseMatch, match_phrases, phrase_table
from refground.types import Entity, Relation, SceneGraph
from refground.vocabulary import (
    CLOSEST,
    DEFAULT_ORDINAL_DIRECTION,
    IMPLICIT_HEAD,
    ORDINALS,
    ordinal_spatial,
)

# Word classes (what rules.rule_class / spacy_backend.spacy_class assign) that modify or start
# a noun phrase. "part" is a participle whose role depends on position
# ("the standing man" vs "the man standing"); "that" is a determiner or a connector.
_MODIFIERS = frozenset(("det", "num", "adj", "intens", "that", "part"))
_NP_STARTS = frozenset(("det", "num", "adj", "noun", "that", "part"))
_ORDINAL_MARK = "\0ordinal"
_NOT_A_PHRASE = "\0noun"  # what phrase matching sees of a word made a noun by its context
# Relations that stay with a held thing instead of climbing to its holder ("holding X over Y").
_PLACING_PREDICATES = frozenset(("above", "below", "on", "in"))


@dataclass(frozen=True)
class Token:
    """One word as a backend sees it: normalised text, base form (for heads) and word class."""

    text: str
    lemma: str
    cls: str


@dataclass(eq=False)
class _Phrase:
    """A noun phrase being built."""

    tokens: list[int] = field(default_factory=list)  # span order, up to the head
    head: int | None = None
    attributes: list[str] = field(default_factory=list)
    spatial: list[str] = field(default_factory=list)
    trailing: list[str] = field(default_factory=list)  # postmodifiers: "on the left" after it
    ordinal: int | None = None
    origin: str | None = None
    last_noun: bool = False
    prefix: list[int] = field(default_factory=list)  # "the bigger of" in an of-group
    premodified: bool = False  # a spatial word before the (missing) head: "the leftmost"

    @property
    def bare(self) -> bool:
        """Only modifiers before it ("red" in "man in red", "red on the right" in "woman in
        red on the right"): no noun and no spatial premodifier."""
        return self.head is None and not self.premodified


@dataclass(eq=False)
class _Rel:
    parts: list[tuple[str, str | None]] = field(default_factory=list)  # (surface, canonical)
    tokens: list[int] = field(default_factory=list)
    passive: bool = False  # "held by": the object is the one doing it

    @property
    def predicate(self) -> str:
        for _, canonical in self.parts:
            if canonical in DOMINANT_PREDICATES:
                return canonical
        named = [canonical for _, canonical in self.parts if canonical]
        if (len(named) == 1 and named[0] in LOCATIVE_PREDICATES
                and all(canonical or surface in POSTURE_VERBS
                        for surface, canonical in self.parts)):
            return named[0]  # "sleeping on" -> on
        if len(self.parts) == 1:
            surface, canonical = self.parts[0]
            return canonical or surface
        return " ".join(surface for surface, _ in self.parts)

    @property
    def free(self) -> bool:
        """No geometric predicate in it: a backend's dependency hint may choose the subject."""
        return not any(canonical in DOMINANT_PREDICATES for _, canonical in self.parts)


@dataclass(eq=False)
class _Conj:
    pass


@dataclass(eq=False)
class _Conn:
    pass


_Item = _Phrase | _Rel | _Conj | _Conn


def build_graph(tokens: Sequence[Token], subject_hints: Mapping[int, int] | None = None
                ) -> SceneGraph:
    """The scene graph of one expression's tokens.

    ``subject_hints`` maps a token index (an object's head) to the token index of its subject,
    from a dependency parse; it is used only for relations without a geometric predicate.
    """
    if not tokens:
        return SceneGraph()
    tokens, nouns = _nouns_by_context(tokens)
    items = _group(tokens, nouns)
    items = _verb_adjectives(_merge_of_groups(items, tokens), tokens)
    return _assemble(items, tokens, subject_hints or {})


# --- words whose class depends on their neighbours ----------------------------------------------

def _nouns_by_context(tokens: Sequence[Token]) -> tuple[list[Token], frozenset[int]]:
    """Tokens with the nouns their neighbours reveal made nouns, and the indices so made.

    "traffic light" and "stop sign" are compounds (:data:`COMPOUND_NOUNS`); "the orange in
    the corner" and "the half of the sandwich" name an orange and a half, where "the orange
    cup" does not; "the woman in the black top" wears a top. Those words are then kept out of
    phrase matching, so "top" is not read as "topmost".
    """
    fixed = list(tokens)
    nouns: set[int] = set()
    in_phrases = {index for match in match_phrases([t.text for t in tokens])
                  for index in range(match.start, match.end)}

    def cls(index: int) -> str | None:
        """The word's class; None past the ends and inside a lexicon phrase ("in", "next
        to"), whose words a backend may class as anything."""
        if not 0 <= index < len(fixed) or index in in_phrases:
            return None
        return fixed[index].cls

    def text(index: int) -> str | None:
        return fixed[index].text if 0 <= index < len(fixed) else None

    for index, token in enumerate(tokens):
        word = token.text
        after = next((i for i in range(index + 1, len(tokens)) if tokens[i].cls != "skip"),
                     len(tokens))
        if (text(index - 1), word) in COMPOUND_NOUNS:
            nouns.update((index - 1, index))
        elif word in NOUN_ADJECTIVES and cls(after) not in ("noun", "adj", "num"):
            previous = text(index - 1)
            if word == "half":
                noun = text(after) == "of"
            elif word == "top":
                noun = previous in COLOURS
            else:  # a colour that is also a thing: the referent, or after a determiner
                noun = index == 0 or cls(index - 1) == "det"
            if noun:
                nouns.add(index)
    for index in nouns:
        token = fixed[index]
        fixed[index] = Token(token.text, token.lemma, "noun")
    return fixed, frozenset(nouns)


# --- grouping words into noun phrases and relation phrases --------------------------------------

def _units(tokens: Sequence[Token], nouns: frozenset[int] = frozenset()
           ) -> list[PhraseMatch | int]:
    """Phrase matches and the single tokens between them, in order."""
    units: list[PhraseMatch | int] = []
    position = 0
    words = [_NOT_A_PHRASE if i in nouns else t.text for i, t in enumerate(tokens)]
    for match in match_phrases(words):
        units.extend(range(position, match.start))
        units.append(match)
        position = match.end
    units.extend(range(position, len(tokens)))
    return units


def _starts_phrase(unit: PhraseMatch | int | None, tokens: Sequence[Token]) -> bool:
    if unit is None:
        return False
    if isinstance(unit, PhraseMatch):
        return unit.kind in ("spatial", "ordinal")
    return tokens[unit].cls in _NP_STARTS


class _Grouper:
    """Left-to-right state machine: the open noun phrase and the items so far."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = tokens
        self.items: list[_Item] = []
        self.open: _Phrase | None = None

    def close(self) -> None:
        self.open = None

    def start(self) -> _Phrase:
        phrase = _Phrase()
        self.items.append(phrase)
        self.open = phrase
        return phrase

    def target(self) -> _Phrase | None:
        """The phrase a postmodifier belongs to: the last one, unless a relation followed it."""
        for item in reversed(self.items):
            if isinstance(item, _Phrase):
                return item
            if not isinstance(item, _Conn):
                return None
        return None

    def relation(self, surface: str, canonical: str | None, indices: Sequence[int]) -> None:
        self.close()
        if not self.items or not isinstance(self.items[-1], _Rel):
            self.items.append(_Rel())
        rel = self.items[-1]
        assert isinstance(rel, _Rel)
        rel.parts.append((surface, canonical))
        rel.tokens.extend(indices)

    def spatial(self, match: PhraseMatch, value: str | int, ordinal: bool = False) -> None:
        indices = list(range(match.start, match.end))
        if self.open is not None and self.open.head is None:
            phrase = self.open  # premodifier: "the leftmost dog"
            phrase.tokens.extend(indices)
            phrase.premodified = True
        elif (target := self.target()) is not None:
            phrase = target  # postmodifier: "the dog on the left"
            self.close()
            if not ordinal:
                phrase.trailing.append(str(value))
                return
        else:
            phrase = self.start()  # a phrase that starts with it: "leftmost dog", "left"
            phrase.tokens.extend(indices)
            phrase.premodified = True
        if ordinal:
            phrase.ordinal = int(value)
            phrase.spatial.append(_ORDINAL_MARK)
        else:
            phrase.spatial.append(str(value))

    def match(self, match: PhraseMatch, following: PhraseMatch | int | None) -> None:
        words = " ".join(t.text for t in self.tokens[match.start:match.end])
        indices = list(range(match.start, match.end))
        if match.kind == "closest":
            after_phrase = self.target() is not None or self._after_verb() is not None
            binary = (self.open is None or self.open.head is not None) \
                and after_phrase and _starts_phrase(following, self.tokens)
            if binary:
                self.relation(words, match.value, indices)
            else:
                self.spatial(match, CLOSEST)
        elif match.kind == "spatial":
            self.spatial(match, match.value)
        elif match.kind == "post" and (split := self._relation_prefix(match, following)):
            # "the sandwich on the left plate", "the circle closest to the top star": the
            # leading words relate it to the noun that the rest modifies
            lead = tuple(t.text for t in self.tokens[match.start:match.start + split])
            self.relation(" ".join(lead), phrase_table()[lead][1], indices[:split])
            phrase = self.start()
            phrase.tokens.extend(indices[split:])
            phrase.premodified = True
            phrase.spatial.append(match.value)
        elif match.kind == "post":
            self._verb_as_attribute()
            target = self.target()
            if target is None:  # nothing before it: "on the left" is the whole expression
                target = self.start()
                target.tokens.extend(indices)
                target.spatial.append(match.value)
            else:
                target.trailing.append(match.value)
            self.close()
        elif match.kind == "imperative":
            if self.items:  # not a command where it opens no expression: read word by word
                for index in indices:
                    self.word(index)
        elif match.kind == "passive":
            self.relation(words, match.value, indices)
            rel = self.items[-1]
            assert isinstance(rel, _Rel)
            rel.passive = True
        elif match.kind == "ordinal":
            self.spatial(match, match.value, ordinal=True)
        elif match.kind == "origin":
            target = self.target()
            if target is None:
                target = self.start()
                target.tokens.extend(indices)
                target.premodified = True
            target.origin = match.value
            self.close()
        elif match.kind == "rel":
            self.relation(words, match.value, indices)
        else:  # "conn"
            self.connector()

    def _after_verb(self) -> _Rel | None:
        """The relation phrase just made of verbs alone after a noun phrase ("the circle
        placed", "a person skiing"), if the items end so."""
        before = [item for item in self.items[:-1] if not isinstance(item, _Conn)]
        if (self.items and isinstance(rel := self.items[-1], _Rel)
                and before and isinstance(before[-1], _Phrase)
                and not any(canonical for _, canonical in rel.parts)):
            return rel
        return None

    def _verb_as_attribute(self) -> None:
        """"a person skiing on the left": a verb with no object before a position describes
        the phrase before it, which the position then belongs to ("placed on the left" only
        places it)."""
        if (rel := self._after_verb()) is not None:
            self.items.pop()
            owner = next(item for item in reversed(self.items) if isinstance(item, _Phrase))
            if not all(surface in POSTURE_VERBS for surface, _ in rel.parts):
                owner.attributes.append(rel.predicate)

    def _relation_prefix(self, match: PhraseMatch, following: PhraseMatch | int | None) -> int:
        """For a region phrase directly before a noun that is not the frame, the number of
        its leading words that are a relation ("on" of "on the left", "closest to" of
        "closest to the top"); 0 otherwise."""
        if not (isinstance(following, int) and self.tokens[following].cls == "noun"
                and self.tokens[following].lemma not in FRAME_NOUNS
                and self.target() is not None):
            return 0
        words = tuple(t.text for t in self.tokens[match.start:match.end])
        for length in range(len(words) - 1, 0, -1):
            if phrase_table().get(words[:length], ("", ""))[0] in ("rel", "closest"):
                return length
        return 0

    def connector(self) -> None:
        self.close()
        if self.items and not isinstance(self.items[-1], _Conn | _Rel):
            self.items.append(_Conn())

    def word(self, index: int) -> None:
        token = self.tokens[index]
        cls = token.cls
        if cls == "that":
            after_noun = self.open is None or self.open.head is not None
            cls = "wh" if after_noun and self.target() is not None else "det"
        if cls == "part":
            at_start = not self.items
            cls = "adj" if (self.open is not None and self.open.head is None) or at_start \
                else "verb"
        if cls in ("skip", "pron"):
            return
        if cls == "wh":
            self.connector()
        elif cls == "conj":
            if self.open is not None and self.open.head is None and self.open.tokens:
                self.open.tokens.append(index)  # "red and white bus": the adjectives go on
                return
            self.close()
            self.items.append(_Conj())
        elif cls == "noun":
            self.noun(index, token)
        elif cls in _MODIFIERS:
            phrase = self.open if self.open is not None and self.open.head is None \
                else self.start()
            phrase.tokens.append(index)
            phrase.last_noun = False
            if cls == "adj":
                phrase.attributes.append(token.text)
        else:  # verb, prep, other: material of a relation
            self.relation(token.text, None, [index])

    def noun(self, index: int, token: Token) -> None:
        phrase = self.open
        if phrase is not None and phrase.head is not None:
            if phrase.last_noun:  # compound: "tennis racket", "chocolate donut"
                phrase.attributes.append(self.tokens[phrase.head].text)
            else:
                phrase = None
        if phrase is None:
            phrase = self.start()
        phrase.tokens.append(index)
        phrase.head = index
        phrase.last_noun = True


def _group(tokens: Sequence[Token], nouns: frozenset[int] = frozenset()) -> list[_Item]:
    grouper = _Grouper(tokens)
    units = _units(tokens, nouns)
    for position, unit in enumerate(units):
        following = units[position + 1] if position + 1 < len(units) else None
        if isinstance(unit, PhraseMatch):
            grouper.match(unit, following)
        else:
            grouper.word(unit)
    return grouper.items


def _verb_adjectives(items: list[_Item], tokens: Sequence[Token]) -> list[_Item]:
    """An adjective between a noun and a preposition is part of the relation: in "the guy
    sitting on the couch" (with "sitting" read as an adjective) the predicate is "sitting on"."""
    kept: list[_Item] = []
    for position, item in enumerate(items):
        following = items[position + 1] if position + 1 < len(items) else None
        if (isinstance(item, _Phrase) and item.bare and item.attributes
                and isinstance(following, _Rel) and kept
                and isinstance(kept[-1], _Phrase) and kept[-1].head is not None):
            words = [tokens[i].text for i in item.tokens if tokens[i].cls != "det"]
            following.parts[:0] = [(word, None) for word in words]
            following.tokens[:0] = item.tokens
            continue
        kept.append(item)
    return kept


def _selects_from_group(item: _Item, tokens: Sequence[Token]) -> bool:
    """"the bigger one", "the one on the left": a phrase that picks one of a group."""
    return isinstance(item, _Phrase) and (
        item.head is None or tokens[item.head].lemma in ("one", "ones"))


def _merge_of_groups(items: list[_Item], tokens: Sequence[Token]) -> list[_Item]:
    """"the bigger of the two circles" -> one phrase: head circle, spatial bigger; so is "of
    the two circles, the bigger one"."""
    if (len(items) >= 3 and isinstance(of := items[0], _Rel) and of.predicate == "of"
            and isinstance(group := items[1], _Phrase) and group.head is not None
            and _selects_from_group(chosen := items[2], tokens)):
        assert isinstance(chosen, _Phrase)
        group.prefix = list(of.tokens)
        group.spatial.extend(chosen.spatial)
        group.trailing.extend(chosen.trailing)
        group.attributes.extend(chosen.attributes)
        group.ordinal = chosen.ordinal if chosen.ordinal is not None else group.ordinal
        group.origin = chosen.origin or group.origin
        items = [group, *items[3:]]
    merged: list[_Item] = []
    position = 0
    while position < len(items):
        item = items[position]
        if (isinstance(item, _Phrase) and position + 2 < len(items)
                and (item.head is None or tokens[item.head].lemma == "one")
                and (item.spatial or item.ordinal is not None)
                and isinstance(of := items[position + 1], _Rel) and of.predicate == "of"
                and isinstance(group := items[position + 2], _Phrase)
                and group.head is not None):
            if tokens[group.head].lemma in FRAME_NOUNS:  # "the left side of the picture"
                merged.append(item)
                position += 3
                continue
            group.prefix = [*item.tokens, *of.tokens]
            group.spatial[:0] = item.spatial
            group.trailing[:0] = item.trailing
            group.attributes[:0] = item.attributes
            group.ordinal = item.ordinal if item.ordinal is not None else group.ordinal
            group.origin = item.origin or group.origin
            merged.append(group)
            position += 3
            continue
        merged.append(item)
        position += 1
    return merged


# --- entities and relations ---------------------------------------------------------------------

class _Assembler:
    def __init__(self, tokens: Sequence[Token], hints: Mapping[int, int]) -> None:
        self.tokens = tokens
        self.hints = hints
        self.entities: list[_Phrase] = []
        self.relations: list[tuple[int, str, int]] = []

    def add(self, phrase: _Phrase) -> int:
        self.entities.append(phrase)
        return len(self.entities) - 1

    def subject(self, rel: _Rel, obj: _Phrase) -> int:
        """Nearest phrase before the relation (or the backend's hint for a free-form verb),
        then up from a possession/clothing object to its owner -- not when the object is a
        body part, nor from a held thing to a placing relation ("holding X over Y")."""
        subject = len(self.entities) - 1
        if rel.free and obj.head is not None and obj.head in self.hints:
            hinted = self.hints[obj.head]
            subject = next((index for index, entity in enumerate(self.entities)
                            if entity.head == hinted), subject)
        if obj.head is not None and self.tokens[obj.head].lemma in BODY_PARTS:
            return subject
        for _ in range(len(self.relations)):
            owner = next(((s, p) for s, p, o in self.relations
                          if o == subject and p in CLIMBING_PREDICATES), None)
            if owner is None or (owner[1] in HANDLING_PREDICATES
                                 and rel.predicate in _PLACING_PREDICATES):
                break
            subject = owner[0]
        return subject

    def run(self, items: Sequence[_Item]) -> None:
        pending: _Rel | None = None
        conjoined = False
        previous: _Item | None = None
        juxtaposed: _Phrase | None = None  # a phrase right after another: "the bench the man"
        clause: tuple[int, int] | None = None
        for item in items:
            if isinstance(item, _Rel):
                if not self.entities:
                    self.add(_Phrase())  # "left of the dog": an implicit referent
                pending = item
                clause = ((len(self.entities) - 2, len(self.entities) - 1)
                          if juxtaposed is not None and previous is juxtaposed else None)
            elif isinstance(item, _Conj):
                conjoined = pending is None
            elif isinstance(item, _Phrase):
                count = len(self.entities)
                self.phrase(item, pending, conjoined, previous)
                juxtaposed = item if (pending is None and not conjoined
                                      and isinstance(previous, _Phrase)
                                      and len(self.entities) == count + 1) else None
                pending, conjoined = None, False
            if not isinstance(item, _Conn):
                previous = item
        if pending is not None and self.entities:
            self.dangling(pending, clause)

    def phrase(self, item: _Phrase, pending: _Rel | None, conjoined: bool,
               previous: _Item | None) -> None:
        if pending is not None:
            subject = self.subject(pending, item)
            if item.bare:
                self._name_unknown_word(item)
            if item.bare:  # "man in red (on the right)": all of it describes the man
                self.entities[subject].attributes.extend(item.attributes)
                self.entities[subject].spatial.extend(_spatial(item))
                return
            obj = self.add(item)
            if pending.passive:  # "the umbrella held by the woman"
                self.relations.append((obj, pending.predicate, subject))
                return
            self.relations.append((subject, pending.predicate, obj))
            if pending.predicate in CLIMBING_PREDICATES and not self._body_part(item):
                # "the lady wearing a hat on the left": the lady is on the left
                self.entities[subject].trailing.extend(item.trailing)
                item.trailing.clear()
        elif conjoined and self.relations and self.relations[-1][2] == len(self.entities) - 1:
            subject, predicate, _ = self.relations[-1]  # "between the cat and the dog"
            self.relations.append((subject, predicate, self.add(item)))
        elif item.bare and isinstance(previous, _Phrase) and self.entities:
            self.entities[-1].attributes.extend(item.attributes)  # "the shirt that is white"
            self.entities[-1].spatial.extend(_spatial(item))
        else:
            self.add(item)

    def _body_part(self, phrase: _Phrase) -> bool:
        return phrase.head is not None and self.tokens[phrase.head].lemma in BODY_PARTS

    def _name_unknown_word(self, phrase: _Phrase) -> None:
        """"behind the croissant" with "croissant" tagged an adjective: an object after a
        determiner whose last word the lexicon does not know as an adjective is a noun."""
        last = self.tokens[phrase.tokens[-1]] if phrase.tokens else None
        if (last is not None and last.cls == "adj" and last.text not in ADJECTIVES
                and last.text in phrase.attributes and not phrase.spatial
                and any(self.tokens[i].cls == "det" for i in phrase.tokens)):
            phrase.head = phrase.tokens[-1]
            phrase.attributes.remove(last.text)

    def dangling(self, rel: _Rel, clause: tuple[int, int] | None = None) -> None:
        """A relation with no object: "closest" is unary; a verb describes its subject, or,
        right after a second noun phrase, relates that one to the first ("the motorcycle the
        man is riding", "the bench that the man is sitting on")."""
        last = self.entities[-1]
        if clause is not None and rel.predicate != "closest to" and not rel.passive:
            obj, subject = clause
            self.relations.append((subject, rel.predicate, obj))
        elif rel.predicate == "closest to":
            last.spatial.append(CLOSEST)
        elif not any(canonical for _, canonical in rel.parts):
            last.attributes.append(rel.predicate)

    def drop_frames(self) -> None:
        """"on the left of the picture": the picture is the frame, not an object."""
        for subject, predicate, obj in list(self.relations):
            frame = self.entities[obj]
            if (obj == 0 or frame.head is None or frame.attributes
                    or self.tokens[frame.head].lemma not in FRAME_NOUNS
                    or any(s == obj for s, _, _ in self.relations)):
                continue
            owner = self.entities[subject]
            if predicate in FRAME_REGIONS:
                owner.spatial.append(FRAME_REGIONS[predicate])
            owner.spatial.extend(_spatial(frame))
            self._remove(obj)
            return self.drop_frames()
        return None

    def _remove(self, index: int) -> None:
        del self.entities[index]
        self.relations = [
            (s - (s > index), p, o - (o > index)) for s, p, o in self.relations
            if index not in (s, o)]

    def graph(self) -> SceneGraph:
        entities = tuple(self.entity(phrase) for phrase in self.entities)
        relations = tuple(Relation(s, p, o) for s, p, o in dict.fromkeys(self.relations)
                          if s != o)
        if not relations and not any(
                p.head is not None or e.attributes or e.spatial
                for p, e in zip(self.entities, entities, strict=True)):
            return SceneGraph()  # "the", "of", "12": nothing that could select an object
        return SceneGraph(entities, relations)

    def entity(self, phrase: _Phrase) -> Entity:
        tokens = self.tokens
        if phrase.head is not None:
            end = phrase.tokens.index(phrase.head) + 1
            head = tokens[phrase.head].lemma
        else:
            end = len(phrase.tokens)
            head = IMPLICIT_HEAD
        span = " ".join(tokens[i].text for i in (*phrase.prefix, *phrase.tokens[:end]))
        return Entity(span=span, head=head, attributes=tuple(dict.fromkeys(phrase.attributes)),
                      spatial=_spatial(phrase))


def _spatial(phrase: _Phrase) -> tuple[str, ...]:
    values: list[str] = []
    for value in (*phrase.spatial, *phrase.trailing):
        if value == _ORDINAL_MARK:
            rank = phrase.ordinal if phrase.ordinal in ORDINALS else 1
            value = ordinal_spatial(rank, phrase.origin or DEFAULT_ORDINAL_DIRECTION)
        values.append(value)
    if phrase.ordinal is None and phrase.origin is not None:
        values.append(ordinal_spatial(1, phrase.origin))  # "the dog from the left"
    return tuple(dict.fromkeys(values))


def _assemble(items: Sequence[_Item], tokens: Sequence[Token], hints: Mapping[int, int]
              ) -> SceneGraph:
    assembler = _Assembler(tokens, hints)
    assembler.run(items)
    assembler.drop_frames()
    return assembler.graph()
