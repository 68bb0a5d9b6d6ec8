"""Errors of the language package; RefgroundErrors, so the CLI and the server report them in
one line like the others."""

from refground.errors import RefgroundError


class ParseError(RefgroundError, ValueError):
    """An expression cannot be parsed as given (empty, or longer than the parser accepts)."""


class GraphCacheError(RefgroundError):
    """A parsed-graph cache file is malformed; the message names the file and line."""
