"""refground.language: scene graphs of referring expressions, for both parser backends.

The spaCy backend is part of the dev extra (``refground[parse]``), so it is tested, not
skipped: a missing spaCy or model fails these tests with an install hint.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refground import vocabulary
from refground.cli import app
from refground.data.synth import generate_synthref, synthref_dataset
from refground.errors import MissingDependencyError
from refground.language import (
    MAX_CHARS,
    ExpressionParser,
    GraphCacheError,
    ParseError,
    get_parser,
    graph_cache_path,
    graphs_for,
    lexicon,
    load_graph_cache,
    parse,
    spacy_backend,
    write_graph_cache,
)
from refground.language import parser as parser_module
from refground.types import Entity, Relation, SceneGraph

BACKENDS = ("spacy", "rules")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def heads(graph: SceneGraph) -> list[str]:
    return [e.head for e in graph.entities]


def triples(graph: SceneGraph) -> list[tuple[str, str, str]]:
    return [(graph.entities[r.subject].head, r.predicate, graph.entities[r.object].head)
            for r in graph.relations]


# (expression, heads, spatial of entity 0)
SPATIAL_CASES = [
    ("the leftmost dog", ["dog"], ("leftmost",)),
    ("The LEFT-MOST Dog!!", ["dog"], ("leftmost",)),
    ("the top dog", ["dog"], ("topmost",)),
    ("the lowest cup", ["cup"], ("bottommost",)),
    ("far left man", ["man"], ("leftmost",)),
    ("the dog furthest to the left", ["dog"], ("leftmost",)),
    ("the car on the far right", ["car"], ("rightmost",)),
    ("the cup at the very top", ["cup"], ("topmost",)),
    ("the kite highest up", ["kite"], ("topmost",)),
    ("the circle at the very bottom", ["circle"], ("bottommost",)),
    ("the boat furthest down", ["boat"], ("bottommost",)),
    ("the car farthest right", ["car"], ("rightmost",)),
    ("the second cup from the right", ["cup"], ("second from the right",)),
    ("2nd dog from the top", ["dog"], ("second from the top",)),
    ("third from the right", ["object"], ("third from the right",)),
    ("first dog from the left", ["dog"], ("leftmost",)),
    ("the second dog", ["dog"], ("second from the left",)),
    ("dog on the left side", ["dog"], ("on the left",)),
    ("the dog at the left", ["dog"], ("on the left",)),
    ("left dog", ["dog"], ("on the left",)),
    ("cat near the top", ["cat"], ("at the top",)),
    ("the cup in the top left corner", ["cup"], ("in the top left",)),
    ("the dog at the top right", ["dog"], ("in the top right",)),
    ("the top left one", ["one"], ("in the top left",)),
    ("bottom right pizza", ["pizza"], ("in the bottom right",)),
    ("the middle cup", ["cup"], ("middle",)),
    ("the cup in the center", ["cup"], ("middle",)),
    ("the bigger of the two circles", ["circle"], ("bigger",)),
    ("the larger dog", ["dog"], ("bigger",)),
    ("the smaller cat", ["cat"], ("smaller",)),
    ("the biggest giraffe", ["giraffe"], ("largest",)),
    ("smallest elephant", ["elephant"], ("smallest",)),
    ("the nearest cow", ["cow"], ("closest",)),
    ("the leftmost of the three dogs", ["dog"], ("leftmost",)),
    ("woman in red on the right", ["woman"], ("on the right",)),
    ("the dog on the left of the picture", ["dog"], ("on the left",)),
]


@pytest.mark.parametrize(("text", "expected_heads", "spatial"), SPATIAL_CASES)
def test_spatial_modifiers(backend: str, text: str, expected_heads: list[str],
                           spatial: tuple[str, ...]) -> None:
    graph = parse(text, backend=backend)
    assert heads(graph) == expected_heads
    assert graph.entities[0].spatial == spatial
    assert graph.relations == ()


# (expression, heads, relation triples)
RELATION_CASES = [
    ("the cup left of the plate next to the laptop", ["cup", "plate", "laptop"],
     [("cup", "left of", "plate"), ("plate", "next to", "laptop")]),
    ("the dog which is to the left of the cat", ["dog", "cat"], [("dog", "left of", "cat")]),
    ("the man who is beside the car", ["man", "car"], [("man", "next to", "car")]),
    ("the circle that is over the square", ["circle", "square"],
     [("circle", "above", "square")]),
    ("chair under the table", ["chair", "table"], [("chair", "below", "table")]),
    ("the lamp beneath the shelf", ["lamp", "shelf"], [("lamp", "below", "shelf")]),
    ("the cup nearest to the plate", ["cup", "plate"], [("cup", "closest to", "plate")]),
    ("the little circle nearest the topmost triangle", ["circle", "triangle"],
     [("circle", "closest to", "triangle")]),
    ("cat by the door", ["cat", "door"], [("cat", "next to", "door")]),
    ("the dog near the tree", ["dog", "tree"], [("dog", "next to", "tree")]),
    ("the shape on the right side of the star", ["shape", "star"],
     [("shape", "right of", "star")]),
    ("the white one which is closest to the square", ["one", "square"],
     [("one", "closest to", "square")]),
    ("the girl looking at the table full of drinks", ["girl", "table", "drink"],
     [("girl", "looking at", "table"), ("table", "full of", "drink")]),
    ("man in red shirt next to the woman", ["man", "shirt", "woman"],
     [("man", "in", "shirt"), ("man", "next to", "woman")]),
    ("the dog between the cat and the cow", ["dog", "cat", "cow"],
     [("dog", "between", "cat"), ("dog", "between", "cow")]),
    ("the cat bigger than the dog", ["cat", "dog"], [("cat", "bigger than", "dog")]),
    ("left of the dog", ["object", "dog"], [("object", "left of", "dog")]),
]


@pytest.mark.parametrize(("text", "expected_heads", "expected"), RELATION_CASES)
def test_relations(backend: str, text: str, expected_heads: list[str],
                   expected: list[tuple[str, str, str]]) -> None:
    graph = parse(text, backend=backend)
    assert heads(graph) == expected_heads
    assert triples(graph) == expected


# Free-form constructions (issue 14), with other nouns than the gold set's:
# (expression, heads, relation triples, {head: spatial modifiers})
FREE_FORM_CASES = [
    ("please find the yellow kite", ["kite"], [], {}),
    ("click on the woman with the stroller", ["woman", "stroller"],
     [("woman", "with", "stroller")], {}),
    ("the puppy napping on the rug", ["puppy", "rug"], [("puppy", "on", "rug")], {}),
    ("a lamp hanging above the table", ["lamp", "table"], [("lamp", "above", "table")], {}),
    ("the laptop the girl is using", ["laptop", "girl"], [("girl", "using", "laptop")], {}),
    ("the sofa that the cat is sleeping on", ["sofa", "cat"], [("cat", "on", "sofa")], {}),
    ("the leash held by the boy", ["leash", "boy"], [("boy", "holding", "leash")], {}),
    ("of the four cups, the second from the left", ["cup"], [],
     {"cup": ("second from the left",)}),
    ("of the sheep, the smallest one", ["sheep"], [], {"sheep": ("smallest",)}),
    ("the shortest of the candles", ["candle"], [], {"candle": ("shortest",)}),
    ("the mug on the right shelf", ["mug", "shelf"], [("mug", "on", "shelf")],
     {"shelf": ("on the right",)}),
    ("the girl holding a balloon on the right", ["girl", "balloon"],
     [("girl", "holding", "balloon")], {"girl": ("on the right",)}),
    ("the cat with a mouse in its paws", ["cat", "mouse", "paw"],
     [("cat", "with", "mouse"), ("mouse", "in", "paw")], {}),
    ("the waiter holding a tray above the counter", ["waiter", "tray", "counter"],
     [("waiter", "holding", "tray"), ("tray", "above", "counter")], {}),
    ("the fire hydrant near the stop sign", ["hydrant", "sign"],
     [("hydrant", "next to", "sign")], {}),
    ("the woman in a blue top at the bottom", ["woman", "top"], [("woman", "in", "top")],
     {"woman": ("at the bottom",)}),
    ("the orange next to the bowl", ["orange", "bowl"], [("orange", "next to", "bowl")], {}),
    ("the orange cup", ["cup"], [], {}),
    ("the bookshelves behind the desk", ["bookshelf", "desk"],
     [("bookshelf", "behind", "desk")], {}),
    ("the boy skating on the left", ["boy"], [], {"boy": ("on the left",)}),
    ("the runner farthest from the camera", ["runner"], [], {"runner": ("farthest",)}),
]


@pytest.mark.parametrize(("text", "expected_heads", "expected", "modifiers"),
                         FREE_FORM_CASES)
def test_free_form_constructions(backend: str, text: str, expected_heads: list[str],
                                 expected: list[tuple[str, str, str]],
                                 modifiers: dict[str, tuple[str, ...]]) -> None:
    graph = parse(text, backend=backend)
    assert heads(graph) == expected_heads
    assert triples(graph) == expected
    assert {e.head: e.spatial for e in graph.entities if e.spatial} == modifiers


def test_a_participle_without_object_describes_the_referent(backend: str) -> None:
    graph = parse("the boy skating on the left", backend)
    assert "skating" in graph.entities[0].attributes


def test_relational_entities_keep_their_modifiers(backend: str) -> None:
    graph = parse("the medium diamond which is to the left of the lowest circle", backend)
    assert graph == SceneGraph(
        (Entity("the medium diamond", "diamond", ("medium",)),
         Entity("the lowest circle", "circle", (), ("bottommost",))),
        (Relation(0, "left of", 1),))


def test_one_word_expressions(backend: str) -> None:
    assert parse("dog", backend) == SceneGraph((Entity("dog", "dog"),))
    # a bare spatial word names an unnamed object: head "object"
    assert parse("left", backend) == SceneGraph(
        (Entity("left", "object", (), ("on the left",)),))
    assert parse("Leftmost.", backend).entities[0].spatial == ("leftmost",)
    assert parse("object", backend) == SceneGraph((Entity("object", "object"),))


def test_typos_and_wordless_input_do_not_crash(backend: str) -> None:
    graph = parse("teh dgo on teh left", backend)
    assert isinstance(graph, SceneGraph) and graph.entities
    assert parse("zzzz qqqq", backend).entities
    # nothing that could pick an object: no structure (callers fall back), not an error
    assert parse("of the", backend) == SceneGraph()


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "?!..."])
def test_empty_expression_is_refused(text: str) -> None:
    with pytest.raises(ParseError, match="no words"):
        parse(text, backend="rules")


def test_long_expression_is_refused_not_truncated() -> None:
    at_limit = ("dog " * (MAX_CHARS // 4))[:MAX_CHARS]
    assert parse(at_limit, backend="rules").entities
    with pytest.raises(ParseError, match=str(MAX_CHARS)):
        parse(at_limit + "x", backend="rules")
    with pytest.raises(ParseError, match="expression #1"):
        get_parser("rules").parse_many(["dog", ""])


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="auto, spacy, rules"):
        ExpressionParser("nltk")


def test_auto_falls_back_to_rules_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'spacy'")

    monkeypatch.setattr(spacy_backend, "load_spacy_backend", missing)
    monkeypatch.setattr(parser_module, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match=r"pip install 'refground\[parse\]'"):
        first = ExpressionParser("auto")
    assert first.backend == "rules"
    assert first.parse("the leftmost dog").entities[0].spatial == ("leftmost",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ExpressionParser("auto").backend == "rules"  # warned once per process
    with pytest.raises(MissingDependencyError, match=r"refground\[parse\]"):
        ExpressionParser("spacy")


def test_spacy_backend_uses_our_pipeline() -> None:
    parser = get_parser("spacy")
    assert parser.backend == "spacy"
    impl = parser._impl
    assert isinstance(impl, spacy_backend.SpacyBackend)
    assert impl.model in spacy_backend.SPACY_MODELS
    doc = impl.nlp("the dog")
    assert impl.sng.nlp(doc) is doc  # SceneGraphParser is handed our parsed docs


MANY = [text for text, _, _ in SPATIAL_CASES[:12]] + [text for text, _, _ in RELATION_CASES]


def test_parse_many_equals_one_by_one_in_order(backend: str) -> None:
    parser = get_parser(backend)
    assert parser.parse_many(MANY, batch_size=4) == [parser.parse(text) for text in MANY]


def test_two_processes_equal_one(backend: str) -> None:
    parser = get_parser(backend)
    one = parser.parse_many(MANY, batch_size=8)
    assert parser.parse_many(MANY, batch_size=8, processes=2) == one


def test_graphs_for_uses_cache_then_memo_then_parser() -> None:
    """The cache answers first, even for a text this process has parsed and memoised."""
    sentinel = SceneGraph((Entity("cached", "cached"),))
    texts = ["The  Dog", "left cat", "", "left cat"]
    graphs = graphs_for(texts, cache={"the dog": sentinel}, backend="rules")
    assert graphs[0] is sentinel
    assert graphs[1] == parse("left cat", backend="rules") and graphs[3] == graphs[1]
    assert graphs[2] == SceneGraph()  # refused text: no structure, no error
    # "left cat" is memoised now; a cache entry for it still wins
    assert graphs_for(["left cat"], cache={"left cat": sentinel}, backend="rules") == [sentinel]
    assert graphs_for(["left cat"], backend="rules") == [graphs[1]]


def test_cache_round_trip(tmp_path: Path) -> None:
    path = graph_cache_path(tmp_path / "synthref", "rules")
    assert path == tmp_path / "synthref" / "graphs.rules.jsonl"
    mapping = {text: parse(text, backend="rules") for text in MANY[:6]}
    mapping["of the"] = SceneGraph()
    write_graph_cache(path, mapping)
    assert load_graph_cache(path) == mapping
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"text": MANY[0], "graph": mapping[MANY[0]].to_dict()}


@pytest.mark.parametrize("bad_line", ["not json", '{"text": "dog"}', '{"text": 3, "graph": {}}',
                                      '{"text": "dog", "graph": {"entities": [{"span": 1}]}}'])
def test_malformed_cache_names_the_line(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "graphs.rules.jsonl"
    good = json.dumps({"text": "dog", "graph": parse("dog", backend="rules").to_dict()})
    path.write_text(f"{good}\n\n{bad_line}\n")
    with pytest.raises(GraphCacheError, match=r"line 3.*prepare-graphs"):
        load_graph_cache(path)
    with pytest.raises(GraphCacheError, match="not found"):
        load_graph_cache(tmp_path / "missing.jsonl")


def test_cli_parse_prints_the_graph_as_json(backend: str) -> None:
    text = "the girl looking at the table full of drinks"
    result = CliRunner().invoke(app, ["parse", text, "--backend", backend])
    assert result.exit_code == 0, result.output
    assert SceneGraph.from_dict(json.loads(result.stdout)) == parse(text, backend=backend)
    empty = CliRunner().invoke(app, ["parse", "  ", "--backend", backend])
    assert isinstance(empty.exception, ParseError)


# --- SynthRef ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth_language")
    generate_synthref(root, seed=11, num_images=24, workers=1)
    return root


def simple_heads(text: str) -> list[str]:
    """Gold heads without any parser: SynthRef's shape nouns and generic heads, in order."""
    nouns = set(lexicon.SYNTH_SHAPES) | set(vocabulary.GENERIC_HEADS)
    found = []
    for word in text.lower().split():
        for candidate in (word, word[:-1], word[:-2]):
            if candidate in nouns:
                found.append(candidate)
                break
    return found


