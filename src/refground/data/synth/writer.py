"""SynthRef on disk: splits, the per-image pipeline, and files in the REFER layout.

Layout written under ``out_dir`` (the same one RefCOCO uses, so one loader reads both)::

    synthref/refs(synth).p     pickle (protocol 4, plain containers only) of REFER refs
    synthref/instances.json    COCO images / annotations (+ colour, size) / categories
    synthref/stats.json        split sizes and expression-type counts
    synthref/README.txt        what the files are
    images/synthref_XXXXXX.png

Splits are image-level: ``train``, ``val``, ``test``, ``testC`` (referents are colour-shape
combinations never referred to elsewhere: compositional generalisation) and ``testR``
(relational expressions only).

Determinism: every image draws from its own generator seeded by ``(seed, image index)``, so the
bytes do not depend on the number of worker processes or their scheduling; ids are assigned in
image order afterwards, and files are written with fixed key order and no timestamps.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from refground.data.dataset import Dataset
from refground.data.synth.logical_forms import EXPRESSION_TYPES
from refground.data.synth.paraphrase import PHRASINGS, paraphrase
from refground.data.synth.planning import DEFAULT_TYPE_WEIGHTS, RefPlan, plan_refs
from refground.data.synth.rendering import dress_scene, render, rendering_named
from refground.data.synth.scales import DEFAULT_SCALE, scale_of, scene_config_for
from refground.data.synth.scenes import (
    COLOR_NAMES,
    COLORS,
    SHAPES,
    Combo,
    Scene,
    SceneConfig,
    SceneObject,
    sample_scene,
)
from refground.errors import ConfigError

GENERATOR = "refground.data.synth"
VERSION = "1.0"
DATASET = "synthref"
SPLIT_BY = "synth"
SPLITS: tuple[str, ...] = ("train", "val", "test", "testC", "testR")
DEFAULT_FRACTIONS: dict[str, float] = {
    "train": 0.70, "val": 0.08, "test": 0.10, "testC": 0.06, "testR": 0.06,
}
IMAGE_PATTERN = "synthref_{image_id:06d}.png"
CATEGORY_IDS: dict[str, int] = {shape: i + 1 for i, shape in enumerate(SHAPES)}

# Independent random streams derived from the seed: [seed, stream, ...].
_SPLIT_STREAM, _HELD_OUT_STREAM, _IMAGE_STREAM = 0, 1, 2
_SCENE_PART, _RENDER_PART, _PHRASING_PART, _LOOK_PART = 0, 1, 2, 3
_SCENE_TRIES = 200  # scenes sampled for one image before giving up on the settings
_PARALLEL_FROM = 64  # by default, fewer images than this are generated in-process


# --- statistics ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitStats:
    images: int
    annotations: int
    refs: int
    sentences: int
    types: dict[str, int]  # sentences per expression type

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SynthStats:
    """What :func:`generate_synthref` wrote: where, with which seed, and how much per split."""

    out_dir: Path
    seed: int
    splits: dict[str, SplitStats]
    held_out_combos: tuple[Combo, ...]
    scale: str | None = None  # the named scale whose settings were used; None for custom ones
    rendering: str = "standard"  # the rendering.RENDERINGS name the images were drawn with

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    @property
    def refs(self) -> int:
        return sum(s.refs for s in self.splits.values())

    @property
    def sentences(self) -> int:
        return sum(s.sentences for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir), "seed": self.seed, "scale": self.scale,
            "rendering": self.rendering,
            "images": self.images, "refs": self.refs, "sentences": self.sentences,
            "splits": {name: s.to_dict() for name, s in self.splits.items()},
            "held_out_combos": [list(c) for c in self.held_out_combos],
        }


# --- splits and held-out combinations -----------------------------------------------------------

def split_sizes(num_images: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Images per split: proportional (largest remainder), at least one per listed split."""
    names = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    if num_images < len(names):
        raise ConfigError(
            f"num_images={num_images} is too small for {len(names)} splits; use at least "
            f"{len(names)} or set some split fractions to 0")
    total = sum(fractions[s] for s in names)
    exact = {s: num_images * fractions[s] / total for s in names}
    sizes = {s: max(1, math.floor(exact[s])) for s in names}
    while sum(sizes.values()) < num_images:
        sizes[max(names, key=lambda s: exact[s] - sizes[s])] += 1
    while sum(sizes.values()) > num_images:
        sizes[max((s for s in names if sizes[s] > 1), key=lambda s: sizes[s] - exact[s])] -= 1
    return sizes


