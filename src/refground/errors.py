"""One exception family, so callers can catch everything refground raises on bad input.

Every message says what was wrong *and* what to change; the CLI prints it without a traceback.
"""

from typing import Any


class RefgroundError(Exception):
    """Base class of every error refground raises deliberately."""


class BoxError(RefgroundError, ValueError):
    """A box is malformed (wrong shape, NaN, x1 < x0, ...)."""


class DatasetError(RefgroundError):
    """An annotation file or dataset layout cannot be used."""


class UnsafePickleError(DatasetError):
    """A pickle asked to import or call something; it was refused before running any of it."""


class ImageError(RefgroundError):
    """An image is missing, unreadable, truncated or too large."""


class InputError(RefgroundError, ValueError):
    """A user's input to grounding is unusable (empty or overlong text, mismatched lists...)."""


class ConfigError(RefgroundError, ValueError):
    """A config value or method option is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup (method, proposer, ...) used a name nobody registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ModelLoadError(RefgroundError):
    """A model could not be loaded, or would load into something that cannot work."""


class MissingDependencyError(RefgroundError, ImportError):
    """An optional extra is needed for this feature but is not installed."""


def validation_problems(exc: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                     for err in exc.errors())
