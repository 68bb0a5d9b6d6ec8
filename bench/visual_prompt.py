"""Fast visual-prompt vs the straightforward per-proposal reference, on the same inputs.

    .venv/bin/python bench/visual_prompt.py [--samples 16] [--images 24] [--clip DIR]

Prints samples/s of each, their ratio, how often they pick the same proposal, and the share of
the fast path's time spent inside the CLIP forward passes (the rest is rendering, data loading
and bookkeeping). Default CLIP: ViT-B/32-sized with random weights (timing does not depend on
the weights); pass --clip to time a real checkpoint. Targets: >= 5x, >= 80% inside CLIP.
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

from refground.data.refer import load_refer_split
from refground.data.synth import generate_synthref
from refground.methods.visual_prompt import VisualPrompt
from refground.vision.clip import ClipEncoder
from refground.vision.proposals import build_proposer
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


def vit_b32_sized_clip() -> ClipEncoder:
    model, tokenizer, processor = build_tiny_clip(
        image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_layers=12,
        num_heads=12, projection_dim=512)
    return ClipEncoder(model, tokenizer, processor, name="random ViT-B/32-sized CLIP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--debias", type=int, default=200)
    parser.add_argument("--clip", default=None, help="CLIP directory or hub id (default: random)")
    args = parser.parse_args()
    torch.manual_seed(0)

    encoder = ClipEncoder.from_pretrained(args.clip) if args.clip else vit_b32_sized_clip()
    with tempfile.TemporaryDirectory() as tmp:
        generate_synthref(tmp, seed=0, num_images=args.images)
        samples = list(load_refer_split(tmp, "synthref", "synth", "test").samples)
        train = load_refer_split(tmp, "synthref", "synth", "train").samples
        samples = (samples * (args.samples // max(1, len(samples)) + 1))[:args.samples]
        debias_texts = sorted({s.expression for s in train})[:args.debias]

        method = VisualPrompt(encoders=[encoder], debias=len(debias_texts))
        method.set_debias_expressions(debias_texts)
        method.predict(samples[:1])  # warm-up; encodes the debias expressions once
        timer = ForwardTimer(encoder.model.vision_model)
        start = time.perf_counter()
        fast_choice = [p.box for p in method.predict(samples)]
        fast_seconds = time.perf_counter() - start
        inside_clip = timer.total

        proposer = build_proposer("gt")
        reference_scores(encoder, samples[:1], proposer, method.style,
                         debias_texts=debias_texts)  # warm-up
        timer.total = 0.0
        start = time.perf_counter()
        slow = reference_scores(encoder, samples, proposer, method.style,
                                debias_texts=debias_texts)
        slow_seconds = time.perf_counter() - start
        slow_inside = timer.total

    views = sum(len(s) for s in slow) * len(method.style.backgrounds)
    same = 0
    for choice, sample, ref in zip(fast_choice, samples, slow, strict=True):
        best = int(ref.argmax())
        same += choice == sample.annotations[best].box
    print(f"inputs: {len(samples)} samples, {views} views, {len(debias_texts)} debias texts, "
          f"CLIP: {encoder.name}")
    print(f"{'':12}{'samples/s':>12}{'s/sample':>12}{'in CLIP':>10}")
    print(f"{'reference':12}{len(samples) / slow_seconds:12.2f}{slow_seconds / len(samples):12.3f}"
          f"{100 * slow_inside / slow_seconds:9.0f}%")
    print(f"{'fast':12}{len(samples) / fast_seconds:12.2f}{fast_seconds / len(samples):12.3f}"
          f"{100 * inside_clip / fast_seconds:9.0f}%")
    print(f"speed-up: {slow_seconds / fast_seconds:.1f}x (target >= 5x); fast path spends "
          f"{100 * inside_clip / fast_seconds:.0f}% inside CLIP (target >= 80%)")
    print(f"same choice as the reference: {same}/{len(samples)}")


if __name__ == "__main__":
    main()