def assign_splits(num_images: int, fractions: Mapping[str, float], seed: int) -> list[str]:
    """The split of each image index, shuffled so ids do not reveal the split."""
    labels = [name for name, size in split_sizes(num_images, fractions).items()
              for _ in range(size)]
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_images)
    return [labels[i] for i in order]


def held_out_combos(seed: int, fraction: float) -> tuple[Combo, ...]:
    """The (colour, shape) pairs reserved for testC referents.

    Drawn greedily in a seeded order, with at most ``ceil(k / #shapes)`` per shape and
    ``ceil(k / #colours)`` per colour, so every colour and shape stays common in training.
    """
    combos = [(color, shape) for shape in SHAPES for color in COLOR_NAMES]
    wanted = round(fraction * len(combos))
    shape_cap = math.ceil(wanted / len(SHAPES))
    color_cap = math.ceil(wanted / len(COLOR_NAMES))
    chosen: list[Combo] = []
    shapes: Counter[str] = Counter()
    colors: Counter[str] = Counter()
    for index in np.random.default_rng([seed, _HELD_OUT_STREAM]).permutation(len(combos)):
        color, shape = combos[index]
        if len(chosen) == wanted:
            break
        if shapes[shape] < shape_cap and colors[color] < color_cap:
            chosen.append((color, shape))
            shapes[shape] += 1
            colors[color] += 1
    return tuple(sorted(chosen))


# --- one image ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to build one image, independent of every other image."""

    index: int
    seed: int
    split: str
    held_out: tuple[Combo, ...]
    image_path: str
    scene_config: SceneConfig
    type_weights: tuple[tuple[str, float], ...]
    phrasing: str = "standard"
    rendering: str = "standard"
    # Another drawing of scene ``index`` (a non-standard rendering's extra train images): the
    # same layout, new looks and background, written as image ``image_id``.
    drawing: int = 0
    image_id: int | None = None  # default: index + 1

    @property
    def written_id(self) -> int:
        return self.index + 1 if self.image_id is None else self.image_id


@dataclass(frozen=True)
class ImageResult:
    index: int
    scene: Scene
    refs: tuple[RefPlan, ...]
    image_id: int  # the id it is written under (index + 1, or an extra drawing's own)
    drawing: dict[str, Any] | None = None  # a non-standard rendering's image-level draws


def _split_policy(job: ImageJob, rng: np.random.Generator
                  ) -> tuple[tuple[Combo, ...], tuple[tuple[str, float], ...]]:
    """Forced looks and allowed (type, weight) pairs for the job's split."""
    if job.split == "testC":
        count = min(1 + int(rng.random() < 0.4), len(job.held_out))
        picks = rng.choice(len(job.held_out), size=count, replace=False)
        return tuple(job.held_out[i] for i in picks), job.type_weights
    if job.split == "testR":
        return (), (("relation", 1.0),)
    return (), job.type_weights


def _eligible(scene: Scene, split: str, held_out: tuple[Combo, ...]) -> list[int]:
    """Objects that may be referents: held-out combos in testC, any other combo elsewhere."""
    reserved = set(held_out)
    return [i for i, o in enumerate(scene.objects) if (o.combo in reserved) == (split == "testC")]


