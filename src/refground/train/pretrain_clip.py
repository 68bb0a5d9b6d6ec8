"""Train a small CLIP on SynthRef's train split, so the zero-shot methods can be measured offline.

No pretrained CLIP can be downloaded here, and a randomly initialised one grounds nothing. This
trains a transformers ``CLIPModel`` (small, ViT vision tower) from scratch on two kinds of pairs,
built from SynthRef **train** images only:

* object crops <-> attribute descriptions ("a large blue hexagon", "red circle", "the cyan
  thing") with a symmetric InfoNCE loss whose positives are every crop a description fits
  (a "cyan thing" fits every cyan crop): this is what ``crop-rank`` relies on;
* hard negatives for both: each description against the crops of its own image only (SynthRef
  puts same-category distractors in every image, so these share colour or shape with the
  positive), and each marked view against its expression and copies of it that differ in one
  word (the referent's colour or shape swapped);
* marked whole-image views (the visual-prompt rendering: box sharp, background blurred /
  blurred+gray, red ellipse) <-> "This is <referring expression>": for each expression a
  softmax over the marked views of every object in its image, so the model learns to read the
  marker and the context around it — what ``visual-prompt`` relies on.

The image processor squashes whole images to a square instead of centre-cropping, so objects at
the image's edges stay in view. Everything is seeded; the output directory loads with
``ClipEncoder.from_pretrained`` and ships as ``synthref-clip``.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import CLIPModel

from refground.data.synth import synthref_dataset
from refground.data.synth.scenes import COLOR_NAMES, SHAPES
from refground.errors import ConfigError
from refground.evaluate.runner import evaluate
from refground.images import load_image
from refground.methods.crop_rank import CropRank
from refground.methods.visual_prompt import VisualPrompt
from refground.overrides import parse_assignment
from refground.types import BoxTuple, Sample
from refground.vision.clip import ClipEncoder
from refground.vision.preprocess import ClipPreprocessConfig, pil_to_tensor, preprocess_tensor
from refground.vision.prompts import PromptStyle, render_views
from refground.vision.shipped import DEBIAS_FILE
from refground.vision.tiny_clip import build_tiny_clip, clip_image_processor, save_clip

VIEW_PREFIX = "This is "
EXPORT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class PretrainConfig:
    """Sizes and schedule; the defaults are the shipped synthref-clip's recipe (README)."""

    steps: int = 2000
    images_per_step: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 60
    # 96 px in 8-px patches: a 12x12 grid, so the median RefCOCO-scale referent (a quarter of
    # the image side) spans about 3x3 patches of a whole-image view; 8-px patches also learn
    # shapes on crops several times faster than 16-px ones (README, "The SynthRef CLIP")
    image_size: int = 96
    patch_size: int = 8
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    projection_dim: int = 128
    max_length: int = 32
    crop_margin: float = 0.25  # crops take up to this much context around the box, at random
    grounding_weight: float = 1.0
    # in-batch contrast alone rarely puts a red square next to a red star, so a model lowers it
    # with colour alone (the first shipped CLIP recognised shapes at 22%, chance 12.5%)
    attribute_weight: float = 1.0  # crops classified among every colour x shape, shape, colour
    probe_weight: float = 1.0  # linear shape/colour heads on the vision tower (not saved)
    exact_crop_share: float = 0.5  # crops without margin, as crop-rank crops a proposal
    hard_negative_weight: float = 1.0  # same-image crops; one-word-different expressions
    one_word_variants: int = 3  # per expression, for the hard-negative loss
    eval_every: int = 500
    eval_samples: int = 150
    debias_expressions: int = 2000
    seed: int = 0
    export_dtype: str = "float16"  # the weights as saved: float16 halves the wheel's share
    # Start from a trained CLIP (a shipped name or a directory) instead of random weights: its
    # model, tokenizer and image processor are reused, and the sizes above must match it. From
    # scratch, a ViT on domain-randomised drawings (turned, hollow, rimmed shapes) sat on the
    # "colour known, shape at chance" plateau for 700+ steps; fine-tuning the standard-drawing
    # CLIP (synthref-clip-1) teaches it the new drawings without relearning what a shape is.
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.export_dtype not in EXPORT_DTYPES:
            raise ConfigError(f"export_dtype must be one of {', '.join(EXPORT_DTYPES)}, "
                              f"got {self.export_dtype!r}")


