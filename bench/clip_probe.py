"""Does the CLIP see the objects? Zero-shot classification of every object crop of a split.

    .venv/bin/python bench/clip_probe.py --data data/synth [data/synth-shifted ...]
        [--split test] [--clip synthref-clip] [--limit 2000] [--crop exact|context]

Each annotated object of the split's images is cropped as crop-rank crops a proposal (its box,
``--crop exact``) and classified three ways, by the highest cosine similarity among texts:

- colour x shape: among every "a <colour> <shape>" (80 texts);
- shape alone: among every "a <shape>";
- colour alone: among every "a <colour> object".

It prints top-1 accuracy of each, per colour and per shape, and the most frequent confusions,
one column per dataset: give a ``standard`` and a ``--rendering shifted`` SynthRef of the same
seed to see how much of the CLIP's perception survives a change of drawing (issue 25). Each
dataset's rendering is read back from its ``instances.json``; a directory whose rendering
cannot be told is refused before any model loads. Compare two CLIPs by running it twice.
Issue 12's targets: >= 98% colour x shape, >= 95% shape alone and colour alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from refground.data.synth.scenes import COLOR_NAMES, SHAPES
from refground.data.synth.writer import dataset_rendering
from refground.errors import ConfigError
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


LABEL_SETS = {
    "colour x shape": [f"a {c} {s}" for c in COLOR_NAMES for s in SHAPES],
    "shape": [f"a {s}" for s in SHAPES],
    "colour": [f"a {c} object" for c in COLOR_NAMES],
}


def truth_of(name: str, color: str, shape: str) -> str:
    return {"colour x shape": f"a {color} {shape}", "shape": f"a {shape}",
            "colour": f"a {color} object"}[name]


def crop_features(encoder: object, objects: list[tuple[Path, tuple[float, ...], str, str]],
                  crop: str, batch: int) -> torch.Tensor:
    """CLIP features of every object crop (``context``: the box grown by half each side)."""
    features = []
    pixels_of: dict[Path, torch.Tensor] = {}
    for start in range(0, len(objects), batch):
        crops = []
        for path, box, _, _ in objects[start:start + batch]:
            if path not in pixels_of:
                pixels_of = {path: pil_to_tensor(load_image(path)).float() / 255}
            x0, y0, x1, y1 = box
            if crop == "context":
                pad_x, pad_y = (x1 - x0) / 2, (y1 - y0) / 2
                box = (x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y)
            crops.append(crop_box(pixels_of[path], box))
        features.append(encoder.encode_images(crops).float().cpu())
    return torch.cat(features)


def probe(encoder: object, objects: list[tuple[Path, tuple[float, ...], str, str]], crop: str,
          batch: int) -> dict[str, object]:
    """Top-1 accuracy per label set, per shape and per colour, and the top confusions."""
    image_features = crop_features(encoder, objects, crop, batch)
    result: dict[str, object] = {"objects": len(objects)}
    for name, labels in LABEL_SETS.items():
        text_features = encoder.encode_texts(labels).float().cpu()
        predicted = [labels[i] for i in classify(image_features, text_features)]
        truth = [truth_of(name, c, s) for _, _, c, s in objects]
        right = [p == t for p, t in zip(predicted, truth, strict=True)]
        result[name] = sum(right) / len(right)
        if name != "colour x shape":
            per: dict[str, list[bool]] = defaultdict(list)
            for t, r in zip(truth, right, strict=True):
                per[t.removeprefix("a ").removesuffix(" object")].append(r)
            result[f"per {name}"] = {k: sum(v) / len(v) for k, v in sorted(per.items())}
        confusions = Counter((t, p) for t, p in zip(truth, predicted, strict=True) if t != p)
        result[f"confused {name}"] = confusions.most_common(6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="SynthRef roots, one column each (e.g. standard and shifted)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--clip", default="synthref-clip")
    parser.add_argument("--limit", type=int, default=None, help="first N objects only")
    parser.add_argument("--crop", choices=("exact", "context"), default="exact",
                        help="context: the box grown by half its size each side")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    try:  # refuse data whose drawing cannot be told before loading anything
        renderings = [dataset_rendering(root) for root in args.data]
    except ConfigError as error:
        parser.exit(2, f"clip_probe: {error}\n")
    encoder = load_clip(args.clip)
    columns = [f"{rendering} ({root.name})" for rendering, root in
               zip(renderings, args.data, strict=True)]
    results = [probe(encoder, split_objects(root, args.split)[:args.limit], args.crop,
                     args.batch) for root in args.data]

    print(f"{args.clip}: top-1 % on object crops of {args.split} ({args.crop} crops)\n")
    width = max(24, *(len(c) + 2 for c in columns))
    print(f"{'':<18}" + "".join(f"{c:>{width}}" for c in columns))
    print(f"{'objects':<18}" + "".join(f"{r['objects']:>{width}}" for r in results))
    for name in LABEL_SETS:
        print(f"{name:<18}" + "".join(f"{100 * r[name]:>{width}.1f}" for r in results))
    for name in ("shape", "colour"):
        print(f"\nper {name}")
        for key in results[0][f"per {name}"]:
            print(f"  {key:<16}" + "".join(
                f"{100 * r[f'per {name}'].get(key, float('nan')):>{width}.1f}" for r in results))
    for column, result in zip(columns, results, strict=True):
        print(f"\nmost confused, {column}:")
        for name in LABEL_SETS:
            pairs = result[f"confused {name}"]
            if pairs:
                print(f"  {name}: " + "; ".join(f"{t} -> {p} x{n}" for (t, p), n in pairs))


if __name__ == "__main__":
    main()
