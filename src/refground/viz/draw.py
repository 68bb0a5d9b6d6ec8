"""Boxes and captions drawn onto an image with Pillow: one prediction, or ground truth against
a prediction.

Frames are drawn *around* a box, not over it: the object a box names stays fully visible, and
a one-pixel dark halo keeps a frame readable on any background. Sizes (line widths, font) scale
with the image, so a 320-pixel thumbnail and a 1280-pixel photo read alike. Nothing here needs
matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from refground.api import GroundImage, as_pil
from refground.types import Candidate, Prediction

RGB = tuple[int, int, int]

CHOSEN: RGB = (255, 20, 147)      # the answer: saturated deep pink, rare in photos and SynthRef
RUNNER_UP: RGB = (255, 215, 0)    # the next candidates: gold, faded by rank
GT: RGB = (0, 210, 0)             # ground truth: green
PREDICTED: RGB = (255, 0, 0)      # a prediction judged against the ground truth: red
HALO: RGB = (0, 0, 0)
CAPTION_BACKGROUND: RGB = (24, 24, 24)
CAPTION_TEXT: RGB = (255, 255, 255)

#: Opacity of the 1st, 2nd, 3rd, ... runner-up frame (the last value repeats).
RUNNER_UP_ALPHAS = (0.8, 0.6, 0.45, 0.3)

Placement = Literal["outside", "inside"]


@dataclass(frozen=True)
class Style:
    """Sizes derived from the image, so every picture has the same proportions."""

    thick: int
    thin: int
    font_size: int

    @classmethod
    def for_size(cls, width: int, height: int) -> Style:
        short = min(width, height)
        thick = max(3, round(short / 110))
        return cls(thick=thick, thin=max(1, round(thick / 2.5)),
                   font_size=min(40, max(12, round(width / 34))))


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (a fixed-size bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def frame_rect(box: Sequence[float], width: int, image_size: tuple[int, int],
               placement: Placement = "outside") -> tuple[int, int, int, int]:
    """The inclusive pixel rectangle whose ``width``-pixel outline frames ``box``.

    ``outside``: the outline occupies the ``width`` pixels just outside the box (columns
    ``x0 - width .. x0 - 1`` and ``x1 .. x1 + width - 1``), pushed inside where the box touches
    the image border. ``inside``: the ``width`` pixels just inside it.
    """
    w_img, h_img = image_size
    x0, y0, x1, y1 = (round(v) for v in box)
    if placement == "outside":
        left, top, right, bottom = x0 - width, y0 - width, x1 + width - 1, y1 + width - 1
    else:
        left, top, right, bottom = x0, y0, x1 - 1, y1 - 1
    left, top = min(max(left, 0), w_img - 1), min(max(top, 0), h_img - 1)
    right, bottom = max(min(right, w_img - 1), left), max(min(bottom, h_img - 1), top)
    return left, top, right, bottom


def draw_frame(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple[int, ...],
               width: int, image_size: tuple[int, int], placement: Placement = "outside",
               halo: bool = True) -> tuple[int, int, int, int]:
    """Frame ``box`` (see :func:`frame_rect`), with a 1-pixel dark halo outside the frame."""
    rect = frame_rect(box, width, image_size, placement)
    if halo:
        left, top, right, bottom = rect
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=HALO, width=1)
    draw.rectangle(rect, outline=colour, width=width)
    return rect


def draw_tag(draw: ImageDraw.ImageDraw, rect: tuple[int, int, int, int], text: str,
             colour: tuple[int, ...], size: int, image_size: tuple[int, int]) -> None:
    """A small filled label at the frame's top-left corner: above it when there is room."""
    face = font(size)
    pad = max(1, size // 5)
    _, top_ink, text_w, text_h = draw.textbbox((0, 0), text, font=face)
    tag_w, tag_h = text_w + 2 * pad, text_h - top_ink + 2 * pad
    left, top = rect[0], rect[1] - tag_h
    if top < 0:
        top = rect[1]
    left = max(0, min(left, image_size[0] - tag_w))
    draw.rectangle((left, top, left + tag_w - 1, top + tag_h - 1), fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    if len(colour) == 4:  # a translucent tag: translucent text too
        ink = (*ink, colour[3])
    draw.text((left + pad, top + pad - top_ink), text, fill=ink, font=face)


def wrap_text(text: str, face: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: float,
              max_lines: int | None = None) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; overlong words are cut; the last kept line
    ends in an ellipsis when ``max_lines`` drops some."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if face.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while face.getlength(word) > max_width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and face.getlength(word[:cut]) > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and face.getlength(last + "…") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines or [""]


def with_caption(image: Image.Image, text: str, size: int,
                 max_lines: int | None = None) -> Image.Image:
    """``image`` with a dark band below it holding ``text`` wrapped to the image's width."""
    face = font(size)
    pad = max(2, size // 2)
    lines = wrap_text(text, face, image.width - 2 * pad, max_lines)
    line_height = round(size * 1.25)
    band = Image.new("RGB", (image.width, 2 * pad + line_height * len(lines)),
                     CAPTION_BACKGROUND)
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(lines):
        draw.text((pad, pad + row * line_height), line, fill=CAPTION_TEXT, font=face)
    out = Image.new("RGB", (image.width, image.height + band.height))
    out.paste(image, (0, 0))
    out.paste(band, (0, image.height))
    return out


def runner_ups_of(prediction: Prediction, count: int) -> list[Candidate]:
    """The best ``count`` candidates other than the chosen box, best first."""
    chosen: list[Candidate] = []
    for candidate in prediction.candidates:
        if len(chosen) >= count:
            break
        box = tuple(candidate.box)
        if box != tuple(prediction.box) and all(box != tuple(c.box) for c in chosen):
            chosen.append(candidate)
    return chosen


def draw_prediction(image: GroundImage, prediction: Prediction, text: str,
                    runner_ups: int = 3, max_caption_lines: int | None = None) -> Image.Image:
    """The prediction on its image: the chosen box thick and saturated with its score, the
    next ``runner_ups`` candidates thin and increasingly faded with theirs, ``text`` in a
    caption band.

    Runner-ups show what the method hesitated between, which is what one looks for when an
    answer is wrong; fading them by rank keeps the answer unmistakable.
    """
    base = as_pil(image).convert("RGBA")
    size = base.size
    style = Style.for_size(*size)
    others = runner_ups_of(prediction, runner_ups)
    tag_size = max(10, round(style.font_size * 0.8))
    for rank in reversed(range(len(others))):  # faintest first: brighter frames stay on top
        alpha = RUNNER_UP_ALPHAS[min(rank, len(RUNNER_UP_ALPHAS) - 1)]
        colour = (*RUNNER_UP, round(255 * alpha))
        overlay = Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        rect = draw_frame(draw, others[rank].box, colour, style.thin, size, halo=False)
        draw_tag(draw, rect, f"{others[rank].score:.2f}", colour, round(tag_size * 0.8), size)
        base = Image.alpha_composite(base, overlay)
    picture = base.convert("RGB")
    draw = ImageDraw.Draw(picture)
    rect = draw_frame(draw, prediction.box, CHOSEN, style.thick, size)
    label = f"{prediction.score:.2f}" + (f" ({prediction.fallback})" if prediction.fallback
                                         else "")
    draw_tag(draw, rect, label, CHOSEN, tag_size, size)
    return with_caption(picture, f"“{text}”", style.font_size, max_caption_lines)


def draw_gt_vs_pred(image: GroundImage, gt_box: Sequence[float] | None,
                    pred_box: Sequence[float], caption: str,
                    max_caption_lines: int | None = None) -> Image.Image:
    """Ground truth (green) against a prediction (red), with ``caption`` below.

    The ground-truth frame sits just outside its box and the prediction's just inside, so a
    perfect prediction shows both colours side by side instead of one hiding the other.
    """
    picture = as_pil(image)
    size = picture.size
    style = Style.for_size(*size)
    draw = ImageDraw.Draw(picture)
    if gt_box is not None:
        draw_frame(draw, gt_box, GT, style.thick, size, "outside")
    draw_frame(draw, pred_box, PREDICTED, style.thick, size, "inside", halo=False)
    return with_caption(picture, caption, style.font_size, max_caption_lines)
