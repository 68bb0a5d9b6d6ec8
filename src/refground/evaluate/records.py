"""One line of ``predictions.jsonl``: everything needed to recompute metrics without the data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from refground import boxes as B
from refground.errors import DatasetError
from refground.types import BoxTuple, GraphUse, Prediction, Sample

TOP_CANDIDATES_KEPT = 5


@dataclass(frozen=True)
class EvalRecord:
    sample_id: str
    expression: str
    pred_box: BoxTuple
    score: float
    gt_box: BoxTuple
    iou: float
    image_id: int | None = None
    ann_id: int | None = None
    ref_id: int | None = None
    sent_id: int | None = None
    image_path: str | None = None
    expression_type: str | None = None
    category: str | None = None
    distractors: int = 0
    fallback: str | None = None
    candidates: tuple[tuple[BoxTuple, float], ...] = ()
    graph_use: GraphUse | None = None

    @classmethod
    def from_prediction(cls, sample: Sample, prediction: Prediction) -> EvalRecord:
        if sample.gt_box is None:
            raise DatasetError(f"sample {sample.sample_id} has no gt box; cannot evaluate it")
        if prediction.sample_id != sample.sample_id:
            raise ValueError(
                f"prediction for {prediction.sample_id!r} returned in place of "
                f"{sample.sample_id!r}: methods must keep the batch order")
        pred = B.as_tensor(prediction.box, "predicted box")
        gt = B.as_tensor(sample.gt_box, "gt box")
        return cls(
            sample_id=sample.sample_id,
            expression=sample.expression,
            pred_box=B.to_tuple(pred),
            score=float(prediction.score),
            gt_box=B.to_tuple(gt),
            iou=float(B.iou(pred, gt)),
            image_id=sample.image_id,
            ann_id=sample.ann_id,
            ref_id=sample.ref_id,
            sent_id=sample.sent_id,
            image_path=None if sample.image_path is None else str(sample.image_path),
            expression_type=sample.expression_type,
            category=sample.category,
            distractors=sample.distractors,
            fallback=prediction.fallback,
            candidates=tuple(
                (B.to_tuple(c.box), float(c.score))
                for c in prediction.candidates[:TOP_CANDIDATES_KEPT]),
            graph_use=prediction.graph_use,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRecord:
        fields = dict(data)
        fields["pred_box"] = tuple(fields["pred_box"])
        fields["gt_box"] = tuple(fields["gt_box"])
        fields["candidates"] = tuple(
            (tuple(box), float(score)) for box, score in fields.get("candidates", ()))
        if fields.get("graph_use") is not None:
            fields["graph_use"] = GraphUse.from_dict(fields["graph_use"])
        return cls(**fields)