@dataclass(frozen=True)
class TrainObject:
    box: BoxTuple
    color: str
    size: str
    shape: str


@dataclass(frozen=True)
class TrainImage:
    path: Path
    objects: tuple[TrainObject, ...]
    refs: tuple[tuple[int, tuple[str, ...]], ...]  # (object index, its expressions)


def load_train_images(root: Path) -> list[TrainImage]:
    """Group SynthRef's train samples by image, with each object's colour, size and shape."""
    dataset = synthref_dataset(root)
    split = dataset.split("train")
    # colour and size are SynthRef's own annotation fields, which no Sample carries
    with open(dataset.directory / "instances.json", encoding="utf-8") as stream:
        attributes = {a["id"]: (a["color"], a["size"]) for a in json.load(stream)["annotations"]}
    expressions: dict[Path, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    first_sample = {}
    for sample in split:
        expressions[sample.image_path][sample.ann_id].append(sample.expression)
        first_sample.setdefault(sample.image_path, sample)
    images = []
    for path, sample in first_sample.items():
        objects = tuple(TrainObject(a.box, *attributes[a.ann_id], a.category)
                        for a in sample.annotations)
        index = {a.ann_id: i for i, a in enumerate(sample.annotations)}
        refs = tuple((index[ann_id], tuple(texts))
                     for ann_id, texts in sorted(expressions[path].items()))
        images.append(TrainImage(path, objects, refs))
    return images


#: Nouns that stand for any shape ("the cyan thing"), as SynthRef's expressions use them.
GENERIC_NOUNS = ("thing", "shape", "object", "one")


@dataclass(frozen=True)
class Description:
    """An attribute description and what it asks of an object (None: anything)."""

    text: str
    size: str | None
    color: str | None
    shape: str | None

    def fits(self, obj: TrainObject) -> bool:
        return all(want is None or want == have for want, have in (
            (self.size, obj.size), (self.color, obj.color), (self.shape, obj.shape)))


def describe(obj: TrainObject, rng: random.Random) -> Description:
    """A random attribute description of an object: any subset of size and colour, then its
    shape, or (when a size or colour is named) sometimes a generic noun instead."""
    size = obj.size if rng.random() < 0.6 else None
    color = obj.color if rng.random() < 0.6 else None
    shape: str | None = obj.shape
    noun = obj.shape
    if (size or color) and rng.random() < 0.25:
        shape, noun = None, rng.choice(GENERIC_NOUNS)
    article = rng.choice(("a ", "the ", ""))
    text = article + " ".join(w for w in (size, color, noun) if w)
    return Description(text, size, color, shape)


def fit_matrix(objects: Sequence[TrainObject], descriptions: Sequence[Description]) -> Tensor:
    """``[i, j]``: description ``j`` fits object ``i`` (the contrastive losses' positives)."""
    return torch.tensor([[d.fits(o) for d in descriptions] for o in objects])


_WORD_CHOICES = {"color": COLOR_NAMES, "shape": SHAPES}
_WORDS = re.compile(r"\b(" + "|".join(COLOR_NAMES) + r")\b|\b(" + "|".join(SHAPES) + r")(s?)\b")


def one_word_variants(expression: str, count: int, rng: random.Random) -> list[str]:
    """Copies of ``expression`` with its first colour or first shape word (the referent's, in
    SynthRef's grammar) swapped for another: descriptions of some other object."""
    first: dict[str, re.Match[str]] = {}
    for match in _WORDS.finditer(expression):
        first.setdefault("color" if match.group(1) else "shape", match)
    variants: set[str] = set()
    kinds = sorted(first)
    for _ in range(4 * count):
        if not kinds or len(variants) >= count:
            break
        kind = rng.choice(kinds)
        match = first[kind]
        word = match.group(1) or match.group(2)
        other = rng.choice([w for w in _WORD_CHOICES[kind] if w != word])
        plural = (match.group(3) or "") if kind == "shape" else ""
        variants.add(expression[:match.start()] + other + plural + expression[match.end():])
    return sorted(variants)


def jittered_crop(pixels: Tensor, box: BoxTuple, margin: float, rng: random.Random) -> Tensor:
    _, height, width = pixels.shape
    x0, y0, x1, y1 = box
    pad_x, pad_y = (x1 - x0) * rng.uniform(0, margin), (y1 - y0) * rng.uniform(0, margin)
    left = max(0, int(x0 - pad_x))
    top = max(0, int(y0 - pad_y))
    right = min(width, max(left + 1, math.ceil(x1 + pad_x)))
    bottom = min(height, max(top + 1, math.ceil(y1 + pad_y)))
    return pixels[:, top:bottom, left:right]


class ImageCache:
    """Decoded train images, kept as uint8 (about 1 MB each): each is decoded once."""

    def __init__(self) -> None:
        self._pixels: dict[Path, Tensor] = {}

    def __call__(self, path: Path) -> Tensor:
        if path not in self._pixels:
            self._pixels[path] = pil_to_tensor(load_image(path))
        return self._pixels[path].float() / 255


class PretrainBatch:
    """The pixels and texts of one step, and how they pair up.

    Each image contributes its object crops, and its marked views under *one* background
    treatment drawn at random (both are seen over training; half the views per step).
    """

    def __init__(self, images: Sequence[TrainImage], config: PretrainConfig,
                 preprocess: ClipPreprocessConfig, style: PromptStyle, cache: ImageCache,
                 rng: random.Random) -> None:
        crops, views = [], []
        self.objects: list[TrainObject] = []
        self.descriptions: list[Description] = []
        self.groups: list[tuple[int, int]] = []  # (first object, object count) of each image
        self.expressions: list[str] = []
        self.variants: list[list[str]] = []  # one-word-different copies of each expression
        self.targets: list[tuple[int, int, int]] = []  # (view offset, object count, target)
        offset = 0
        for image in images:
            pixels = cache(image.path)
            for obj in image.objects:
                # (the extra draw only when exact crops are asked for: same stream otherwise)
                exact = config.exact_crop_share and rng.random() < config.exact_crop_share
                margin = 0.0 if exact else config.crop_margin
                crops.append(jittered_crop(pixels, obj.box, margin, rng))
                self.objects.append(obj)
                self.descriptions.append(describe(obj, rng))
            boxes = torch.tensor([obj.box for obj in image.objects])
            one_background = replace(style, backgrounds=(rng.choice(style.backgrounds),))
            views.append(
                render_views(pixels, boxes, one_background, preprocess, normalize=True)[:, 0])
            for target, texts in image.refs:
                expression = rng.choice(texts)
                self.expressions.append(VIEW_PREFIX + expression)
                self.variants.append([VIEW_PREFIX + v for v in one_word_variants(
                    expression, config.one_word_variants, rng)] if config.hard_negative_weight
                    else [])
                self.targets.append((offset, len(image.objects), target))
            self.groups.append((offset, len(image.objects)))
            offset += len(image.objects)
        self.crop_pixels = preprocess_tensor(crops, preprocess)
        self.view_pixels = torch.cat(views)
        self.fits = fit_matrix(self.objects, self.descriptions)


def many_positive_cross_entropy(logits: Tensor, positives: Tensor) -> Tensor:
    """Cross-entropy of each row against the uniform distribution over its positives."""
    targets = positives.to(logits.dtype)
    return F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))