def f1(predicted: list[list[str]], gold: list[list[str]]) -> float:
    tp = sum(sum((Counter(p) & Counter(g)).values()) for p, g in zip(predicted, gold,
                                                                      strict=True))
    total = sum(map(len, predicted)) + sum(map(len, gold))
    return 2 * tp / total


def test_synthref_heads_and_spatial(synth_root: Path, backend: str) -> None:
    samples = [s for split in ("train", "test")
               for s in synthref_dataset(synth_root).split(split)]
    assert len(samples) >= 80
    texts = [s.expression for s in samples]
    gold_heads = [simple_heads(text) for text in texts]
    assert gold_heads == [heads(s.graph) for s in samples if s.graph is not None]
    graphs = get_parser(backend).parse_many(texts)
    assert f1([heads(g) for g in graphs], gold_heads) >= 0.9
    gold_spatial = [sorted(s.graph.entities[0].spatial) for s in samples if s.graph]
    assert f1([sorted(g.entities[0].spatial) for g in graphs], gold_spatial) >= 0.9


def test_cli_prepare_graphs_writes_the_cache(synth_root: Path) -> None:
    result = CliRunner().invoke(app, ["prepare-graphs", "--data", str(synth_root),
                                      "--backend", "rules"])
    assert result.exit_code == 0, result.output
    assert "sentences/s" in result.output
    cache = load_graph_cache(synth_root / "synthref" / "graphs.rules.jsonl")
    sample = synthref_dataset(synth_root).split("test").samples[0]
    assert graphs_for([sample.expression], cache, backend="rules")[0] == sample.graph
