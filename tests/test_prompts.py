"""Tensor visual prompts against PIL: blur, coverage masks, and whole views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from refground.errors import ConfigError, ImageError
from refground.vision.preprocess import ClipPreprocessConfig, pil_to_tensor, preprocess_tensor
from refground.vision.prompts import (
    Frame,
    PromptStyle,
    gaussian_blur,
    proposal_marks,
    render_views,
    resample_matrix,
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


def test_resample_matrices_reproduce_interpolate() -> None:
    image = torch.rand(1, 3, 50, 70)
    expected = F.interpolate(image, size=(20, 33), mode="bicubic", antialias=True)[0]
    got = torch.einsum("hH,cHW,wW->chw", resample_matrix(50, 20), image[0],
                       resample_matrix(70, 33))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("box", [(250, 372, 312, 425), (410, 150, 435, 173), (10, 10, 13, 30),
                                 (5, 5, 200, 90)])
def test_marks_are_the_pixels_pil_draws(box: tuple[int, int, int, int]) -> None:
    def full(mask: torch.Tensor, marks: object) -> torch.Tensor:
        canvas = torch.zeros(480, 640, dtype=torch.bool)
        canvas[marks.top:marks.bottom, marks.left:marks.right] = mask
        return canvas

    for marker, draw in (("ellipse", "ellipse"), ("rectangle", "rectangle")):
        marks = proposal_marks(box, PromptStyle(marker=marker), 480, 640)
        reference = Image.new("L", (640, 480), 0)
        getattr(ImageDraw.Draw(reference), draw)(box, outline=255, width=3)
        expected = torch.from_numpy(np.array(reference) > 0)
        differ = int((full(marks.ring, marks) ^ expected).sum())
        assert differ <= 0.05 * int(expected.sum()), (marker, differ)
    pasted = Image.new("L", (640, 480), 0)
    pasted.paste(Image.new("L", (box[2] - box[0], box[3] - box[1]), 255), box[:2])
    window = full(proposal_marks(box, PromptStyle(), 480, 640).window, marks)
    assert torch.equal(window, torch.from_numpy(np.array(pasted) > 0))


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
            # equal up to PIL's uint8 rounding, except near the few ellipse pixels PIL's
            # rasteriser draws differently (test_marks_are_the_pixels_pil_draws bounds them)
            assert difference.mean() < 0.002, (p, background)
            assert difference.max() < (0.4 if style.marker == "ellipse" else 0.01)


def test_normalised_views_equal_normalised_output(scene: Image.Image) -> None:
    config = ClipPreprocessConfig()
    pixels = pil_to_tensor(scene).float() / 255
    boxes = torch.tensor([[10.0, 10.0, 200.0, 120.0]])
    plain = render_views(pixels, boxes, PromptStyle(), config)
    normalised = render_views(pixels, boxes, PromptStyle(), config, normalize=True)
    mean = torch.tensor(config.image_mean).view(3, 1, 1)
    std = torch.tensor(config.image_std).view(3, 1, 1)
    torch.testing.assert_close(normalised, (plain - mean) / std, atol=1e-5, rtol=1e-5)


def test_frame_is_resize_then_centre_crop() -> None:
    frame = Frame.for_image(640, 480, ClipPreprocessConfig())
    assert (frame.resized_width, frame.resized_height) == (298, 224)
    assert (frame.left, frame.top, frame.width, frame.height) == (37, 0, 224, 224)
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
