"""Does the CLIP see the objects? Zero-shot classification of every object crop of a split.

    .venv/bin/python bench/clip_probe.py --data data/synth [--split test] [--clip synthref-clip]
                                         [--limit 2000] [--crop exact|context]

Each annotated object of the split's images is cropped as crop-rank crops a proposal (its box,
``--crop exact``) and classified three ways, by the highest cosine similarity among texts:

- colour x shape: among every "a <colour> <shape>" (80 texts);
- shape alone: among every "a <shape>";
- colour alone: among every "a <colour> object".

It prints top-1 accuracy of each, per colour and per shape, and the most frequent confusions,
so a retrained CLIP can be compared with the shipped one side by side (run it twice). Issue 12's
targets: >= 98% colour x shape, >= 95% shape alone and colour alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refground.data.synth.scenes import COLOR_NAMES, SHAPES
from refground.images import load_image
from refground.vision.preprocess import crop_box, pil_to_tensor
from refground.vision.shipped import load_clip


def split_objects(data: Path, split: str) -> list[tuple[Path, tuple[float, ...], str, str]]:
    """(image, xyxy box, colour, shape) of every object in the images of ``split``."""
    from refground.data.synth import synthref_dataset

    samples = synthref_dataset(data).split(split).samples
    instances = json.loads((data / "synthref" / "instances.json").read_text(encoding="utf-8"))
    colors = {a["id"]: a["color"] for a in instances["annotations"]}
    seen: set[Path] = set()
    objects = []
    for sample in samples:
        if sample.image_path in seen:
            continue
        seen.add(sample.image_path)
        objects += [(sample.image_path, a.box, colors[a.ann_id], a.category)
                    for a in sample.annotations]
    return objects


def classify(features: torch.Tensor, text_features: torch.Tensor) -> list[int]:
    return (features @ text_features.T).argmax(dim=1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--clip", default="synthref-clip")
    parser.add_argument("--limit", type=int, default=None, help="first N objects only")
    parser.add_argument("--crop", choices=("exact", "context"), default="exact",
                        help="context: the box grown by half its size each side")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    encoder = load_clip(args.clip)
    objects = split_objects(args.data, args.split)[:args.limit]
    label_sets = {
        "colour x shape": [f"a {c} {s}" for c in COLOR_NAMES for s in SHAPES],
        "shape": [f"a {s}" for s in SHAPES],
        "colour": [f"a {c} object" for c in COLOR_NAMES],
    }
    truths = {
        "colour x shape": [f"a {c} {s}" for _, _, c, s in objects],
        "shape": [f"a {s}" for _, _, _, s in objects],
        "colour": [f"a {c} object" for _, _, c, _ in objects],
    }
    features = []
    pixels_of: dict[Path, torch.Tensor] = {}
    for start in range(0, len(objects), args.batch):
        crops = []
        for path, box, _, _ in objects[start:start + args.batch]:
            if path not in pixels_of:
                pixels_of = {path: pil_to_tensor(load_image(path)).float() / 255}
            x0, y0, x1, y1 = box
            if args.crop == "context":
                pad_x, pad_y = (x1 - x0) / 2, (y1 - y0) / 2
                box = (x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y)
            crops.append(crop_box(pixels_of[path], box))
        features.append(encoder.encode_images(crops).float().cpu())
    image_features = torch.cat(features)

    print(f"{args.clip} on {len(objects)} object crops of {args.data} {args.split} "
          f"({args.crop} crops)")
    for name, labels in label_sets.items():
        predicted = [labels[i] for i in classify(image_features,
                                                 encoder.encode_texts(labels).float().cpu())]
        truth = truths[name]
        right = [p == t for p, t in zip(predicted, truth, strict=True)]
        print(f"\n{name}: top-1 {100 * sum(right) / len(right):.1f}% "
              f"({sum(right)}/{len(right)})")
        if name != "colour x shape":
            per: dict[str, list[bool]] = defaultdict(list)
            for t, r in zip(truth, right, strict=True):
                per[t].append(r)
            print("  " + ", ".join(f"{k.removeprefix('a ').removesuffix(' object')} "
                                   f"{100 * sum(v) / len(v):.0f}%" for k, v in sorted(per.items())))
        confusions = Counter((t, p) for t, p in zip(truth, predicted, strict=True) if t != p)
        if confusions:
            print("  most confused: " + "; ".join(f"{t} -> {p} x{n}"
                                                  for (t, p), n in confusions.most_common(6)))


if __name__ == "__main__":
    main()
