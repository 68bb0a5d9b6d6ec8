"""Loading REFER's ``refs(*).p`` pickles without trusting them.

A pickle can name any importable callable and run it on load. REFER files hold only lists,
dicts, strings and numbers, so the unpickler below admits exactly those: any opcode that
imports a global (classes, functions, ``os.system``...) is refused before it is executed.

Refusing code is not enough; bytes can also ask for memory they do not hold:

- a harmless-looking global can amplify data: ``_codecs.encode`` with the ``hex`` codec doubles
  its input, so forty nested calls in a kilobyte ask for terabytes. The one global plain-data
  pickles need is ``encode(str, "latin1")`` (how Python 3 writes ``bytes`` at protocol 2),
  which maps one character to one byte; that is all we admit, and the bytes it makes are
  counted against a budget proportional to the file's size;
- the C unpickler trusts the numbers in the stream: it allocates a declared byte length before
  reading it, and grows its memo table to any index a ``PUT`` names (one mutated byte made it
  touch 12 GB). So the opcodes are walked first with :func:`pickletools.genops`, which reads
  every argument from the data itself: a length longer than the file, a frame longer than the
  file or a memo index beyond the number of opcodes is refused before anything is built.

After that every opcode copies data out of the file or references what was already built, so
the result stays within a constant factor of the file; anything that still goes wrong becomes a
:class:`DatasetError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

from refground.errors import DatasetError, UnsafePickleError

#: The codec names ``_codecs.encode`` may be called with: Python 3's protocol-2 ``bytes``.
LATIN1_NAMES = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})
#: Bytes ``encode`` may make, per byte of the file (each output byte needs an input character).
ENCODE_BUDGET_PER_FILE_BYTE = 4


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BufferedIOBase, source: str, file_size: int) -> None:
        # REFER pickles were written by Python 2: its byte strings are UTF-8 text.
        super().__init__(stream, encoding="utf-8", errors="strict")
        self._source = source
        self._encode_budget = ENCODE_BUDGET_PER_FILE_BYTE * max(file_size, 1024)
        self._allowed = {
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("__builtin__", "set"): set,
            ("__builtin__", "frozenset"): frozenset,
            ("_codecs", "encode"): self._latin1_encode,
        }

    def _latin1_encode(self, text: Any, codec: Any = "utf-8", errors: Any = "strict") -> bytes:
        """``_codecs.encode`` as plain-data pickles use it, and only that way."""
        if not (isinstance(text, str) and isinstance(codec, str)
                and codec.lower() in LATIN1_NAMES and errors == "strict"):
            raise UnsafePickleError(
                f"{self._source}: refused _codecs.encode({type(text).__name__}, {codec!r}); "
                "plain-data pickles only encode text as latin1, so this file is corrupt or "
                "hostile")
        self._encode_budget -= len(text)
        if self._encode_budget < 0:
            raise UnsafePickleError(
                f"{self._source}: encoded byte strings exceed "
                f"{ENCODE_BUDGET_PER_FILE_BYTE}x the file's size; refused as hostile")
        return text.encode("latin1")

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._allowed.get((module, name))
        if allowed is not None:
            return allowed
        raise UnsafePickleError(
            f"{self._source}: refused to load {module}.{name}; REFER annotation pickles hold "
            "only lists, dicts, strings and numbers, so this file is corrupt or hostile"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused a persistent reference ({pid!r})")


_MEMO_WRITES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
#: SHA-256 digests of streams :func:`check_opcodes` passed. The walk is pure Python (a
#: RefCOCO pickle has millions of opcodes) and the check depends on the bytes alone, so a
#: file read again -- every split of a dataset loads the same refs file -- is walked once.
_PASSED: set[bytes] = set()


def check_opcodes(data: bytes, source: str) -> None:
    """Refuse a stream whose numbers promise more than the file holds (see the module doc)."""
    digest = hashlib.sha256(data).digest()
    if digest in _PASSED:
        return
    _walk_opcodes(data, source)
    _PASSED.add(digest)


def _walk_opcodes(data: bytes, source: str) -> None:
    # genops reads each argument from ``data`` itself: a declared length it cannot read raises
    for opcodes, (opcode, argument, _) in enumerate(pickletools.genops(data), start=1):
        if opcode.name in _MEMO_WRITES and not 0 <= argument <= opcodes:
            raise UnsafePickleError(
                f"{source}: memo index {argument} after {opcodes} opcodes; a pickler numbers "
                "its memo from 0, so this file is corrupt or hostile")
        if opcode.name == "FRAME" and argument > len(data):
            raise UnsafePickleError(f"{source}: a frame of {argument} bytes in a file of "
                                    f"{len(data)}; corrupt or hostile")


def load_plain_pickle(path: Path) -> Any:
    """Load a pickle that may contain only plain containers and scalars.

    Raises :class:`UnsafePickleError` for anything that would run code or amplify data, and
    :class:`DatasetError` (naming ``path``) for every other way the bytes can be wrong.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"annotation file not found: {path}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        check_opcodes(data, str(path))
        return _PlainDataUnpickler(io.BytesIO(data), str(path), len(data)).load()
    except UnsafePickleError:
        raise
    except MemoryError:
        raise DatasetError(f"{path}: not a readable REFER pickle (it asks for more memory "
                           "than is available; corrupt or hostile)") from None
    except RecursionError:
        raise DatasetError(f"{path}: not a readable REFER pickle (nested too deeply)") from None
    except Exception as exc:  # every other failure of hostile bytes is the file's fault
        raise DatasetError(f"{path}: not a readable REFER pickle "
                           f"({type(exc).__name__}: {exc})") from exc
