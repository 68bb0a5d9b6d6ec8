"""Text clean-up shared by both backends: one normal form, one length limit, one singulariser."""

from __future__ import annotations

import re

from refground.language.errors import ParseError
from refground.language.lexicon import IRREGULAR_PLURALS, SINGULAR_S

# Referring expressions are a few words (RefCOCOg's longest is under 100); a longer input is
# almost surely a whole caption or a bug upstream, and spaCy's cost grows with it.
MAX_CHARS = 1000

_POSSESSIVE = re.compile(r"(\w)['\u2019]s\b")  # straight or typographic apostrophe
_MOST = re.compile(r"\b(left|right|top|bottom|upper|lower)-most\b")
_NON_WORD = re.compile(r"[^a-z0-9&]+")


def cache_key(text: str) -> str:
    """The key a graph is stored under: lowercase with whitespace collapsed."""
    return " ".join(text.lower().split())


def check_expression(text: str) -> None:
    """Raise :class:`ParseError` for text the parser refuses: empty, or over ``MAX_CHARS``."""
    if not isinstance(text, str):
        raise ParseError(f"expected the expression as a str, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise ParseError(
            f"expression is {len(text)} characters long; the parser accepts at most {MAX_CHARS} "
            "(pass one referring expression, not a paragraph, or split it)")
    if not normalize(text):
        raise ParseError(
            f"expression {text!r} has no words (it is empty, whitespace or punctuation); "
            "pass a referring expression such as 'the dog on the left'")


def normalize(text: str) -> str:
    """Lowercase, possessive ``'s`` dropped, ``left-most`` joined, other punctuation a space.

    Possessives go ("man's hat" -> "man hat") because the owner then reads as a modifier of
    the hat, which is what a grounding model can use; hyphens split words ("t-shirt").
    """
    lowered = _POSSESSIVE.sub(r"\1", text.lower())
    lowered = _MOST.sub(r"\1most", lowered)
    return " ".join(_NON_WORD.sub(" ", lowered).split())


def singular(noun: str) -> str:
    """A plural noun's singular by rule ("circles" -> "circle", "boxes" -> "box")."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    for plural, single in IRREGULAR_PLURALS.items():  # "bookshelves", "firemen"
        if (plural.endswith(("ves", "men")) and noun.endswith(plural)
                and len(noun) - len(plural) >= 3):
            return noun[:-len(plural)] + single
    if len(noun) <= 3 or noun in SINGULAR_S or noun.endswith(("ss", "us", "is")):
        return noun
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith(("xes", "ches", "shes", "sses", "zes")):
        return noun[:-2]
    if noun.endswith("s"):
        return noun[:-1]
    return noun