def contrastive_loss(image_features: Tensor, text_features: Tensor, positives: Tensor,
                     scale: Tensor) -> Tensor:
    """Symmetric InfoNCE with many positives: ``positives[i, j]`` says text ``j`` fits image
    ``i`` (every row and column holds at least its own pair)."""
    logits = scale * image_features @ text_features.T
    return (many_positive_cross_entropy(logits, positives)
            + many_positive_cross_entropy(logits.T, positives.T)) / 2


def same_image_loss(crop_features: Tensor, text_features: Tensor, positives: Tensor,
                    groups: Sequence[tuple[int, int]], scale: Tensor) -> Tensor:
    """Each description against the crops of its own image only: the hard negatives are the
    objects beside it, often of its colour or shape, as crop-rank meets them."""
    losses = []
    for first, count in groups:
        part = slice(first, first + count)
        logits = scale * text_features[part] @ crop_features[part].T
        losses.append(many_positive_cross_entropy(logits, positives[part, part].T))
    return torch.stack(losses).mean()


def one_word_loss(target_views: Tensor, expression_features: Tensor,
                  variant_features: Sequence[Tensor], scale: Tensor) -> Tensor:
    """Each expression's marked target view against the expression (class 0) and its
    one-word-different copies."""
    losses = [F.cross_entropy((scale * torch.cat((text[None], variants)) @ view)[None],
                              torch.zeros(1, dtype=torch.long))
              for view, text, variants in zip(target_views, expression_features,
                                              variant_features, strict=True) if len(variants)]
    return torch.stack(losses).mean() if losses else torch.zeros(())


