"""Parsed graphs on disk, next to a dataset's annotations, so methods need not parse again.

One JSON object per line, ``{"text": ..., "graph": SceneGraph.to_dict()}``, keyed by
:func:`~refground.language.text.cache_key`. The backend is part of the file name because the
two backends' graphs differ on free-form text, and a method should know which it reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from refground.language.errors import GraphCacheError
from refground.types import SceneGraph


def graph_cache_path(dataset_dir: Path, backend: str) -> Path:
    """``<dataset_dir>/graphs.<backend>.jsonl`` (``backend`` is "spacy" or "rules")."""
    return Path(dataset_dir) / f"graphs.{backend}.jsonl"


def write_graph_cache(path: Path, mapping: Mapping[str, SceneGraph]) -> None:
    """Write the cache atomically: a temporary file in the same folder, then a rename.

    A reader never sees a half-written file, and an interrupted run leaves the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            for text, graph in mapping.items():
                stream.write(json.dumps({"text": text, "graph": graph.to_dict()},
                                        ensure_ascii=False) + "\n")
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only; a cache is shared data
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def dataset_graphs(dataset_dir: Path, backend: str = "auto") -> dict[str, SceneGraph]:
    """The graphs ``refground prepare-graphs`` cached for a dataset, or ``{}`` if it was not run.

    ``auto`` means the backend :func:`~refground.language.get_parser` would pick here, because
    caches are named by the backend that wrote them.
    """
    if backend == "auto":
        from refground.language.parser import get_parser

        backend = get_parser(backend).backend
    path = graph_cache_path(dataset_dir, backend)
    return load_graph_cache(path) if path.is_file() else {}


def load_graph_cache(path: Path) -> dict[str, SceneGraph]:
    """Read a cache written by :func:`write_graph_cache`; a bad line raises naming its number."""
    path = Path(path)
    if not path.is_file():
        raise GraphCacheError(f"graph cache not found: {path} (create it with `refground "
                              "prepare-graphs`)")
    graphs: dict[str, SceneGraph] = {}
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text, graph = record["text"], record["graph"]
                if not isinstance(text, str) or not isinstance(graph, dict):
                    raise TypeError("'text' must be a string and 'graph' an object")
                graphs[text] = SceneGraph.from_dict(graph)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise GraphCacheError(
                    f"{path}, line {number}: not a graph record ({type(exc).__name__}: {exc}); "
                    "delete the file and rerun `refground prepare-graphs`") from None
    return graphs
