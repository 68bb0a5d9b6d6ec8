"""The straightforward visual-prompt pipeline, as the CLIP notebook wrote it: PIL, one image and
one proposal at a time, the model's own image processor, one CLIP call per view.

It is the behaviour the fast method must reproduce (tests/test_visual_prompt.py) and the
baseline bench/visual_prompt.py times it against. Keep it simple rather than fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFilter

from refground.vision.prompts import PromptStyle


def render_view_pil(image: Image.Image, box: Sequence[float], style: PromptStyle,
                    background: str) -> Image.Image:
    """One view: background treatment, the box pasted back sharp, the marker on top."""
    if "blur" in background:
        view = image.filter(ImageFilter.GaussianBlur(style.blur_radius))
    else:
        view = image.copy()
    if "gray" in background:
        view = view.convert("L").convert("RGB")
    x0, y0, x1, y1 = (round(v) for v in box)
    if style.sharp_window and x1 > x0 and y1 > y0:
        view.paste(image.crop((x0, y0, x1, y1)), (x0, y0))
    draw = ImageDraw.Draw(view)
    width = max(1, round(style.stroke))
    if style.marker == "ellipse":
        draw.ellipse((x0, y0, x1, y1), outline=style.color, width=width)
    elif style.marker == "rectangle":
        draw.rectangle((x0, y0, x1, y1), outline=style.color, width=width)
    return view
