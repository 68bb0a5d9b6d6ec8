"""The straightforward visual-prompt pipeline, as first written (docs/methods.md): PIL, one image
and one proposal at a time, the model's own image processor, one CLIP call per view.

It is the behaviour the fast method must reproduce (tests/test_visual_prompt.py) and the
baseline bench/visual_prompt.py times it against. Keep it simple rather than fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor

from refground.images import load_image
from refground.types import Sample
from refground.vision.clip import ClipEncoder
from refground.vision.prompts import PromptStyle
from refground.vision.proposals import Proposer


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


def reference_view_scores(encoder: ClipEncoder, samples: Sequence[Sample], proposer: Proposer,
                          style: PromptStyle, prefix: str = "This is ",
                          debias_texts: Sequence[str] = ()) -> list[Tensor]:
    """Per-proposal, per-background visual-prompt scores (proposals x backgrounds), computed
    the slow, obvious way.

    For every sample, every proposal and every background: render with PIL, preprocess with the
    model's Hugging Face image processor, encode that single view, compute the debiased
    similarity against the full [expression; debias expressions] matrix.
    """
    debias = (encoder.encode_texts([prefix + text for text in debias_texts])
              if debias_texts else None)
    results = []
    for sample in samples:
        image = load_image(sample.image_path)
        proposals = proposer.propose([image], [sample])[0]
        text = encoder.encode_texts([prefix + sample.expression])
        rows = text if debias is None else torch.cat((text, debias))
        scores = []
        for box in proposals.boxes.tolist():
            view_scores = []
            for background in style.backgrounds:
                view = render_view_pil(image, box, style, background)
                feature = encoder.encode_image_tensors(encoder.preprocess_pil([view]))[0]
                similarities = rows @ feature
                debiased = similarities[0] - similarities.mean() if debias is not None else (
                    similarities[0])
                view_scores.append(float(debiased))
            scores.append(view_scores)
        results.append(torch.tensor(scores).reshape(len(scores), len(style.backgrounds)))
    return results


def aggregate_views(view_scores: Sequence[Tensor], aggregate: str = "max") -> list[Tensor]:
    """One score per proposal: the max or the mean over its views."""
    # the mean in float64, as the sum of Python floats it was
    return [views.max(dim=1).values if aggregate == "max" else
            views.double().mean(dim=1).float() for views in view_scores]


def reference_scores(encoder: ClipEncoder, samples: Sequence[Sample], proposer: Proposer,
                     style: PromptStyle, prefix: str = "This is ",
                     debias_texts: Sequence[str] = (), aggregate: str = "max") -> list[Tensor]:
    """Per-proposal visual-prompt scores: :func:`reference_view_scores`, aggregated."""
    return aggregate_views(reference_view_scores(encoder, samples, proposer, style, prefix,
                                                 debias_texts), aggregate)
