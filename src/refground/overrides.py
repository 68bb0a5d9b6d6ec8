"""``key=value`` on the command line: one syntax for method options (``-o``) and config
overrides (``--set``).

The key is everything before the first ``=``; the value is read as YAML under the YAML 1.2
core schema, the one JSON follows:

* ``3``, ``-2``, ``0.5``, ``3e-4``, ``.inf`` are numbers; ``true``/``false`` switches;
  ``null`` or nothing (``key=``) is None;
* ``[1, 2]``, ``[blur, gray]``, ``{debias: 0}`` (and any JSON) are lists and mappings, whose
  items follow the same rules;
* ``'...'`` or ``"..."`` is the quoted text (``'3'``: the string "3");
* anything else is the text exactly as written, spaces, ``#`` and ``:`` included
  (``template=a photo of {}``).

Unlike YAML 1.1 (PyYAML's default), ``yes``/``no``/``on``/``off`` stay words and ``010`` is
ten; a list or mapping that does not parse is kept as text, so a template such as
``{} in the picture`` still works.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import yaml

from refground.errors import ConfigError

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_NULL = "tag:yaml.org,2002:null"
#: YAML 1.1 only: dates and ``<<`` merge keys are plain text in 1.2's core schema
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"

NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


def _core_int(text: str) -> int:
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _core_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text)


class _CoreLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's plain scalars instead of 1.1's."""


_CoreLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in (_BOOL, _INT, _FLOAT, _NULL, _TIMESTAMP, _MERGE)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _regexp, _first in ((_NULL, NULL, ["~", "n", "N", ""]), (_BOOL, BOOL, list("tTfF")),
                              (_INT, INT, list("-+0123456789")),
                              (_FLOAT, FLOAT, list("-+0123456789."))):
    _CoreLoader.add_implicit_resolver(_tag, _regexp, _first)
_CoreLoader.add_constructor(_BOOL, lambda loader, node: loader.construct_scalar(node) in (
    "true", "True", "TRUE"))
_CoreLoader.add_constructor(_INT, lambda loader, node: _core_int(loader.construct_scalar(node)))
_CoreLoader.add_constructor(_FLOAT, lambda loader, node: _core_float(
    loader.construct_scalar(node)))


def parse_value(raw: str) -> Any:
    """One command-line value (see the module docstring)."""
    text = raw.strip()
    # YAML reads only core scalars and flow collections / quoted text; any other text is kept
    # as written (YAML would make "a: b" a mapping and drop a "# comment")
    if text[:1] in ("[", "{", "'", '"') or any(
            pattern.match(text) for pattern in (NULL, BOOL, INT, FLOAT)):
        try:
            return yaml.load(text, Loader=_CoreLoader)
        except yaml.YAMLError:
            pass
    return raw


def parse_assignment(pair: str, flag: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; ``flag`` (``-o``, ``--set``) names the option in
    the error when ``pair`` has no ``=`` or no key."""
    key, sep, raw = pair.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} takes key=value, got {pair!r}")
    return key, parse_value(raw)


def parse_assignments(pairs: Iterable[str], flag: str) -> dict[str, Any]:
    """Several ``key=value`` pairs as a dict; a key given twice keeps its last value."""
    return dict(parse_assignment(pair, flag) for pair in pairs)
