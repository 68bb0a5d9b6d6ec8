"""Parse a whole dataset once and cache the graphs next to its annotations."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from refground.data.dataset import Dataset
from refground.language.cache import graph_cache_path, write_graph_cache
from refground.language.errors import ParseError
from refground.language.parser import get_parser
from refground.language.text import cache_key, check_expression


@dataclass(frozen=True)
class PreparedGraphs:
    """What :func:`prepare_graph_cache` did."""

    path: Path
    backend: str
    expressions: int  # sentences of the dataset, over all splits
    distinct: int  # distinct cache keys, i.e. what was parsed
    refused: int  # over-long texts, left out of the cache (empty ones are no expression)
    seconds: float

    @property
    def per_second(self) -> float:
        return self.distinct / self.seconds if self.seconds > 0 else float("inf")


def prepare_graph_cache(dataset: Dataset, backend: str = "auto", processes: int = 1,
                        batch_size: int = 256) -> PreparedGraphs:
    """Parse every distinct expression of every split of ``dataset``; write
    ``graphs.<backend>.jsonl`` next to its annotations, where :meth:`Dataset.graphs` reads it.

    Only the sentences are read (:meth:`Dataset.expressions`), never the images. The file is
    named after the backend actually used ("auto" resolves to spacy or rules).
    """
    texts = dataset.expressions()
    parser = get_parser(backend)
    keys: list[str] = []
    refused = 0
    for key in dict.fromkeys(cache_key(text) for text in texts):
        try:
            check_expression(key)
        except ParseError:
            refused += 1
            continue
        keys.append(key)
    start = time.perf_counter()
    graphs = parser.parse_many(keys, processes=processes, batch_size=batch_size)
    seconds = time.perf_counter() - start
    path = graph_cache_path(dataset.directory, parser.backend)
    write_graph_cache(path, dict(zip(keys, graphs, strict=True)))
    return PreparedGraphs(path, parser.backend, len(texts), len(keys), refused, seconds)
