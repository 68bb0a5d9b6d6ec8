"""Fast visual-prompt vs the straightforward per-proposal reference, on the same inputs.

    .venv/bin/python bench/visual_prompt.py [--samples 16] [--images 160] [--clip DIR]
                                            [--one-per-image]

Prints samples/s of each, their ratio, how often they pick the same proposal, and the share of
the fast path's time spent inside the CLIP forward passes (the rest is rendering, data loading
and bookkeeping). Samples come in the protocol's order, so consecutive expressions often share
an image and the fast path encodes its views once; --one-per-image removes that effect.
Default CLIP: ViT-B/32-sized with random weights (timing does not depend on the weights);
pass --clip to time a real checkpoint. Targets: >= 5x, >= 80% inside CLIP.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.reference_visual_prompt import reference_scores

from refground.data.synth import generate_synthref, synthref_dataset
from refground.methods.visual_prompt import VisualPrompt
from refground.types import Sample
from refground.vision.clip import ClipEncoder
from refground.vision.proposals import build_proposer
from refground.vision.shipped import resolve_clip_name
from refground.vision.tiny_clip import build_tiny_clip


class ForwardTimer:
    """Wall time spent inside a module's forward, via forward hooks."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self._start = 0.0
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _before(self, *_: object) -> None:
        self._start = time.perf_counter()

    def _after(self, *_: object) -> None:
        self.total += time.perf_counter() - self._start


def vit_b32_sized_clip(dtype: torch.dtype = torch.float32) -> ClipEncoder:
    model, tokenizer, processor = build_tiny_clip(
        image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_layers=12,
        num_heads=12, projection_dim=512)
    return ClipEncoder(model, tokenizer, processor, name="random ViT-B/32-sized CLIP",
                       dtype=dtype)


def load_encoder(clip: str | None, dtype: torch.dtype) -> ClipEncoder:
    if clip is None:
        return vit_b32_sized_clip(dtype)
    return ClipEncoder.from_pretrained(resolve_clip_name(clip), dtype=dtype)


def time_fast(encoder: ClipEncoder, samples: list[Sample], debias_texts: list[str]
              ) -> tuple[float, float, list[tuple[float, ...]]]:
    """Seconds, seconds inside the vision tower, and the chosen boxes of the fast method."""
    method = VisualPrompt(encoders=[encoder], debias=len(debias_texts))
    method.set_debias_expressions(debias_texts)
    method.predict(samples[:1])  # warm-up; encodes the debias expressions once
    timer = ForwardTimer(encoder.model.vision_model)
    start = time.perf_counter()
    choices = [p.box for p in method.predict(samples)]
    return time.perf_counter() - start, timer.total, choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--debias", type=int, default=200)
    parser.add_argument("--clip", default=None, help="CLIP directory or hub id (default: random)")
    parser.add_argument("--one-per-image", action="store_true",
                        help="one expression per image, so no views can be shared")
    args = parser.parse_args()
    torch.manual_seed(0)

    encoder = load_encoder(args.clip, torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthref(tmp, seed=0, num_images=args.images)
        dataset = synthref_dataset(tmp)
        samples = list(dataset.split("test").samples)
        if args.one_per_image:
            samples = list({s.image_path: s for s in reversed(samples)}.values())[::-1]
        samples = samples[:args.samples]
        debias_texts = sorted(set(dataset.expressions("train")))[:args.debias]

        rows = {"fast fp32": time_fast(encoder, samples, debias_texts),
                "fast bf16": time_fast(load_encoder(args.clip, torch.bfloat16), samples,
                                       debias_texts)}
        style = VisualPrompt(encoders=[encoder], debias=0).style
        proposer = build_proposer("gt")
        reference_scores(encoder, samples[:1], proposer, style, debias_texts=debias_texts)
        timer = ForwardTimer(encoder.model.vision_model)
        start = time.perf_counter()
        reference = reference_scores(encoder, samples, proposer, style,
                                     debias_texts=debias_texts)
        rows = {"reference": (time.perf_counter() - start, timer.total,
                              [s.annotations[int(r.argmax())].box
                               for s, r in zip(samples, reference, strict=True)]), **rows}

    views = sum(len(r) for r in reference) * len(style.backgrounds)
    print(f"inputs: {len(samples)} samples, {views} views, {len(debias_texts)} debias texts, "
          f"CLIP: {encoder.name}, {torch.get_num_threads()} threads")
    print(f"{'':12}{'samples/s':>11}{'s/sample':>10}{'in CLIP':>9}{'speed-up':>10}{'same':>7}")
    base_seconds, _, base_choices = rows["reference"]
    for name, (seconds, inside, choices) in rows.items():
        same = sum(a == b for a, b in zip(choices, base_choices, strict=True))
        print(f"{name:12}{len(samples) / seconds:11.2f}{seconds / len(samples):10.3f}"
              f"{100 * inside / seconds:8.0f}%{base_seconds / seconds:9.1f}x"
              f"{same:4}/{len(samples)}")
    print("targets: speed-up >= 5x with >= 80% of the fast path's time inside CLIP; "
          "'same' = samples where the choice equals the reference's")


if __name__ == "__main__":
    main()
