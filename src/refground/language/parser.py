"""Choosing a backend, and parsing one, many, or a dataset's worth of expressions."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from refground.errors import ConfigError, MissingDependencyError
from refground.language import spacy_backend
from refground.language.errors import ParseError
from refground.language.rules import RulesBackend
from refground.language.text import cache_key, check_expression, normalize
from refground.types import SceneGraph

BACKENDS: tuple[str, ...] = ("auto", "spacy", "rules")
# graphs_for's in-process memo is cleared when it grows past this many expressions.
MEMO_LIMIT = 200_000


class _Backend(Protocol):
    name: str

    def parse(self, text: str) -> SceneGraph: ...

    def parse_normalized(self, texts: Sequence[str]) -> list[SceneGraph]: ...


_warned_fallback = False


def _warn_fallback(reason: BaseException) -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    warnings.warn(
        f"spaCy scene-graph parsing is unavailable ({reason}); using the rule-based parser. "
        f"For better graphs on free-form text: {spacy_backend.INSTALL_HINT}",
        RuntimeWarning, stacklevel=4)


class ExpressionParser:
    """Parses referring expressions into :class:`~refground.types.SceneGraph` values.

    ``backend="spacy"`` uses spaCy + SceneGraphParser and raises
    :class:`~refground.errors.MissingDependencyError` if they or the English model are missing;
    ``"rules"`` uses word lists only; ``"auto"`` is spaCy when installed, else the rules (with
    one warning per process saying what to install). :attr:`backend` names the one in use.

    Input rules: text is lowercased and stripped of punctuation; empty text and text longer
    than :data:`~refground.language.text.MAX_CHARS` raise :class:`ParseError` (it is refused,
    not truncated: a truncated expression would silently name a different object).
    """

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown parser backend {backend!r}; use one of "
                              f"{', '.join(BACKENDS)}")
        self.requested = backend
        self._impl: _Backend
        if backend == "rules":
            self._impl = RulesBackend()
            return
        try:
            self._impl = spacy_backend.load_spacy_backend()
        except ImportError as exc:
            if backend == "spacy":
                if isinstance(exc, MissingDependencyError):
                    raise
                raise MissingDependencyError(
                    f"backend='spacy' is unavailable ({exc}): {spacy_backend.INSTALL_HINT}, "
                    "or use backend='rules'") from exc
            _warn_fallback(exc)
            self._impl = RulesBackend()

    @property
    def backend(self) -> str:
        """The backend actually in use: "spacy" or "rules"."""
        return self._impl.name

    def parse(self, text: str) -> SceneGraph:
        """The graph of one expression (``SceneGraph()`` when it has no noun phrase at all)."""
        check_expression(text)
        return self._impl.parse(text)

    def parse_many(self, texts: Iterable[str], *, processes: int = 1, batch_size: int = 256
                   ) -> list[SceneGraph]:
        """Graphs of many expressions, in input order, equal to parsing them one by one.

        spaCy parses them in batches of ``batch_size`` (``nlp.pipe``), with ``processes`` > 1
        in that many worker processes; the rule backend splits them over a process pool.
        """
        texts = list(texts)
        if processes < 1 or batch_size < 1:
            raise ConfigError(f"processes ({processes}) and batch_size ({batch_size}) must be "
                              ">= 1")
        for index, text in enumerate(texts):
            try:
                check_expression(text)
            except ParseError as exc:
                raise ParseError(f"expression #{index}: {exc}") from None
        normalized = [normalize(text) for text in texts]
        if isinstance(self._impl, spacy_backend.SpacyBackend):
            return self._impl.parse_normalized(normalized, batch_size=batch_size,
                                               processes=processes)
        if processes == 1 or len(normalized) <= batch_size:
            return self._impl.parse_normalized(normalized)
        chunks = [normalized[i:i + batch_size] for i in range(0, len(normalized), batch_size)]
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(processes) as pool:
            parts = pool.map(_parse_rules_chunk, chunks)
        return [graph for part in parts for graph in part]


def _parse_rules_chunk(texts: list[str]) -> list[SceneGraph]:
    return RulesBackend().parse_normalized(texts)


_parsers: dict[str, ExpressionParser] = {}
_memo: dict[str, dict[str, SceneGraph]] = {}


def get_parser(backend: str = "auto") -> ExpressionParser:
    """The process's parser for ``backend``, created (and its model loaded) on first use."""
    if backend not in _parsers:
        if backend == "auto" and "spacy" in _parsers:
            _parsers["auto"] = _parsers["spacy"]
        else:
            _parsers[backend] = ExpressionParser(backend)
    return _parsers[backend]


def parse(text: str, backend: str = "auto") -> SceneGraph:
    """The scene graph of one referring expression; entity 0 is the referent."""
    return get_parser(backend).parse(text)


def parse_many(texts: Iterable[str], *, backend: str = "auto", processes: int = 1,
               batch_size: int = 256) -> list[SceneGraph]:
    """Scene graphs of many expressions, batched; same results as :func:`parse` one by one."""
    return get_parser(backend).parse_many(texts, processes=processes, batch_size=batch_size)


def graphs_for(texts: Iterable[str], cache: Mapping[str, SceneGraph] | None = None,
               backend: str = "auto") -> list[SceneGraph]:
    """Graphs for a method's expressions: from ``cache``, an in-process memo, else parsed.

    The cache wins over the memo: it is what the caller asked to use (a prepared dataset
    file, perhaps from a better parser) even when this process parsed the text before.

    Texts are looked up by :func:`~refground.language.text.cache_key` (lowercase, whitespace
    collapsed); the misses are parsed together in one batch. Unlike :func:`parse`, a text the
    parser refuses (empty, too long) gives ``SceneGraph()``: callers treat a graph without
    entities as "no structure" and fall back to the plain expression.
    """
    parser = get_parser(backend)
    memo = _memo.setdefault(parser.backend, {})
    keys = [cache_key(text) for text in texts]
    missing: list[str] = []
    cache = cache or {}
    for key in dict.fromkeys(keys):
        if key in memo or key in cache:
            continue
        try:
            check_expression(key)
        except ParseError:
            memo[key] = SceneGraph()
            continue
        missing.append(key)
    if missing:
        if len(memo) + len(missing) > MEMO_LIMIT:
            kept = {key: memo[key] for key in keys if key in memo}
            memo.clear()
            memo.update(kept)
        memo.update(zip(missing, parser.parse_many(missing), strict=True))
    return [cache[key] if key in cache else memo[key] for key in keys]

