"""Metrics against an independent computation; the runner's files, resume, and methods."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from refground.data import Dataset
from refground.errors import ConfigError, UnknownNameError
from refground.evaluate.metrics import compute_metrics
from refground.evaluate.records import EvalRecord
from refground.evaluate.runner import evaluate, read_predictions
from refground.methods import METHODS, Method, build_method
from refground.types import Annotation, Prediction, Sample
from tests.test_boxes import py_iou


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        anns = []
        for j in range(rng.randint(1, 5)):
            x, y = rng.uniform(0, 200), rng.uniform(0, 150)
            anns.append(Annotation(100 * i + j, (x, y, x + rng.uniform(5, 90),
                                                 y + rng.uniform(5, 80)),
                                   rng.choice([1, 2]), rng.choice(["a", "b"])))
        target = rng.choice(anns)
        samples.append(Sample(
            sample_id=f"s{i}", image=Path(f"img{i}.png"), width=300, height=240,
            expression=f"thing {i}", gt_box=target.box, ann_id=target.ann_id,
            category_id=target.category_id, annotations=tuple(anns),
            expression_type=rng.choice(["attribute", "relation", None]),
        ))
    return samples


class JitterMethod(Method):
    """Predicts the gt box shifted by a random amount: IoUs spread over [0, 1]."""

    name = "jitter"

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.seen: list[str] = []
        self.fail_after = fail_after

    def predict(self, samples: Sequence[Sample]) -> list[Prediction]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        out = []
        for s in samples:
            shift = (int(s.sample_id[1:]) * 7919 % 100) / 100 * 60
            x0, y0, x1, y1 = s.gt_box
            out.append(Prediction(s.sample_id, (x0 + shift, y0, x1 + shift, y1), score=0.5))
            self.seen.append(s.sample_id)
        return out


def test_metrics_match_independent_computation() -> None:
    samples = make_samples(200)
    result = evaluate(JitterMethod(), samples, progress=False)
    ious = []
    for s in samples:
        shift = (int(s.sample_id[1:]) * 7919 % 100) / 100 * 60
        x0, y0, x1, y1 = s.gt_box
        ious.append(py_iou([x0 + shift, y0, x1 + shift, y1], list(s.gt_box)))
    ious_np = np.array(ious)
    m = result.metrics
    assert m["n"] == 200
    for t in (0.5, 0.75, 0.9):
        assert m[f"acc@{t}"] == pytest.approx(float((ious_np >= t).mean()))
    assert m["miou"] == pytest.approx(float(ious_np.mean()), abs=1e-5)
    assert 0.05 < m["acc@0.5"] < 0.95  # the check is not vacuous
    by_type = m["by_type"]
    assert set(by_type) == {"attribute", "relation"}
    for name, values in by_type.items():
        mask = np.array([s.expression_type == name for s in samples])
        assert values["n"] == int(mask.sum())
        assert values["acc@0.5"] == pytest.approx(float((ious_np[mask] >= 0.5).mean()))
    for bucket, values in m["by_distractors"].items():
        counts = np.array([s.distractors for s in samples])
        mask = counts >= 3 if bucket == "3+" else counts == int(bucket)
        assert values["miou"] == pytest.approx(float(ious_np[mask].mean()), abs=1e-5)


def test_oracle_is_perfect_and_baselines_are_not(mini_refer: Path) -> None:
    samples = Dataset(mini_refer, "refcocog", "umd").split("test").samples
    oracle = evaluate(build_method("oracle"), samples, progress=False).metrics
    assert oracle["acc@0.5"] == 1.0 and oracle["miou"] == pytest.approx(1.0)
    largest = evaluate(build_method("largest"), samples, progress=False)
    # independent: the largest annotation of image 581857 is ann 17 (120x300)
    assert [r.pred_box for r in largest.records] == [(300.0, 40.0, 420.0, 340.0)] * 4
    assert largest.metrics["acc@0.5"] == pytest.approx(3 / 4)
    center = evaluate(build_method("center"), samples, progress=False)
    assert all(len(r.candidates) == 3 for r in center.records)


def test_unknown_method_suggests_a_name() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'oracle'"):
        build_method("orcale")
    assert {"oracle", "center", "largest"} <= set(METHODS.names())


def test_files_written_and_round_trip(tmp_path: Path) -> None:
    samples = make_samples(30)
    result = evaluate(JitterMethod(), samples, tmp_path, batch_size=7, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["acc@0.5"] == result.metrics["acc@0.5"]
    records = read_predictions(tmp_path / "predictions.jsonl")
    assert tuple(records) == result.records
    assert compute_metrics(records) == compute_metrics(result.records)


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    samples = make_samples(50)
    reference = evaluate(JitterMethod(), samples, progress=False).metrics

    crashing = JitterMethod(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(crashing, samples, tmp_path, batch_size=8, progress=False)
    assert len(read_predictions(tmp_path / "predictions.jsonl")) == 24
    with open(tmp_path / "predictions.jsonl", "a") as stream:  # a torn write at the end
        stream.write('{"sample_id": "s24", "expr')

    resumed = JitterMethod()
    result = evaluate(resumed, samples, tmp_path, batch_size=8, resume=True, progress=False)
    assert resumed.seen == [s.sample_id for s in samples[24:]]
    assert result.metrics == reference
    assert len(read_predictions(tmp_path / "predictions.jsonl")) == 50


def test_resume_refuses_records_of_another_method_or_split(tmp_path: Path) -> None:
    samples = make_samples(20)
    evaluate(JitterMethod(), samples[:8], tmp_path, progress=False,
             run_info={"split": "test", "options": {"jitter": 1}})
    before = (tmp_path / "predictions.jsonl").read_text()
    with pytest.raises(ConfigError, match=r'method: "jitter" -> "oracle"'):
        evaluate(build_method("oracle"), samples, tmp_path, resume=True, progress=False,
                 run_info={"split": "test", "options": {"jitter": 1}})
    with pytest.raises(ConfigError, match=r'options: \{"jitter": 1\} -> \{"jitter": 2\}'):
        evaluate(JitterMethod(), samples, tmp_path, resume=True, progress=False,
                 run_info={"split": "test", "options": {"jitter": 2}})
    assert (tmp_path / "predictions.jsonl").read_text() == before
    resumed = JitterMethod()
    evaluate(resumed, samples, tmp_path, resume=True, progress=False,
             run_info={"split": "test", "options": {"jitter": 1}})
    assert resumed.seen == [s.sample_id for s in samples[8:]]


def test_record_rejects_reordered_predictions() -> None:
    sample = make_samples(2)
    with pytest.raises(ValueError, match="keep the batch order"):
        EvalRecord.from_prediction(sample[0], Prediction("s1", (0, 0, 1, 1)))