def attribute_texts() -> dict[str, list[str]]:
    """The probe's label sets: every "a <colour> <shape>", "a <shape>", "a <colour> object"."""
    return {"combo": [f"a {c} {s}" for c in COLOR_NAMES for s in SHAPES],
            "shape": [f"a {s}" for s in SHAPES],
            "colour": [f"a {c} object" for c in COLOR_NAMES]}


def attribute_targets(objects: Sequence[TrainObject]) -> dict[str, Tensor]:
    """Each crop's index in each label set of :func:`attribute_texts`."""
    labels = attribute_texts()
    index = {name: {text: i for i, text in enumerate(texts)} for name, texts in labels.items()}
    return {"combo": torch.tensor([index["combo"][f"a {o.color} {o.shape}"] for o in objects]),
            "shape": torch.tensor([index["shape"][f"a {o.shape}"] for o in objects]),
            "colour": torch.tensor([index["colour"][f"a {o.color} object"] for o in objects])}


def attribute_loss(crop_features: Tensor, label_features: dict[str, Tensor],
                   targets: dict[str, Tensor], scale: Tensor) -> Tensor:
    """Cross-entropy of each crop over *every* colour x shape text, shape and colour text.

    In-batch contrast alone rarely puts a red square next to a red star, so a model can lower
    it with colour alone (the first shipped CLIP recognised shapes at 22%, chance 12.5%). Here
    every text that differs from the truth in one word is a negative at every step.
    """
    losses = [F.cross_entropy(scale * crop_features @ label_features[name].T, targets[name])
              for name in targets]
    return torch.stack(losses).mean()


def grounding_loss(view_features: Tensor, expression_features: Tensor,
                   targets: Sequence[tuple[int, int, int]], scale: Tensor) -> Tensor:
    """For each expression, cross-entropy over the marked views of its image's objects."""
    losses = []
    for text, (offset, objects, target) in zip(expression_features, targets, strict=True):
        logits = scale * view_features[offset:offset + objects] @ text
        losses.append(F.cross_entropy(logits[None], torch.tensor([target])))
    return torch.stack(losses).mean()


def validate(model: CLIPModel, tokenizer: object, processor: object,
             samples: Sequence[Sample]) -> dict[str, float]:
    """Acc@0.5 of crop-rank and visual-prompt (gt proposals, no debiasing) on ``samples``."""
    encoder = ClipEncoder(model, tokenizer, processor, name="pretraining")
    methods = {"crop-rank": CropRank(encoders=[encoder]),
               "visual-prompt": VisualPrompt(encoders=[encoder], debias=0)}
    accuracy = {name: evaluate(method, samples, progress=False).metrics["acc@0.5"]
                for name, method in methods.items()}
    model.train()
    return accuracy


def data_recipe(data: Path) -> dict[str, object]:
    """How the training data was made, from SynthRef's own record of it (instances.json's
    ``info``): generator, version, seed, image count, the named scale (None if custom) and the
    rendering it was drawn with (for domain randomisation: its parameters and what it holds
    out of the ``shifted`` test drawing)."""
    from refground.data.synth import scale_of
    from refground.data.synth.writer import rendering_record

    info_path = data / "synthref" / "instances.json"
    if not info_path.is_file():
        return {"root": str(data)}
    info = json.loads(info_path.read_text(encoding="utf-8"))["info"]
    recipe = {key: info[key] for key in ("generator", "version", "seed") if key in info}
    recipe["images"] = info["args"]["num_images"]
    recipe["scale"] = scale_of(info["args"]["scene"], info["sizes"])
    recipe["rendering"] = rendering_record(data)
    return recipe


def recipe_command(data: Path, out: Path, config: PretrainConfig) -> str:
    """The ``refground`` command line that reruns this training (flags only where the config
    departs from the shipped recipe, i.e. from ``PretrainConfig()``)."""
    default = PretrainConfig()
    flags = [f"--{name.replace('_', '-')} {getattr(config, name)}" if name in CLI_FLAGS
             else f"--set {name}={getattr(config, name)}"
             for name in asdict(config) if getattr(config, name) != getattr(default, name)]
    return " ".join(["refground pretrain-clip", f"--data {data}", f"--out {out}", *flags])


