"""Loading REFER's ``refs(*).p`` pickles without trusting them.

A pickle can name any importable callable and run it on load. REFER files hold only lists,
dicts, strings and numbers, so the unpickler below admits exactly those: any opcode that
imports a global (classes, functions, ``os.system``...) is refused before it is executed.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

from refground.errors import DatasetError, UnsafePickleError

# Globals some pickle writers reference for plain data; each only builds a value. Protocol-2
# pickles written by Python 3 encode ``bytes`` as ``_codecs.encode(text, "latin1")``.
_ALLOWED_GLOBALS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): codecs.encode,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BufferedIOBase, source: str) -> None:
        # REFER pickles were written by Python 2: its byte strings are UTF-8 text.
        super().__init__(stream, encoding="utf-8", errors="strict")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        raise UnsafePickleError(
            f"{self._source}: refused to load {module}.{name}; REFER annotation pickles hold "
            "only lists, dicts, strings and numbers, so this file is corrupt or hostile"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused a persistent reference ({pid!r})")


def load_plain_pickle(path: Path) -> Any:
    """Load a pickle that may contain only plain containers and scalars."""
    try:
        with open(path, "rb") as stream:
            return _PlainDataUnpickler(stream, str(path)).load()
    except UnsafePickleError:
        raise
    except FileNotFoundError as exc:
        raise DatasetError(f"annotation file not found: {path}") from exc
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, TypeError,
            IndexError, KeyError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a readable REFER pickle ({exc})") from exc
