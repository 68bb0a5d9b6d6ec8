"""Parse a whole REFER-format dataset once and cache the graphs next to its annotations."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from refground.data.refer import refs_path
from refground.data.safe_pickle import load_plain_pickle
from refground.errors import DatasetError
from refground.language.cache import graph_cache_path, write_graph_cache
from refground.language.errors import ParseError
from refground.language.parser import get_parser
from refground.language.text import cache_key, check_expression


@dataclass(frozen=True)
class PreparedGraphs:
    """What :func:`prepare_graph_cache` did."""

    path: Path
    backend: str
    expressions: int  # sentences in the file, over all splits
    distinct: int  # distinct cache keys, i.e. what was parsed
    refused: int  # empty or over-long texts, left out of the cache
    seconds: float

    @property
    def per_second(self) -> float:
        return self.distinct / self.seconds if self.seconds > 0 else float("inf")


def dataset_expressions(root: Path, dataset: str, split_by: str) -> list[str]:
    """Every sentence of every split in ``<root>/<dataset>/refs(<split_by>).p``.

    Reads the refs pickle only: parsing text needs neither instances.json nor the images.
    """
    path = refs_path(Path(root), dataset, split_by)
    if not path.is_file():
        folder = path.parent
        available = sorted(p.name for p in folder.glob("refs(*).p")) if folder.is_dir() else []
        raise DatasetError(f"{path} not found (check --data/--dataset/--split-by); "
                           f"refs files there: {', '.join(available) or 'none'}")
    refs = load_plain_pickle(path)
    if not isinstance(refs, list):
        raise DatasetError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    texts: list[str] = []
    for ref in refs:
        sentences = ref.get("sentences") if isinstance(ref, Mapping) else None
        for sentence in sentences if isinstance(sentences, list) else ():
            if isinstance(sentence, Mapping) and isinstance(sentence.get("sent"), str):
                texts.append(sentence["sent"])
    return texts


def prepare_graph_cache(root: Path, dataset: str, split_by: str, backend: str = "auto",
                        processes: int = 1, batch_size: int = 256) -> PreparedGraphs:
    """Parse every distinct expression of a dataset; write ``graphs.<backend>.jsonl``.

    The file is named after the backend actually used ("auto" resolves to spacy or rules).
    """
    texts = dataset_expressions(root, dataset, split_by)
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
    path = graph_cache_path(Path(root) / dataset, parser.backend)
    write_graph_cache(path, dict(zip(keys, graphs, strict=True)))
    return PreparedGraphs(path, parser.backend, len(texts), len(keys), refused, seconds)
