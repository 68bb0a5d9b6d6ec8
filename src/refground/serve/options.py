"""Which method options a request may set: a per-method allowlist of values that are safe by type.

The operator chooses everything that names something on the server (a model or checkpoint, a
hub id, a file, a cache directory, a device), everything that sizes memory (batch sizes, layer
widths) and everything whose validity depends on that setup (a proposer, debiasing texts, a
category prior that needs a detector's labels): ``refground serve --method M -o key=value``
accepts any option, because the operator owns the machine. A request may only adjust how an
already loaded model scores: bounded numbers, choices from a fixed list, switches. Anything
else is refused *before* a model is built, so no request can make the server list a directory,
create a file, probe whether a path exists, or start a download.

The table is a policy over the methods' option schemas (each method's ``config_type``,
:mod:`refground.methods.options`): which of those options a request may set, with bounds
tighter than the schema's types. The choices are the constants the schemas validate against, so
the two cannot drift apart, and every name here is an option of its method's schema, whose
default the rule accepts (tests/test_serve.py checks both). A method missing from the table (a
new or third-party one) accepts no client options at all: the safe default.

None of these options loads weights: a request's options build a new method object around the
CLIP the served model already loaded (``load_clip`` caches it per process), so a variant costs
a constructor call, not a model load.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from refground.errors import ConfigError
from refground.methods.graph_resolve import ENTITY_TEXTS, MEMBERSHIPS
from refground.methods.visual_prompt import AGGREGATIONS
from refground.serve.errors import BadOptionValueError, OptionsNotAllowedError
from refground.vision.prompts import BACKGROUNDS, MARKERS

#: How much of a client's option name or value is echoed back in a message.
ECHO_CHARS = 40


def echo(value: Any) -> str:
    """A client's value as short JSON for an error message (never the whole of a huge one)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 3] + "..."


@dataclass(frozen=True)
class Number:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``); JSON booleans
    are not numbers here, and integral options refuse fractions."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    def describe(self) -> str:
        kind = "integer" if self.integer else "number"
        return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, value: Any) -> int | float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value) and (not self.integer or value.is_integer())
        if ok:
            ok = (self.low < value if self.low_open else self.low <= value) and value <= self.high
        if not ok:
            raise ValueError(self.describe())
        # one spelling per value, so 4 and 4.0 share a cached model
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of names."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError(self.describe())
        return value


@dataclass(frozen=True)
class Switch:
    """A JSON boolean (not 0/1, not "true")."""

    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(self.describe())
        return value