#: PretrainConfig fields with a flag of their own; any other field is ``--set name=value``.
CLI_FLAGS = ("steps", "images_per_step", "seed", "eval_every", "export_dtype")


def config_override(pair: str) -> tuple[str, object]:
    """``name=value`` for a PretrainConfig field: the value read as every ``--set`` value is
    (:mod:`refground.overrides`), then checked against the field's type."""
    defaults = asdict(PretrainConfig())
    name, value = parse_assignment(pair, "--set")
    if name not in defaults:
        raise ConfigError(f"--set takes name=value with a PretrainConfig field "
                          f"({', '.join(defaults)}), got {pair!r}")
    expected = type(defaults[name])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or isinstance(value, bool) is not (expected is bool):
        raise ConfigError(f"--set {name}: {value!r} is not a {expected.__name__}")
    return name, value


def load_initial_clip(config: PretrainConfig) -> tuple[CLIPModel, object, object]:
    """``config.init_from``'s model (in float32, to train), tokenizer and image processor,
    refused unless its sizes are the config's (so training.json's config describes it)."""
    from refground.vision.loading import load_clip_components, resolve_model_source
    from refground.vision.shipped import resolve_clip_name

    source = resolve_model_source(resolve_clip_name(config.init_from), local_files_only=True)
    model, tokenizer, processor = load_clip_components(source, torch.float32, None, True)
    vision, text = model.config.vision_config, model.config.text_config
    found = {"image_size": vision.image_size, "patch_size": vision.patch_size,
             "hidden_size": vision.hidden_size, "num_layers": vision.num_hidden_layers,
             "num_heads": vision.num_attention_heads, "projection_dim": model.config.projection_dim,
             "text hidden_size": text.hidden_size}
    wanted = {**{k: getattr(config, k) for k in found if k in asdict(config)},
              "text hidden_size": config.hidden_size}
    if found != wanted or processor is None:
        raise ConfigError(f"init_from={config.init_from!r} has sizes {found} (and "
                          f"{'an' if processor else 'no'} image processor); the config asks for "
                          f"{wanted}: set them to the checkpoint's")
    return model.float(), tokenizer, processor


def normalized(features: Tensor) -> Tensor:
    return F.normalize(features, dim=-1)


