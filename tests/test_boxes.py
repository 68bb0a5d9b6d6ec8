"""Box ops against independent pure-Python formulas, on random and degenerate boxes."""

from __future__ import annotations

import random

import pytest
import torch

from refground import boxes as B
from refground.errors import BoxError


def py_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def py_giou(a: list[float], b: list[float]) -> float:
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter_w * inter_h
    iou = inter_w * inter_h / union if union > 0 else 0.0
    return iou - ((hull - union) / hull if hull > 0 else 0.0)


def random_boxes(rng: random.Random, n: int, degenerate: bool = True) -> list[list[float]]:
    out = []
    for _ in range(n):
        x0, y0 = rng.uniform(-50, 300), rng.uniform(-50, 300)
        w = 0.0 if degenerate and rng.random() < 0.15 else rng.uniform(0, 120)
        h = 0.0 if degenerate and rng.random() < 0.15 else rng.uniform(0, 120)
        out.append([x0, y0, x0 + w, y0 + h])
    return out


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


def test_iou_matrix_matches_formula(rng: random.Random) -> None:
    a, b = random_boxes(rng, 40), random_boxes(rng, 30)
    got = B.iou_matrix(B.as_tensor(a), B.as_tensor(b))
    expected = torch.tensor([[py_iou(x, y) for y in b] for x in a])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_giou_matrix_matches_formula(rng: random.Random) -> None:
    a, b = random_boxes(rng, 25), random_boxes(rng, 20)
    got = B.giou_matrix(B.as_tensor(a), B.as_tensor(b))
    expected = torch.tensor([[py_giou(x, y) for y in b] for x in a])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got <= 1 + 1e-6).all() and (got >= -1 - 1e-6).all()


def test_zero_area_box_never_matches_even_itself() -> None:
    point = B.as_tensor([10.0, 10.0, 10.0, 10.0])
    line = B.as_tensor([10.0, 10.0, 30.0, 10.0])
    assert float(B.iou(point, point)) == 0.0
    assert float(B.iou(line, B.as_tensor([0.0, 0.0, 40.0, 40.0]))) == 0.0
    assert float(B.area(line)) == 0.0


def test_identical_boxes_have_iou_one(rng: random.Random) -> None:
    boxes = B.as_tensor(random_boxes(rng, 20, degenerate=False))
    torch.testing.assert_close(B.iou(boxes, boxes), torch.ones(20))
    torch.testing.assert_close(B.giou(boxes, boxes), torch.ones(20))


def test_inverted_box_raises_with_row() -> None:
    with pytest.raises(BoxError, match=r"row \[1\]"):
        B.as_tensor([[0, 0, 10, 10], [20, 5, 10, 15]])
    with pytest.raises(BoxError, match="NaN"):
        B.as_tensor([0, 0, float("nan"), 1])
    with pytest.raises(BoxError, match="shape"):
        B.as_tensor([[0, 0, 1]])


@pytest.mark.parametrize(
    ("forward", "backward"),
    [(B.xyxy_to_xywh, B.xywh_to_xyxy), (B.xyxy_to_cxcywh, B.cxcywh_to_xyxy)],
)
def test_format_round_trips(rng: random.Random, forward, backward) -> None:
    boxes = B.as_tensor(random_boxes(rng, 50))
    torch.testing.assert_close(backward(forward(boxes)), boxes, atol=1e-4, rtol=0)


def test_conversions_against_formulas() -> None:
    xyxy = B.as_tensor([[10.0, 20.0, 50.0, 80.0]])
    assert B.xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 40.0, 60.0]]
    assert B.xyxy_to_cxcywh(xyxy).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    norm = B.normalize(xyxy, 100, 200)
    torch.testing.assert_close(norm, torch.tensor([[0.1, 0.1, 0.5, 0.4]]))
    torch.testing.assert_close(B.denormalize(norm, 100, 200), xyxy)


def test_clip_to_image_and_outside_boxes() -> None:
    boxes = B.as_tensor([[-10, -5, 50, 500], [300, 300, 400, 400]])
    clipped = B.clip_to_image(boxes, 200, 100)
    assert clipped.tolist() == [[0, 0, 50, 100], [200, 100, 200, 100]]
    assert float(B.area(clipped[1])) == 0.0  # wholly outside -> zero area on the border


def test_union_and_enclosing_box() -> None:
    boxes = B.as_tensor([[5, 6, 10, 12], [0, 8, 7, 9], [3, 1, 4, 20]])
    assert B.union_box(boxes).tolist() == [0, 1, 10, 20]
    assert B.enclosing_box(boxes[0], boxes[1]).tolist() == [0, 6, 10, 12]
    with pytest.raises(BoxError):
        B.union_box(torch.zeros(0, 4))


def py_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(py_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def test_nms_matches_greedy_reference(rng: random.Random) -> None:
    for _ in range(10):
        boxes = random_boxes(rng, 60, degenerate=False)
        scores = [rng.random() for _ in boxes]
        got = B.nms(B.as_tensor(boxes), torch.tensor(scores), 0.4).tolist()
        assert got == py_nms(boxes, scores, 0.4)
    assert B.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
