"""Finding the lexicon's multi-word phrases in a token sequence (longest match wins).

Referring expressions pack their meaning into fixed phrases ("to the left of", "at the very
bottom", "second ... from the right") that a dependency parser splits into nouns and
prepositions. Matching them first, on the words alone, lets both backends agree on them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from refground.language.lexicon import PHRASE_PATTERNS

_GROUP = re.compile(r"\[[^\]]*\]|\([^)]*\)|\S+")


@dataclass(frozen=True)
class PhraseMatch:
    """Tokens ``[start, end)`` form a lexicon phrase of ``kind`` with canonical ``value``."""

    start: int
    end: int
    kind: str
    value: str


def expand(pattern: str) -> list[tuple[str, ...]]:
    """All token sequences a pattern stands for.

    ``a|b`` is one token with alternatives, ``(x|y z)`` an optional group whose alternatives
    may span several tokens, ``[x|y z]`` the same group but required.
    """
    choices: list[list[tuple[str, ...]]] = []
    for group in _GROUP.findall(pattern):
        if group[0] in "([":
            options = [tuple(option.split()) for option in group[1:-1].split("|")]
            choices.append([(), *options] if group[0] == "(" else options)
        else:
            choices.append([(word,) for word in group.split("|")])
    return [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*choices)]


@cache
def phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    """Every expanded phrase -> (kind, value); an earlier pattern wins a tie."""
    table: dict[tuple[str, ...], tuple[str, str]] = {}
    for pattern, kind, value in PHRASE_PATTERNS:
        for words in expand(pattern):
            if words:
                table.setdefault(words, (kind, value))
    return table


@cache
def _max_len() -> int:
    return max(len(words) for words in phrase_table())


def match_phrases(words: Sequence[str], kinds: Iterable[str] | None = None) -> list[PhraseMatch]:
    """Non-overlapping phrase matches, scanning left to right and taking the longest each time."""
    allowed = None if kinds is None else frozenset(kinds)
    table = phrase_table()
    matches: list[PhraseMatch] = []
    index = 0
    while index < len(words):
        for length in range(min(_max_len(), len(words) - index), 0, -1):
            found = table.get(tuple(words[index:index + length]))
            if found is not None and (allowed is None or found[0] in allowed):
                matches.append(PhraseMatch(index, index + length, *found))
                index += length
                break
        else:
            index += 1
    return matches
