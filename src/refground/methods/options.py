"""A method's options: one frozen pydantic model per method, validated when it is built.

Every method, zero-shot or trainable, declares what it accepts as a :class:`MethodConfig`
subclass (its ``config_type``): names, types and defaults in one place, read by the
constructor, the docs and the server's allowlist (:mod:`refground.serve.options`). Building a
method with an unknown option or a value of the wrong type raises one :class:`ConfigError` that
names the option and the known ones, before any model loads: a typo (``-o debais=0``) is an
error, never silently ignored.

The models check each value on its own (type, choice, range); a method's constructor checks
what needs more than the options (files, models, the proposer's kind).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from refground.errors import ConfigError


class MethodConfig(BaseModel):
    """Base of every method's options; unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Added to the message about an unknown option: where such options belong instead.
    unknown_hint: ClassVar[str] = ""


class NoOptions(MethodConfig):
    """The options of a method that takes none (oracle, center, largest)."""


ConfigT = TypeVar("ConfigT", bound=MethodConfig)


def parse_config(config_type: type[ConfigT], options: Mapping[str, Any], what: str) -> ConfigT:
    """Validate options into a config, turning pydantic's report into a :class:`ConfigError`."""
    try:
        return config_type(**options)
    except ValidationError as exc:
        raise ConfigError(f"invalid options for {what}: {option_problems(exc, config_type)}"
                          ) from None


def option_problems(exc: ValidationError, config_type: type[MethodConfig]) -> str:
    """Pydantic's errors as one line: unknown options first (with the known ones and the
    closest match), then ``option: what is wrong`` for each bad value. A check of ours that
    raised (a validator's ``ValueError``) is quoted as it was written, without pydantic's
    ``Value error,`` prefix."""
    known = sorted(config_type.model_fields)
    unknown: list[str] = []
    problems: list[str] = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            unknown.append(where)
            continue
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if error["type"] == "value_error" and cause else error["msg"]
        named = not where or message.startswith(f"{where} ")  # our checks often name it
        problems.append(message if named else f"{where}: {message}")
    if unknown:
        close = [match for name in unknown
                 for match in difflib.get_close_matches(name, known, n=1)]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        known_text = ", ".join(known) if known else "none (it takes no options)"
        extra = f"; {config_type.unknown_hint}" if config_type.unknown_hint else ""
        problems.insert(0, f"unknown option(s) {', '.join(unknown)}{hint}; known options: "
                           f"{known_text}{extra}")
    return "; ".join(problems)