def build_image(job: ImageJob) -> ImageResult:
    """Sample a scene with at least one describable referent, render it, save the PNG.

    A non-standard rendering draws each object's look from a stream of its own, before the
    refs are planned (boxes and areas follow the look); the scene, render and phrasing
    streams are those of the standard rendering, whose bytes stay unchanged."""
    rendering = rendering_named(job.rendering)
    rng = np.random.default_rng([job.seed, _IMAGE_STREAM, job.index, _SCENE_PART])
    redraw = [job.drawing] if job.drawing else []  # drawing 0 keeps the one-drawing streams
    look_rng = np.random.default_rng([job.seed, _IMAGE_STREAM, job.index, _LOOK_PART, *redraw])
    for _ in range(_SCENE_TRIES):
        forced, type_weights = _split_policy(job, rng)
        scene = dress_scene(sample_scene(rng, job.scene_config, forced), rendering, look_rng)
        types = [name for name, _ in type_weights]
        weights = [weight for _, weight in type_weights]
        refs = plan_refs(scene, _eligible(scene, job.split, job.held_out), types, weights, rng)
        if refs:
            break
    else:
        raise ConfigError(
            f"no describable referent in {_SCENE_TRIES} scenes for a {job.split} image; the "
            f"expression types {[t for t, _ in job.type_weights]} and scene settings "
            f"{job.scene_config} rarely allow one -- widen them")
    if job.phrasing == "varied":
        refs = _reword(refs, np.random.default_rng(
            [job.seed, _IMAGE_STREAM, job.index, _PHRASING_PART]))
    render_rng = np.random.default_rng([job.seed, _IMAGE_STREAM, job.index, _RENDER_PART,
                                        *redraw])
    image, drawing = render(scene, rendering, render_rng)
    image.save(job.image_path, format="PNG", compress_level=1)
    return ImageResult(job.index, scene, refs, job.written_id, drawing)


def _reword(refs: tuple[RefPlan, ...], rng: np.random.Generator) -> tuple[RefPlan, ...]:
    """The same refs and logical forms, each sentence worded by :func:`paraphrase` from its
    own random stream, so scenes, referents and forms equal the standard phrasing's."""
    reworded = []
    for plan in refs:
        sentences = []
        for expression in plan.expressions:
            text, graph = paraphrase(expression.form, rng)
            sentences.append(replace(expression, text=text, graph=graph))
        reworded.append(replace(plan, expressions=tuple(sentences)))
    return tuple(reworded)


def _run_jobs(jobs: Sequence[ImageJob], workers: int) -> Iterator[ImageResult]:
    """Results in job order, from a pool of ``workers`` processes when there are several."""
    if workers <= 1:
        yield from map(build_image, jobs)
        return
    # spawn, not fork: the caller may hold threads (torch, BLAS) that fork would corrupt
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(build_image, jobs, chunksize=max(1, len(jobs) // (workers * 8)))


def default_workers(num_images: int) -> int:
    """Available CPUs (at most 8); one for small runs, where pool start-up would dominate."""
    if num_images < _PARALLEL_FROM:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


# --- records ------------------------------------------------------------------------------------

@dataclass
class _Records:
    """COCO and REFER records accumulated in image order, with running ids (from 1)."""

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    refs: list[dict[str, Any]]
    next_ann: int = 1
    next_ref: int = 1
    next_sent: int = 1

    def add(self, result: ImageResult, split: str) -> None:
        image_id = result.image_id
        scene = result.scene
        self.images.append({"id": image_id, "file_name": IMAGE_PATTERN.format(image_id=image_id),
                            "width": scene.width, "height": scene.height,
                            **({"drawing": result.drawing} if result.drawing else {})})
        ann_ids = [self._add_annotation(image_id, obj) for obj in scene.objects]
        for plan in result.refs:
            self._add_ref(image_id, ann_ids[plan.target], scene, plan, split)

    def _add_annotation(self, image_id: int, obj: SceneObject) -> int:
        x0, y0, x1, y1 = obj.box
        ann_id, self.next_ann = self.next_ann, self.next_ann + 1
        self.annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[obj.shape],
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(obj.area), "iscrowd": 0,
            "color": obj.color, "size": obj.size,
            # only for a non-standard rendering: standard annotations keep their old bytes
            **({"look": obj.look.record()} if obj.look is not None else {}),
        })
        return ann_id

    def _add_ref(self, image_id: int, ann_id: int, scene: Scene, plan: RefPlan,
                 split: str) -> None:
        sentences = []
        for expression in plan.expressions:
            sent = expression.text.lower()
            sentences.append({
                "sent_id": self.next_sent, "sent": sent, "raw": expression.text,
                "tokens": sent.split(), "type": expression.type,
                "graph": expression.graph.to_dict(),
            })
            self.next_sent += 1
        self.refs.append({
            "ref_id": self.next_ref, "ann_id": ann_id, "image_id": image_id,
            "category_id": CATEGORY_IDS[scene.objects[plan.target].shape], "split": split,
            "file_name": f"synthref_{image_id:06d}_{ann_id}.png",
            "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
        })
        self.next_ref += 1


