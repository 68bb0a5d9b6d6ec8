"""Scene-graph parsing of referring expressions: "the cup left of the plate" -> entities and
relations in SynthRef's canonical vocabulary.

``parse`` / ``parse_many`` / ``graphs_for`` use spaCy + SceneGraphParser when installed
(``pip install 'refground[parse]'``) and a rule-based parser otherwise; see
:mod:`refground.language.structure` for the graph conventions and
:mod:`refground.language.lexicon` for the vocabulary.
"""

from refground.language.cache import (
    dataset_graphs,
    graph_cache_path,
    load_graph_cache,
    write_graph_cache,
)
from refground.language.errors import GraphCacheError, ParseError
from refground.language.parser import (
    BACKENDS,
    ExpressionParser,
    get_parser,
    graphs_for,
    parse,
    parse_many,
)
from refground.language.text import MAX_CHARS, cache_key

__all__ = [
    "BACKENDS",
    "MAX_CHARS",
    "ExpressionParser",
    "GraphCacheError",
    "ParseError",
    "cache_key",
    "dataset_graphs",
    "get_parser",
    "graph_cache_path",
    "graphs_for",
    "load_graph_cache",
    "parse",
    "parse_many",
    "write_graph_cache",
]
