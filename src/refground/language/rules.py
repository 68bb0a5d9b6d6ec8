"""The rule-based backend: word classes from the lexicon and suffixes, no statistical model.

It is what ``backend="auto"`` falls back to when spaCy, SceneGraphParser or the English model
is missing. SynthRef's grammar is regular and fully covered by the lexicon, so there the two
backends agree; on free-form RefCOCO text the rules guess word classes from word lists and
suffixes (an unknown word is a noun, ``-ing``/``-ed`` words are participles), so heads are
"the last noun-ish word of each chunk" and verbs are found only by their ending.
"""

from __future__ import annotations

from collections.abc import Sequence

from refground.language.lexicon import (
    ADJECTIVES,
    CONJUNCTIONS,
    DETERMINERS,
    ING_NOUNS,
    INTENSIFIERS,
    KNOWN_NOUNS,
    NUMBERS,
    PARTICIPLES,
    PREPOSITIONS,
    PRONOUNS,
    SKIPPED,
    VERBS,
    WH_WORDS,
)
from refground.language.structure import Token, build_graph
from refground.language.text import normalize, singular
from refground.types import SceneGraph


def lexical_class(word: str) -> str | None:
    """The word class the lexicon fixes for ``word`` whatever the backend, or None."""
    if word == "that":
        return "that"
    if word in DETERMINERS:
        return "det"
    if word in NUMBERS:
        return "num"
    if word in SKIPPED:
        return "skip"
    if word in PARTICIPLES:
        return "part"
    if word in KNOWN_NOUNS or word in ING_NOUNS or singular(word) in KNOWN_NOUNS:
        return "noun"
    if word in ADJECTIVES:
        return "adj"
    if word in INTENSIFIERS:
        return "intens"
    if word in CONJUNCTIONS:
        return "conj"
    if word in WH_WORDS:
        return "wh"
    if word in PRONOUNS:
        return "pron"
    return None


def rule_class(word: str) -> str:
    """Word class from the lexicon, then from the word's shape."""
    known = lexical_class(word)
    if known is not None:
        return known
    if word in PREPOSITIONS:
        return "prep"
    if word in VERBS:
        return "verb"
    if word.isdigit():
        return "num"
    if len(word) > 4 and word.endswith(("ing", "ed")):
        return "part"
    return "noun"


def rule_tokens(words: Sequence[str]) -> list[Token]:
    """Tokens for the structure builder; nouns' lemmas are their singular forms."""
    return [Token(word, singular(word), rule_class(word)) for word in words]


class RulesBackend:
    """Parses with word lists only; cheap, deterministic, and dependency-free."""

    name = "rules"

    def parse_normalized(self, texts: Sequence[str]) -> list[SceneGraph]:
        """Graphs of already-normalised texts (see :func:`refground.language.text.normalize`)."""
        return [build_graph(rule_tokens(text.split())) for text in texts]

    def parse(self, text: str) -> SceneGraph:
        return self.parse_normalized([normalize(text)])[0]
