"""Harness checks and weak baselines: they need no model, so they anchor every results table.

* ``oracle`` returns the ground-truth box: Acc@0.5 must be 1.0, or the harness is broken.
* ``center`` picks the image annotation whose centre is nearest the image centre.
* ``largest`` picks the largest image annotation.

``center`` and ``largest`` choose among the image's annotated boxes ("ground-truth proposals"),
so their accuracy is the chance level a real method has to beat in that setting.

At predict time ``center`` and ``largest`` read only the annotations' boxes (and the image size);
the categories appear as their candidates' display labels and never in a score, so they stay
honest baselines. ``oracle`` alone reads the gold ``gt_box``: that is its purpose, and it is why
its score says nothing about grounding (tests/test_gold_leakage.py checks both).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch

from refground import boxes as B
from refground.errors import DatasetError
from refground.methods.base import METHODS, Method
from refground.methods.options import NoOptions, parse_config
from refground.types import Candidate, Prediction, Sample


class _Heuristic(Method):
    """A method without options: any option given is an error naming it."""

    config_type = NoOptions

    def __init__(self, **options: object) -> None:
        parse_config(self.config_type, options, self.name)


@METHODS.register("oracle")
class OracleMethod(_Heuristic):
    name = "oracle"
    summary = "the annotated referent itself: the upper bound (needs a dataset's gt box)"
    needs_annotations = True  # type: ignore[assignment]  # (the gt box, in fact)
    demo_order = 10

    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        predictions = []
        for sample in samples:
            if sample.gt_box is None:
                raise DatasetError(f"oracle needs a gt box; sample {sample.sample_id} has none")
            predictions.append(Prediction(sample.sample_id, sample.gt_box, score=1.0))
        return predictions


class _RankAnnotations(_Heuristic):
    """Rank the image's annotated boxes by a score; no annotations -> the whole image."""

    needs_annotations = True  # type: ignore[assignment]

    @abstractmethod
    def score(self, boxes: torch.Tensor, sample: Sample) -> torch.Tensor:
        """Higher is better; one score per annotated box."""

    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        predictions = []
        for sample in samples:
            if not sample.annotations:
                whole = (0.0, 0.0, float(sample.width), float(sample.height))
                predictions.append(Prediction(sample.sample_id, whole, fallback="whole-image"))
                continue
            boxes = B.as_tensor([a.box for a in sample.annotations])
            scores = self.score(boxes, sample)
            order = scores.argsort(descending=True, stable=True).tolist()
            candidates = tuple(
                Candidate(sample.annotations[i].box, float(scores[i]),
                          sample.annotations[i].category)
                for i in order
            )
            best = candidates[0]
            predictions.append(Prediction(sample.sample_id, best.box, best.score, candidates))
        return predictions


@METHODS.register("center")
class CenterMethod(_RankAnnotations):
    name = "center"
    summary = "the candidate box nearest the image centre; reads no text (a baseline)"
    demo_order = 20

    def score(self, boxes: torch.Tensor, sample: Sample) -> torch.Tensor:
        centres = B.xyxy_to_cxcywh(boxes)[:, :2]
        image_centre = torch.tensor([sample.width / 2, sample.height / 2])
        return -(centres - image_centre).norm(dim=-1)


@METHODS.register("largest")
class LargestMethod(_RankAnnotations):
    name = "largest"
    summary = "the largest candidate box; reads no text (a baseline)"
    demo_order = 30

    def score(self, boxes: torch.Tensor, sample: Sample) -> torch.Tensor:
        return B.area(boxes)
