"""Tensor visual prompts against PIL: blur, coverage masks, and whole views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from refground.errors import ConfigError, ImageError
from refground.vision.preprocess import ClipPreprocessConfig, pil_to_tensor, preprocess_tensor
from refground.vision.prompts import (
    Frame,
    PromptStyle,
    ellipse_ring_coverage,
    gaussian_blur,
    rectangle_coverage,
    render_views,
)
from tests.reference_visual_prompt import render_view_pil


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (500, 360), (60, 130, 70))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, 460, 2))
        draw.ellipse((x, y % 330, x + 35, y % 330 + 30),
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.mark.parametrize("radius", [1.0, 4.5, 20.0])
def test_blur_matches_pil_gaussian_blur(scene: Image.Image, radius: float) -> None:
    expected = np.asarray(scene.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    ours = gaussian_blur(pil_to_tensor(scene).float()[None], radius)[0].permute(1, 2, 0).numpy()
    # PIL rounds to uint8 after each of its passes; we keep floats
    assert np.abs(ours - expected).max() < 2.0
    assert np.abs(ours - expected).mean() < 0.5


def test_rectangle_coverage_is_exact_area() -> None:
    boxes = torch.tensor([[2.25, 3.5, 10.75, 7.0], [-5.0, -5.0, 3.0, 2.5], [20.0, 20, 30, 30]])
    coverage = rectangle_coverage(boxes, 16, 16)
    # independent: area of each box clipped to the 16x16 frame
    clipped = boxes.clamp(0, 16)
    areas = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    torch.testing.assert_close(coverage.sum((1, 2)), areas)
    assert coverage[0, 4, 5] == 1.0 and coverage[0, 3, 2] == pytest.approx(0.5 * 0.75)


def test_ellipse_ring_area_close_to_analytic() -> None:
    boxes = torch.tensor([[10.0, 20.0, 110.0, 80.0]])
    ring = ellipse_ring_coverage(boxes, 3.0, 100, 130)
    # ring area = pi*a*b - pi*(a-3)*(b-3)
    expected = np.pi * (50 * 30 - 47 * 27)
    assert float(ring.sum()) == pytest.approx(expected, rel=0.03)
    assert float(ring[0, 50, 60]) == 0.0  # the centre is hollow
    solid = ellipse_ring_coverage(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 3.0, 8, 8)
    assert float(solid[0, 2, 2]) == 1.0  # stroke wider than the radius fills it


@pytest.mark.parametrize("style", [
    PromptStyle(),
    PromptStyle(marker="rectangle", backgrounds=("none", "gray"), stroke=5),
    PromptStyle(marker="none", backgrounds=("blur",), sharp_window=False, blur_radius=8),
])
@pytest.mark.parametrize("config", [
    ClipPreprocessConfig(),  # resize the short side + centre crop (OpenAI CLIP)
    ClipPreprocessConfig(shortest_edge=None, resize_to=(96, 96), crop_size=None),  # squash
])
def test_views_match_pil_reference(scene: Image.Image, style: PromptStyle,
                                   config: ClipPreprocessConfig) -> None:
    boxes = torch.tensor([[120.0, 80.0, 260.0, 210.0], [400.0, 20.0, 490.0, 300.0]])
    views = render_views(pil_to_tensor(scene).float() / 255, boxes, style, config)
    assert views.shape[:3] == (2, len(style.backgrounds), 3)
    unnormalised = ClipPreprocessConfig(**{**config.__dict__, "do_normalize": False})
    for p, box in enumerate(boxes.tolist()):
        for v, background in enumerate(style.backgrounds):
            reference = render_view_pil(scene, box, style, background)
            expected = preprocess_tensor(pil_to_tensor(reference), unnormalised)[0]
            difference = (views[p, v] - expected).abs()
            assert difference.mean() < 0.012, (p, background)


def test_normalised_views_equal_normalised_output(scene: Image.Image) -> None:
    config = ClipPreprocessConfig()
    pixels = pil_to_tensor(scene).float() / 255
    boxes = torch.tensor([[10.0, 10.0, 200.0, 120.0]])
    plain = render_views(pixels, boxes, PromptStyle(), config)
    normalised = render_views(pixels, boxes, PromptStyle(), config, normalize=True)
    mean = torch.tensor(config.image_mean).view(3, 1, 1)
    std = torch.tensor(config.image_std).view(3, 1, 1)
    torch.testing.assert_close(normalised, (plain - mean) / std, atol=1e-5, rtol=1e-5)


def test_frame_maps_boxes_like_resize_then_crop() -> None:
    frame = Frame.for_image(640, 480, ClipPreprocessConfig())
    assert (frame.resized_width, frame.resized_height) == (298, 224)
    assert (frame.left, frame.top) == (37, 0)
    mapped = frame.map_boxes(torch.tensor([[320.0, 240.0, 640.0, 480.0]]))
    torch.testing.assert_close(mapped, torch.tensor([[112.0, 112.0, 261.0, 224.0]]), atol=0.1,
                               rtol=0)
    with pytest.raises(ImageError, match="smaller than"):
        Frame.for_image(10, 10, ClipPreprocessConfig(shortest_edge=None, resize_to=(8, 8),
                                                     crop_size=(16, 16)))


def test_style_validation() -> None:
    with pytest.raises(ConfigError, match="marker"):
        PromptStyle(marker="star")
    with pytest.raises(ConfigError, match="backgrounds"):
        PromptStyle(backgrounds=("sepia",))
    with pytest.raises(ConfigError, match="stroke"):
        PromptStyle(stroke=0)
