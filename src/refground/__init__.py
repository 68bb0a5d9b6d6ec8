"""refground: visual grounding of referring expressions under one data model and one protocol."""

from refground.api import Grounder
from refground.errors import RefgroundError
from refground.types import (
    Annotation,
    Candidate,
    Entity,
    Prediction,
    Relation,
    Sample,
    SceneGraph,
)

__version__ = "0.1.0"

__all__ = [
    "Annotation",
    "Candidate",
    "Entity",
    "Grounder",
    "Prediction",
    "RefgroundError",
    "Relation",
    "Sample",
    "SceneGraph",
    "__version__",
]
