"""Errors of the language package (kept here so refground.errors needs no change)."""

from refground.errors import RefgroundError


class ParseError(RefgroundError, ValueError):
    """An expression cannot be parsed as given (empty, or longer than the parser accepts)."""


class GraphCacheError(RefgroundError):
    """A parsed-graph cache file is malformed; the message names the file and line."""