def _split_stats(records: _Records, splits: Sequence[str]) -> dict[str, SplitStats]:
    image_split = {i + 1: split for i, split in enumerate(splits)}
    annotations = Counter(image_split[a["image_id"]] for a in records.annotations)
    stats = {}
    for name in (s for s in SPLITS if s in image_split.values()):
        refs = [r for r in records.refs if r["split"] == name]
        types = Counter(s["type"] for r in refs for s in r["sentences"])
        stats[name] = SplitStats(
            images=sum(1 for s in splits if s == name), annotations=annotations[name],
            refs=len(refs), sentences=sum(types.values()),
            types={t: types[t] for t in EXPRESSION_TYPES if types[t]},
        )
    return stats


# --- files --------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON round trip: only dict/list/str/int/float/bool/None survive, and equal strings
    are distinct objects, so the pickle's bytes depend only on the content (not on which
    worker produced an object or whether two records share one)."""
    return json.loads(json.dumps(value))


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    text = json.dumps(data, indent=indent, ensure_ascii=True)  # keys in insertion order
    path.write_text(text + "\n", encoding="utf-8")


def _readme(seed: int, stats: Mapping[str, SplitStats], rendering: str) -> str:
    lines = [
        f"SynthRef {VERSION}: synthetic referring-expression grounding in the REFER layout.",
        f"Generated by {GENERATOR} with seed {seed}; same seed and arguments -> same bytes.",
        *([f"rendering: {rendering} (refground.data.synth.rendering); annotations add 'look'"]
          if rendering != "standard" else []),
        "",
        "refs(synth).p   pickle of REFER refs; each sentence also has 'type' and 'graph'",
        "instances.json  COCO images/annotations/categories; annotations add 'color', 'size'",
        "stats.json      images, refs and sentences per split and expression type",
        "../images/      the PNG images named in instances.json",
        "",
        "splits: " + ", ".join(f"{name}={s.images} images/{s.sentences} sentences"
                               for name, s in stats.items()),
        "testC: referents are colour-shape combinations never referred to in other splits.",
        "testR: relational expressions only.",
    ]
    return "\n".join(lines) + "\n"


def _clear_previous(images_dir: Path) -> None:
    """Remove images of an earlier SynthRef run, so a smaller run leaves no stale files."""
    for path in sorted(images_dir.glob("synthref_*.png")):
        path.unlink()


# --- entry point --------------------------------------------------------------------------------

def _check_arguments(seed: int, fractions: Mapping[str, float], held_out_fraction: float,
                     type_weights: Mapping[str, float]) -> None:
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown or any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError(
            f"split fractions must be non-negative numbers for {', '.join(SPLITS)} with a "
            f"positive sum; got {dict(fractions)}")
    if fractions.get("testC", 0) > 0 and not 0 < held_out_fraction <= 0.5:
        raise ConfigError(
            f"held_out_fraction must be in (0, 0.5] when testC is generated, got "
            f"{held_out_fraction}")
    bad = sorted(set(type_weights) - set(EXPRESSION_TYPES))
    if bad or any(v < 0 for v in type_weights.values()) or sum(type_weights.values()) <= 0:
        raise ConfigError(
            f"type weights must be non-negative for {', '.join(EXPRESSION_TYPES)} with a "
            f"positive sum; got {dict(type_weights)}")


def synthref_dataset(out_dir: str | Path) -> Dataset:
    """The SynthRef :func:`generate_synthref` wrote to ``out_dir``, as a :class:`Dataset`."""
    return Dataset(Path(out_dir), DATASET, SPLIT_BY)


def generate_synthref(
    out_dir: str | Path,
    seed: int = 0,
    num_images: int = 2000,
    *,
    fractions: Mapping[str, float] | None = None,
    held_out_fraction: float = 0.15,
    type_weights: Mapping[str, float] | None = None,
    scale: str | None = None,
    scene_config: SceneConfig | None = None,
    workers: int | None = None,
    phrasing: str = "standard",
    rendering: str = "standard",
    train_drawings: int = 1,
) -> SynthStats:
    """Write SynthRef under ``out_dir`` in the REFER layout and return its statistics.

    ``fractions`` maps split names to shares of ``num_images`` (default 0.7/0.08/0.1/0.06/0.06
    for train/val/test/testC/testR; every listed split gets at least one image);
    ``held_out_fraction`` of the colour-shape combinations are reserved for testC referents.
    ``scale`` names the object-size preset (:data:`~refground.data.synth.scales.SCALES`;
    default ``DEFAULT_SCALE``); ``scene_config`` replaces a preset with custom settings.
    ``workers`` processes build the images (default: available CPUs, at most 8, or 1 below
    64 images); the output is byte-identical for any number of workers. Earlier
    ``synthref_*.png`` images in ``out_dir/images`` are replaced. ``phrasing="varied"`` writes
    the same images, referents and logical forms with other wordings
    (:mod:`~refground.data.synth.paraphrase`). ``rendering`` names how the scenes are drawn
    (:data:`~refground.data.synth.rendering.RENDERINGS`: ``standard``, the test drawing
    ``shifted``, the training distribution ``randomised``); the splits, held-out combinations
    and scene layouts are the same for every rendering of a seed. ``train_drawings`` > 1 (a
    non-standard rendering only) adds ``train_drawings - 1`` more drawings of every train scene
    as further train images, numbered after the others: domain randomisation resampled per
    copy, while every other split (and the first drawing of train) stays exactly as with 1.
    """
    if rendering_named(rendering).is_standard and train_drawings != 1:
        raise ConfigError("train_drawings > 1 needs a rendering that draws with randomness "
                          "(shifted or randomised): standard drawings of a scene are identical")
    if train_drawings < 1:
        raise ConfigError(f"train_drawings must be >= 1, got {train_drawings}")
    if phrasing not in PHRASINGS:
        raise ConfigError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    type_weights = dict(DEFAULT_TYPE_WEIGHTS if type_weights is None else type_weights)
    _check_arguments(seed, fractions, held_out_fraction, type_weights)
    if scene_config is not None and scale is not None:
        raise ConfigError("pass either scale or scene_config, not both: a scale is a named "
                          "SceneConfig")
    scene_config = scene_config or scene_config_for(DEFAULT_SCALE if scale is None else scale)
    splits = assign_splits(num_images, fractions, seed)
    out_dir = Path(out_dir)
    dataset_dir, images_dir = out_dir / DATASET, out_dir / "images"
    dataset_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(images_dir)

    held_out = held_out_combos(seed, held_out_fraction) if "testC" in splits else ()
    weights = tuple((t, float(w)) for t, w in type_weights.items() if w > 0)
    jobs = [
        ImageJob(index, seed, split, held_out,
                 str(images_dir / IMAGE_PATTERN.format(image_id=index + 1)), scene_config,
                 weights, phrasing, rendering)
        for index, split in enumerate(splits)
    ]
    extra = [(index, drawing) for index, split in enumerate(splits) if split == "train"
             for drawing in range(1, train_drawings)]
    jobs += [replace(jobs[index], drawing=drawing, image_id=image_id,
                     image_path=str(images_dir / IMAGE_PATTERN.format(image_id=image_id)))
             for image_id, (index, drawing) in enumerate(extra, start=num_images + 1)]
    splits = [*splits, *("train" for _ in extra)]  # the split of image id i is splits[i - 1]
    records = _Records([], [], [])
    for result in _run_jobs(jobs, default_workers(num_images) if workers is None else workers):
        records.add(result, splits[result.image_id - 1])

    stats = _split_stats(records, splits)
    info = {
        "description": "SynthRef: synthetic referring-expression grounding benchmark",
        "generator": GENERATOR, "version": VERSION, "seed": seed,
        "args": {"num_images": num_images, "fractions": fractions,
                 "held_out_fraction": held_out_fraction, "type_weights": type_weights,
                 "scene": scene_config.record(),
                 # only when varied: standard output stays byte-identical to earlier versions
                 **({"phrasing": phrasing} if phrasing != "standard" else {}),
                 **({"rendering": rendering} if rendering != "standard" else {}),
                 **({"train_drawings": train_drawings} if train_drawings != 1 else {})},
        "held_out_combos": [list(c) for c in held_out],
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "sizes": {name: [low, high] for name, low, high in scene_config.sizes},
    }
    categories = [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES]
    _write_json(dataset_dir / "instances.json", {
        "info": info, "images": records.images, "annotations": records.annotations,
        "categories": categories})
    with open(dataset_dir / f"refs({SPLIT_BY}).p", "wb") as stream:
        pickle.dump(_plain(records.refs), stream, protocol=4)
    _write_json(dataset_dir / "stats.json", {
        "generator": GENERATOR, "version": VERSION, "seed": seed,
        "splits": {name: s.to_dict() for name, s in stats.items()},
        "held_out_combos": [list(c) for c in held_out],
        **({"rendering": rendering} if rendering != "standard" else {})}, indent=2)
    (dataset_dir / "README.txt").write_text(_readme(seed, stats, rendering), encoding="utf-8")
    return SynthStats(out_dir, seed, stats, held_out,
                      scale_of(scene_config.record(), info["sizes"]), rendering)


def dataset_rendering(root: str | Path) -> str:
    """The rendering a SynthRef under ``root`` was drawn with, read back from its
    ``instances.json`` (SynthRef 1.0 files without the field are ``standard``).

    Raises ConfigError when it cannot be told: no instances file, not written by this
    generator, or a rendering this version does not know."""
    path = Path(root) / DATASET / "instances.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))["info"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"cannot tell how {root} was drawn: no readable SynthRef "
                          f"instances.json with an 'info' record at {path} ({error})") from None
    if not isinstance(info, dict) or info.get("generator") != GENERATOR:
        raise ConfigError(f"cannot tell how {root} was drawn: {path} was not written by "
                          f"{GENERATOR}")
    name = (info.get("args") or {}).get("rendering", "standard")
    rendering_named(name)
    return str(name)


def rendering_record(root: str | Path) -> dict[str, Any] | None:
    """What a training record says of its data's drawing: the rendering's name and parameters
    and, for the training distribution, which of the test drawing's parameters it shares and
    which it holds out. None when the data is not a SynthRef this version can read."""
    from refground.data.synth.rendering import HELD_OUT, RANDOMISED

    try:
        name = dataset_rendering(root)
    except ConfigError:
        return None
    record: dict[str, Any] = {"name": name, "parameters": rendering_named(name).record()}
    if name == RANDOMISED.name:
        record["versus_shifted"] = HELD_OUT
    return record