@dataclass(frozen=True)
class Subset:
    """A non-empty list of distinct names from a fixed list (its length bounds the work)."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return "a non-empty list of distinct names from " + ", ".join(
            repr(c) for c in self.choices)

    def check(self, value: Any) -> list[str]:
        if (not isinstance(value, list) or not value or len(set(map(str, value))) != len(value)
                or not all(isinstance(v, str) and v in self.choices for v in value)):
            raise ValueError(self.describe())
        return list(value)


@dataclass(frozen=True)
class Rgb:
    """A colour: three integers 0-255."""

    def describe(self) -> str:
        return "three integers 0-255 [r, g, b]"

    def check(self, value: Any) -> list[int]:
        channel = Number(0, 255, integer=True)
        if not isinstance(value, list) or len(value) != 3:
            raise ValueError(self.describe())
        try:
            return [int(channel.check(v)) for v in value]
        except ValueError:
            raise ValueError(self.describe()) from None


Rule = Number | Choice | Switch | Subset | Rgb

#: method name -> option -> what a request may set it to. Left out on purpose, per method:
#:
#: * every CLIP method (crop-rank, visual-prompt, graph-resolve's scorer): ``clip``,
#:   ``proposals``, ``proposal_options``, ``device``, ``dtype``, ``clip_batch_size``,
#:   ``text_cache_dir``, ``encoders`` (models, files, devices, memory);
#: * crop-rank ``template`` and visual-prompt ``prefix``/``category_template``: free text fed
#:   to ``str.format``, whose ``{0.attr}`` fields reach into Python objects;
#: * visual-prompt ``debias``/``debias_seed``/``debias_file``: the debiasing texts are the
#:   operator's (a file, or the ones shipped with the CLIP); ``category_prior``: valid only with
#:   a detector's labels, which is the operator's choice of proposer;
#: * graph-resolve ``scorer``/``scorer_options`` (a method and its model), ``parser_backend``
#:   (a spaCy model), ``graph_cache`` (a file), ``graphs`` (uploads have no gold graphs);
#: * regressor, detr, erpa: ``checkpoint``, ``clip``, ``text_model``, ``device``, and every
#:   architecture option (it sizes or reshapes the weights); erpa's ``top_k``/``max_edges``
#:   would re-read the checkpoint from disk for each new value;
#: * oracle, center, largest: they have no options.
CLIENT_OPTIONS: Mapping[str, Mapping[str, Rule]] = MappingProxyType({
    "visual-prompt": MappingProxyType({
        "marker": Choice(MARKERS),
        "color": Rgb(),
        "stroke": Number(0, 50, low_open=True),
        "blur_radius": Number(0, 100),  # the blur pads the image by about twice this
        "backgrounds": Subset(BACKGROUNDS),
        "sharp_window": Switch(),
        "aggregate": Choice(AGGREGATIONS),
    }),
    "graph-resolve": MappingProxyType({
        "membership": Choice(MEMBERSHIPS),
        "temperature": Number(0, 100, low_open=True),
        "modifier_weight": Number(0, 10),
        "relation_weight": Number(0, 10),
        "entity_text": Choice(ENTITY_TEXTS),
        "size_words": Switch(),
    }),
})


def allowed_options(method: str) -> Mapping[str, Rule]:
    """The options a request may set for ``method`` (none for a method not in the table)."""
    return CLIENT_OPTIONS.get(method, MappingProxyType({}))


def describe_allowed(method: str) -> dict[str, str]:
    """``option -> what it accepts`` for ``method``: what ``GET /methods`` shows clients."""
    return {name: rule.describe() for name, rule in allowed_options(method).items()}


def allowed_sentence(method: str) -> str:
    """One sentence naming what a client may set for ``method``."""
    rules = allowed_options(method)
    if not rules:
        return f"requests cannot set any option of {method}"
    listed = "; ".join(f"{name} ({rule.describe()})" for name, rule in rules.items())
    return f"requests may set these options of {method}: {listed}"


def check_client_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A request's options, checked against the allowlist and normalised.

    A name not on the list raises :class:`OptionsNotAllowedError` (403) whether or not the
    method knows it, so the answer never depends on what exists on the server; a bad value
    of an allowed option raises :class:`BadOptionValueError` (422). Both name what is allowed.
    """
    rules = allowed_options(method)
    refused = [name for name in options if name not in rules]
    if refused:
        shown = ", ".join(echo(name) for name in refused[:5]) + (", ..." if len(refused) > 5
                                                                else "")
        close = [match for name in refused[:5]
                 for match in difflib.get_close_matches(str(name), rules, n=1)]
        hint = f" (did you mean {', '.join(repr(c) for c in dict.fromkeys(close))}?)" if (
            close) else ""
        sentence = allowed_sentence(method)
        raise OptionsNotAllowedError(
            f"this server does not let requests set {shown}{hint}: the model, files, caches, "
            f"devices and sizes are the operator's choice (refground serve -o key=value). "
            f"{sentence[0].upper()}{sentence[1:]}")
    checked: dict[str, Any] = {}
    for name, value in options.items():
        try:
            checked[name] = rules[name].check(value)
        except ValueError as exc:
            raise BadOptionValueError(f"option {name} of {method} must be {exc}, got "
                                      f"{echo(value)}") from None
    return checked


def route_operator_options(options: Mapping[str, Any], default: str,
                           methods: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Split the operator's ``-o`` options among the served methods: ``key`` goes to the
    default method, ``METHOD:key`` to that method (the default or one of ``methods``).

    Option names never contain ``:``, so the prefix cannot be mistaken for part of a name.
    """
    served: Sequence[str] = [default, *(m for m in methods if m != default)]
    routed: dict[str, dict[str, Any]] = {name: {} for name in served}
    for key, value in options.items():
        method, sep, name = key.rpartition(":")
        method = method if sep else default
        if method not in routed or not name:
            raise ConfigError(f"option {key!r} names method {method!r}, which is not served; "
                              f"serve it with --method or --also, or write key=value for "
                              f"{default} (served: {', '.join(served)})")
        routed[method][name] = value
    return routed