def pretrain_clip(data: Path, out: Path, config: PretrainConfig | None = None,
                  log: Callable[[str], None] = print) -> dict[str, object]:
    """Train, save to ``out`` (model, tokenizer, processor, debias expressions, log)."""
    config = config or PretrainConfig()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    images = load_train_images(Path(data))
    val = synthref_dataset(data).split("val").samples
    val_subset = random.Random(config.seed).sample(list(val), min(config.eval_samples, len(val)))
    all_texts = [t for image in images for _, texts in image.refs for t in texts]
    vocabulary = all_texts + [VIEW_PREFIX + t for t in all_texts[:2000]] + [
        f"{s} {c} {sh}" for image in images for o in image.objects
        for s, c, sh in [(o.size, o.color, o.shape)]]
    if config.attribute_weight:
        vocabulary += [t for texts in attribute_texts().values() for t in texts]
    if config.init_from:
        model, tokenizer, processor = load_initial_clip(config)
    else:
        model, tokenizer, _ = build_tiny_clip(
            vocabulary, image_size=config.image_size, patch_size=config.patch_size,
            hidden_size=config.hidden_size, intermediate_size=4 * config.hidden_size,
            num_layers=config.num_layers, num_heads=config.num_heads,
            projection_dim=config.projection_dim, max_length=config.max_length,
            vocab_size=2000, seed=config.seed)
        processor = clip_image_processor(config.image_size, center_crop=False)
    preprocess = ClipPreprocessConfig.from_image_processor(processor)
    style = PromptStyle()
    model.train()
    probe_heads = torch.nn.ModuleDict({  # built only when used: they draw from torch's RNG
        "shape": torch.nn.Linear(config.hidden_size, len(SHAPES)),
        "colour": torch.nn.Linear(config.hidden_size, len(COLOR_NAMES))
    } if config.probe_weight else {})
    optimizer = torch.optim.AdamW([*model.parameters(), *probe_heads.parameters()],
                                  lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    cache = ImageCache()
    labels = attribute_texts() if config.attribute_weight else {}
    label_texts = [text for texts in labels.values() for text in texts]
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(config.steps):
        batch = PretrainBatch(rng.sample(images, config.images_per_step), config, preprocess,
                              style, cache, rng)
        pixels = torch.cat((batch.crop_pixels, batch.view_pixels))
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        image_features = normalized(model.visual_projection(pooled))
        variant_texts = [text for variants in batch.variants for text in variants]
        texts = ([d.text for d in batch.descriptions] + batch.expressions + variant_texts
                 + label_texts)
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length,
                           return_tensors="pt")
        all_text_features = normalized(model.text_projection(
            model.text_model(**tokens).pooler_output))
        crops = len(batch.descriptions)
        text_features, expression_features, variant_features, *label_parts = (
            all_text_features.split([crops, len(batch.expressions), len(variant_texts),
                                     *(len(texts) for texts in labels.values())]))
        label_features = dict(zip(labels, label_parts, strict=True))
        scale = model.logit_scale.exp().clamp(max=100)
        crop_features, view_features = image_features[:crops], image_features[crops:]
        loss_crop = contrastive_loss(crop_features, text_features, batch.fits, scale)
        loss_ground = grounding_loss(view_features, expression_features, batch.targets, scale)
        targets = attribute_targets(batch.objects)
        loss_attribute = attribute_loss(crop_features, label_features, targets, scale
                                        ) if config.attribute_weight else torch.zeros(())
        loss_hard = torch.zeros(())
        if config.hard_negative_weight:
            target_views = view_features[[offset + target for offset, _, target in batch.targets]]
            loss_hard = (same_image_loss(crop_features, text_features, batch.fits, batch.groups,
                                         scale)
                         + one_word_loss(target_views, expression_features, variant_features.split(
                             [len(v) for v in batch.variants]), scale)) / 2
        loss = (loss_crop + config.grounding_weight * loss_ground
                + config.attribute_weight * loss_attribute
                + config.hard_negative_weight * loss_hard)
        if config.probe_weight:
            # supervised heads make the vision tower encode shape whatever the text side does:
            # contrast alone can settle where neither tower distinguishes shapes
            loss = loss + config.probe_weight * sum(
                F.cross_entropy(probe_heads[name](pooled[:crops]), targets[name])
                for name in probe_heads) / len(probe_heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append({"step": step + 1, "loss_crop": loss_crop.item(),
                        "loss_ground": loss_ground.item(),
                        "loss_attribute": loss_attribute.item(), "loss_hard": loss_hard.item(),
                        "lr": scheduler.get_last_lr()[0]})
        if (step + 1) % 25 == 0 or step == 0:
            elapsed = time.perf_counter() - start
            log(f"step {step + 1}/{config.steps}  crop {loss_crop.item():.3f}  "
                f"attr {loss_attribute.item():.3f}  hard {loss_hard.item():.3f}  "
                f"ground {loss_ground.item():.3f}  scale {scale.item():.1f}  {elapsed:.0f}s")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            accuracy = validate(model, tokenizer, processor, val_subset)
            history[-1].update({f"val_{k}": v for k, v in accuracy.items()})
            log(f"step {step + 1}: val Acc@0.5 on {len(val_subset)} samples "
                + ", ".join(f"{k} {100 * v:.1f}" for k, v in accuracy.items()))

    model.eval()
    out = Path(out)
    seconds = round(time.perf_counter() - start, 1)
    # the export step: a cast of the trained weights, recorded in training.json
    save_clip(out, model.to(EXPORT_DTYPES[config.export_dtype]), tokenizer, processor)
    debias = random.Random(config.seed).sample(sorted(set(all_texts)),
                                               min(config.debias_expressions, len(all_texts)))
    (out / DEBIAS_FILE).write_text("\n".join(debias) + "\n", encoding="utf-8")
    summary = {"command": recipe_command(data, out, config), "config": asdict(config),
               "data": data_recipe(Path(data)), "train_images": len(images),
               "seconds": seconds, "device": "cpu", "threads": torch.get_num_threads(),
               "torch": torch.__version__, "export": {"dtype": config.export_dtype},
               "history": [h for h in history if "val_crop-rank" in h],
               "curve": history[::max(1, len(history) // 200)]}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
