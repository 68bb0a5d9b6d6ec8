"""SynthRef generator: file layout, determinism, and *independent* checks of what it claims.

The semantic checks below re-derive answers from ``instances.json`` (category, colour, size,
box) with their own small word tables; they never call the generator's evaluator, so a bug
there cannot hide itself.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from refground.cli import app
from refground.data.synth import (
    DEFAULT_SCALE,
    SCALES,
    SPLITS,
    SceneConfig,
    generate_synthref,
    scale_of,
)
from refground.data.synth.scenes import sample_scene
from refground.data.synth.writer import split_sizes
from refground.errors import ConfigError
from refground.types import SceneGraph

SEED = 3
# Images per scale for the module's datasets: more at refcoco scale, where its size statistics
# are checked (and where fewer objects per image give fewer sentences per image).
IMAGES = {"small": 40, "refcoco": 60}
# SHA-256 over (relative path, SHA-256 of the bytes) of every file that
# generate_synthref(root, seed=3, num_images=40, workers=1) wrote with the generator as it was
# before scales existed (commit 9127603c, the last to touch src/refground/data/synth); computed
# then with the same digest as _tree_digest. The small scale must keep producing these bytes.
SMALL_SEED3_40_DIGEST = "768cb81fb8a7279a2eb0a77a4f92560bbf755ecb76afac9b1891125ea0abe658"
SIZE_WORDS = {"small": "small", "little": "small", "medium": "medium", "large": "large",
              "big": "large"}
GENERIC_HEADS = {"object", "shape", "thing", "one"}
PREDICATES = {"left of", "right of", "above", "below", "closest to", "next to"}


@pytest.fixture(scope="module", params=list(SCALES))
def scale(request: pytest.FixtureRequest) -> str:
    """Every test that uses the dataset runs once per scale."""
    return request.param


@pytest.fixture(scope="module", params=["standard", "shifted"])
def rendering(request: pytest.FixtureRequest) -> str:
    """... and once per rendering: the shifted drawing must keep every promise the standard
    one makes about boxes, sizes and what the expressions mean (tests/test_synth_rendering.py
    checks what differs)."""
    return request.param


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory, scale: str, rendering: str) -> Path:
    root = tmp_path_factory.mktemp(f"synth-{scale}-{rendering}") / "data"
    generate_synthref(root, seed=SEED, num_images=IMAGES[scale], scale=scale, workers=1,
                      rendering=rendering)
    return root


@pytest.fixture(scope="module")
def refs(synth_root: Path) -> list[dict[str, Any]]:
    with open(synth_root / "synthref" / "refs(synth).p", "rb") as stream:
        return pickle.load(stream)


@pytest.fixture(scope="module")
def instances(synth_root: Path) -> dict[str, Any]:
    return json.loads((synth_root / "synthref" / "instances.json").read_text())


@pytest.fixture(scope="module")
def world(instances: dict[str, Any]) -> dict[str, Any]:
    """Annotations by id and by image, category names, colour words: the facts to check with."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return {
        "anns": {a["id"]: a for a in instances["annotations"]},
        "by_image": by_image,
        "images": {i["id"]: i for i in instances["images"]},
        "categories": {c["id"]: c["name"] for c in instances["categories"]},
        "colors": {a["color"] for a in instances["annotations"]},
    }


def _sentences(refs: list[dict[str, Any]], kind: str | None = None
               ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for ref in refs:
        for sentence in ref["sentences"]:
            if kind is None or sentence["type"] == kind:
                yield ref, sentence


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0"
                          + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _area_shares(instances: dict[str, Any], refs: list[dict[str, Any]]) -> np.ndarray:
    """Box area / image area of every referent."""
    images = {i["id"]: i for i in instances["images"]}
    boxes = {a["id"]: a["bbox"] for a in instances["annotations"]}
    return np.array([boxes[r["ann_id"]][2] * boxes[r["ann_id"]][3]
                     / (images[r["image_id"]]["width"] * images[r["image_id"]]["height"])
                     for r in refs])


# --- an independent resolver over instances.json ------------------------------------------------

def _matches(entity: dict[str, Any], ann: dict[str, Any], world: dict[str, Any]) -> bool:
    """Does an annotation fit the entity's head noun and colour/size words?"""
    head = entity["head"]
    if head not in GENERIC_HEADS and world["categories"][ann["category_id"]] != head:
        return False
    for word in entity["attributes"]:
        if word in world["colors"]:
            if ann["color"] != word:
                return False
        elif SIZE_WORDS[word] != ann["size"]:
            return False
    return True


def _center(ann: dict[str, Any]) -> tuple[float, float]:
    x, y, w, h = ann["bbox"]
    return x + w / 2, y + h / 2


SUPERLATIVE_KEYS = {
    "leftmost": lambda a: _center(a)[0], "rightmost": lambda a: -_center(a)[0],
    "topmost": lambda a: _center(a)[1], "bottommost": lambda a: -_center(a)[1],
}


def _resolve(entity: dict[str, Any], image_id: int, world: dict[str, Any]
             ) -> list[dict[str, Any]]:
    """Candidates for an entity with attributes and at most a superlative."""
    found = [a for a in world["by_image"][image_id] if _matches(entity, a, world)]
    if entity["spatial"]:
        (word,) = entity["spatial"]
        found = sorted(found, key=SUPERLATIVE_KEYS[word])[:1]
    return found


def _strictly(predicate: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a predicate b`` with disjoint boxes and the offset within 45 degrees of the axis."""
    ax, ay, aw, ah = a["bbox"]
    bx, by, bw, bh = b["bbox"]
    dx, dy = _center(b)[0] - _center(a)[0], _center(b)[1] - _center(a)[1]
    if predicate == "left of":
        return ax + aw < bx and abs(dy) <= dx
    if predicate == "right of":
        return bx + bw < ax and abs(dy) <= -dx
    if predicate == "above":
        return ay + ah < by and abs(dx) <= dy
    if predicate == "below":
        return by + bh < ay and abs(dx) <= -dy
    raise ValueError(predicate)


# --- layout and schema --------------------------------------------------------------------------

def test_files_are_in_refer_layout(synth_root: Path, instances: dict[str, Any],
                                   scale: str) -> None:
    for name in ("refs(synth).p", "instances.json", "stats.json", "README.txt"):
        assert (synth_root / "synthref" / name).is_file()
    names = sorted(p.name for p in (synth_root / "images").iterdir())
    assert names == sorted(i["file_name"] for i in instances["images"])
    assert len(names) == IMAGES[scale]
    assert instances["info"]["seed"] == SEED
    assert scale_of(instances["info"]["args"]["scene"], instances["info"]["sizes"]) == scale
    assert all(c["supercategory"] == "shape" for c in instances["categories"])


def test_pickle_holds_only_plain_containers(refs: list[dict[str, Any]]) -> None:
    def walk(value: Any) -> None:
        assert type(value) in (dict, list, str, int, float, bool, type(None)), type(value)
        if isinstance(value, dict):
            for key, item in value.items():
                assert type(key) is str
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    assert isinstance(refs, list) and refs
    walk(refs)


def test_refs_follow_the_refer_schema(refs: list[dict[str, Any]], world: dict[str, Any]) -> None:
    ref_keys = {"ref_id", "ann_id", "image_id", "category_id", "split", "file_name", "sent_ids",
                "sentences"}
    for ref in refs:
        assert set(ref) == ref_keys
        ann = world["anns"][ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"]
        assert ann["category_id"] == ref["category_id"]
        assert ref["file_name"] == f"synthref_{ref['image_id']:06d}_{ref['ann_id']}.png"
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert 1 <= len(ref["sentences"]) <= 3
        for sentence in ref["sentences"]:
            assert set(sentence) == {"sent_id", "sent", "raw", "tokens", "type", "graph"}
            assert sentence["sent"] == sentence["raw"].lower()
            assert sentence["tokens"] == sentence["sent"].split()
            graph = sentence["graph"]
            assert SceneGraph.from_dict(graph).to_dict() == graph
            assert graph["entities"], "entity 0 is the referent"
            referent = graph["entities"][0]
            assert referent["span"].lower() in sentence["sent"]


def test_ids_are_unique_and_start_at_one(refs: list[dict[str, Any]],
                                         instances: dict[str, Any]) -> None:
    for ids in ([r["ref_id"] for r in refs],
                [s["sent_id"] for _, s in _sentences(refs)],
                [a["id"] for a in instances["annotations"]],
                [i["id"] for i in instances["images"]]):
        assert ids == list(range(1, len(ids) + 1))


def test_same_seed_and_scale_give_identical_bytes_for_any_worker_count(
        synth_root: Path, scale: str, rendering: str, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_synthref(again, seed=SEED, num_images=IMAGES[scale], scale=scale, workers=2,
                      rendering=rendering)
    assert _file_hashes(again) == _file_hashes(synth_root)


@pytest.mark.parametrize("scale", ["small"], indirect=True)
@pytest.mark.parametrize("rendering", ["standard"], indirect=True)
def test_small_scale_writes_the_bytes_of_synthref_before_scales(synth_root: Path) -> None:
    assert IMAGES["small"] == 40 and SEED == 3, "the reference digest is for seed 3, 40 images"
    assert _tree_digest(synth_root) == SMALL_SEED3_40_DIGEST


def test_different_seed_gives_different_data(synth_root: Path, scale: str, rendering: str,
                                             tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_synthref(other, seed=SEED + 1, num_images=IMAGES[scale], scale=scale, workers=1,
                      rendering=rendering)
    first, second = _file_hashes(synth_root), _file_hashes(other)
    assert first["synthref/refs(synth).p"] != second["synthref/refs(synth).p"]
    assert first["synthref/instances.json"] != second["synthref/instances.json"]
    assert first["images/synthref_000001.png"] != second["images/synthref_000001.png"]


def test_regenerating_replaces_stale_images(tmp_path: Path) -> None:
    generate_synthref(tmp_path, seed=0, num_images=8)
    generate_synthref(tmp_path, seed=0, num_images=5)
    assert len(list((tmp_path / "images").glob("*.png"))) == 5


# --- splits -------------------------------------------------------------------------------------

def test_all_five_splits_present(refs: list[dict[str, Any]], synth_root: Path,
                                 scale: str) -> None:
    assert {r["split"] for r in refs} == set(SPLITS)
    stats = json.loads((synth_root / "synthref" / "stats.json").read_text())
    assert set(stats["splits"]) == set(SPLITS)
    assert sum(s["images"] for s in stats["splits"].values()) == IMAGES[scale]
    assert sum(s["sentences"] for s in stats["splits"].values()) == sum(
        len(r["sentences"]) for r in refs)


def test_small_datasets_still_get_every_split() -> None:
    assert split_sizes(30, {s: f for s, f in zip(SPLITS, (0.7, 0.08, 0.1, 0.06, 0.06),
                                                   strict=True)}) == {
        "train": 21, "val": 2, "test": 3, "testC": 2, "testR": 2}
    assert set(split_sizes(5, dict.fromkeys(SPLITS, 1.0)).values()) == {1}


@pytest.mark.parametrize("arguments", [
    {"num_images": 3},
    {"fractions": {"train": 1.0, "dev": 0.5}},
    {"seed": -1},
    {"type_weights": {"attribute": 0.0}},
    {"scale": "huge"},
    {"scale": "refcoco", "scene_config": SceneConfig()},
])
def test_bad_arguments_raise_config_errors(arguments: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_synthref(tmp_path / "out", **{"num_images": 10, **arguments})
    assert not (tmp_path / "out").exists(), "nothing is written for rejected arguments"


def test_unknown_scale_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown SynthRef scale 'huge'") as caught:
        generate_synthref(tmp_path / "out", num_images=10, scale="huge")
    assert all(name in str(caught.value) for name in ("small", "refcoco"))


def test_impossible_scene_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=3)
    with pytest.raises(ConfigError, match="min_side"):
        SceneConfig(min_side=50)
    with pytest.raises(ConfigError, match="too close"):
        SceneConfig(sizes=(("small", 24, 30), ("medium", 32, 48), ("large", 60, 76)))
    with pytest.raises(ConfigError, match="small, medium, large"):
        SceneConfig(sizes=(("tiny", 24, 30), ("medium", 38, 48), ("large", 60, 76)))
    with pytest.raises(ConfigError, match="placement"):
        SceneConfig(placement="anywhere")
    with pytest.raises(ConfigError, match="max_fill"):
        SceneConfig(max_fill=1.5)


def test_each_image_belongs_to_one_split(refs: list[dict[str, Any]]) -> None:
    split_of: dict[int, str] = {}
    for ref in refs:
        assert split_of.setdefault(ref["image_id"], ref["split"]) == ref["split"]


def test_testc_referents_are_never_referred_to_elsewhere(refs: list[dict[str, Any]],
                                                         world: dict[str, Any],
                                                         instances: dict[str, Any]) -> None:
    def combo(ref: dict[str, Any]) -> tuple[str, str]:
        ann = world["anns"][ref["ann_id"]]
        return ann["color"], world["categories"][ann["category_id"]]

    held_out = {combo(r) for r in refs if r["split"] == "testC"}
    elsewhere = {combo(r) for r in refs if r["split"] != "testC"}
    assert held_out
    assert not held_out & elsewhere
    assert held_out <= {tuple(c) for c in instances["info"]["held_out_combos"]}


def test_testr_is_relations_only(refs: list[dict[str, Any]]) -> None:
    sentences = [s for r in refs if r["split"] == "testR" for s in r["sentences"]]
    assert sentences
    for sentence in sentences:
        assert sentence["type"] == "relation"
        relations = sentence["graph"]["relations"]
        assert len(relations) >= 1
        assert all(r["predicate"] in PREDICATES for r in relations)


# --- geometry and pixels ------------------------------------------------------------------------

def test_png_sizes_match_instances(synth_root: Path, instances: dict[str, Any]) -> None:
    for image in instances["images"]:
        with Image.open(synth_root / "images" / image["file_name"]) as png:
            assert png.size == (image["width"], image["height"])
            assert png.mode == "RGB"


@pytest.mark.parametrize("rendering", ["standard"], indirect=True)  # exact colours: standard only
def test_boxes_are_inside_images_and_tight_around_the_drawn_shape(
        synth_root: Path, instances: dict[str, Any], world: dict[str, Any]) -> None:
    palette = {name: np.array(rgb, dtype=np.uint8)
               for name, rgb in instances["info"]["colors"].items()}
    for image in instances["images"]:
        pixels = np.asarray(Image.open(synth_root / "images" / image["file_name"]))
        for ann in world["by_image"][image["id"]]:
            x, y, w, h = (int(v) for v in ann["bbox"])
            assert min(x, y) >= 0
            assert x + w <= image["width"] and y + h <= image["height"]
            # the box and a one-pixel ring around it: where the object's colour is painted
            top, left = max(y - 1, 0), max(x - 1, 0)
            ring = (pixels[top:y + h + 1, left:x + w + 1] == palette[ann["color"]]).all(axis=-1)
            inside = ring[y - top:y - top + h, x - left:x - left + w]
            assert inside.sum() == ann["area"]
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            assert ring.sum() == inside.sum(), "no object pixel just outside its box"


def test_objects_do_not_overlap(world: dict[str, Any]) -> None:
    for anns in world["by_image"].values():
        assert 3 <= len(anns) <= 8
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns])
        overlap_w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(
            boxes[:, None, 0], boxes[None, :, 0])
        overlap_h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(
            boxes[:, None, 1], boxes[None, :, 1])
        overlapping = (overlap_w > 0) & (overlap_h > 0)
        np.fill_diagonal(overlapping, False)
        assert not overlapping.any()


# --- expressions, checked independently ---------------------------------------------------------

def test_every_expression_type_occurs(refs: list[dict[str, Any]]) -> None:
    assert {s["type"] for _, s in _sentences(refs)} == {
        "attribute", "position", "relation", "comparative", "ordinal"}


def test_attribute_expressions_name_exactly_one_object(refs: list[dict[str, Any]],
                                                       world: dict[str, Any]) -> None:
    checked = 0
    for ref, sentence in _sentences(refs, "attribute"):
        (entity,) = sentence["graph"]["entities"]
        assert not entity["spatial"]
        found = [a["id"] for a in world["by_image"][ref["image_id"]]
                 if _matches(entity, a, world)]
        assert found == [ref["ann_id"]], sentence["raw"]
        checked += 1
    assert checked >= 10


def test_superlatives_pick_the_extreme_object(refs: list[dict[str, Any]],
                                              world: dict[str, Any]) -> None:
    checked = 0
    for ref, sentence in _sentences(refs, "position"):
        entity = sentence["graph"]["entities"][0]
        if entity["spatial"][0] not in SUPERLATIVE_KEYS:
            continue
        found = _resolve(entity, ref["image_id"], world)
        assert [a["id"] for a in found] == [ref["ann_id"]], sentence["raw"]
        checked += 1
    assert checked >= 3


def test_directional_relations_hold_for_the_referent_only(refs: list[dict[str, Any]],
                                                          world: dict[str, Any]) -> None:
    checked = 0
    for ref, sentence in _sentences(refs, "relation"):
        subject, anchor_entity = sentence["graph"]["entities"]
        (relation,) = sentence["graph"]["relations"]
        assert (relation["subject"], relation["object"]) == (0, 1)
        if relation["predicate"] not in ("left of", "right of", "above", "below"):
            continue
        anchors = _resolve(anchor_entity, ref["image_id"], world)
        assert len(anchors) == 1, sentence["raw"]
        holding = [a["id"] for a in world["by_image"][ref["image_id"]]
                   if a["id"] != anchors[0]["id"] and _matches(subject, a, world)
                   and _strictly(relation["predicate"], a, anchors[0])]
        assert holding == [ref["ann_id"]], sentence["raw"]
        checked += 1
    assert checked >= 3


def test_the_refer_loader_reads_every_split(synth_root: Path,
                                            refs: list[dict[str, Any]]) -> None:
    from refground.data.synth import synthref_dataset

    for split in SPLITS:
        samples = synthref_dataset(synth_root).split(split)
        expected = sum(len(r["sentences"]) for r in refs if r["split"] == split)
        assert len(samples) == expected
        sample = samples.samples[0]
        assert sample.graph is not None and sample.expression_type is not None
        assert sample.image_path.is_file()


# --- scales -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["refcoco"], indirect=True)
def test_refcoco_referents_are_as_large_as_refcocog_ones(instances: dict[str, Any],
                                                         refs: list[dict[str, Any]]) -> None:
    shares = _area_shares(instances, refs)
    assert len(shares) >= 100
    assert np.median(shares) >= 0.03
    assert np.mean(shares > 0.02) >= 0.8
    assert np.any(shares > 0.2)


@pytest.mark.parametrize("scale", ["small"], indirect=True)
def test_small_referents_stay_small(instances: dict[str, Any],
                                    refs: list[dict[str, Any]]) -> None:
    assert np.median(_area_shares(instances, refs)) < 0.015


def test_size_words_keep_their_order(instances: dict[str, Any]) -> None:
    """Every "large" box is longer than every "medium" one, which is longer than every
    "small" one, within the dataset: the size words mean the same in every image."""
    longest: dict[str, list[float]] = {"small": [], "medium": [], "large": []}
    for ann in instances["annotations"]:
        longest[ann["size"]].append(max(ann["bbox"][2], ann["bbox"][3]))
    assert all(longest.values())
    assert max(longest["small"]) < min(longest["medium"])
    assert max(longest["medium"]) < min(longest["large"])


def test_refcoco_scenes_still_fit_eight_objects() -> None:
    rng = np.random.default_rng(0)
    counts = [len(sample_scene(rng, SCALES["refcoco"]).objects) for _ in range(300)]
    assert min(counts) >= 3 and max(counts) == 8
    assert counts.count(8) >= 15
    assert np.mean(counts) >= 4.5


def test_cli_scale_option_and_its_default(tmp_path: Path) -> None:
    runner = CliRunner()
    for extra, expected in (([], DEFAULT_SCALE), (["--scale", "refcoco"], "refcoco")):
        out = tmp_path / expected
        result = runner.invoke(app, ["synth", "--out", str(out), "--images", "5", *extra])
        assert result.exit_code == 0, result.output
        info = json.loads((out / "synthref" / "instances.json").read_text())["info"]
        assert scale_of(info["args"]["scene"], info["sizes"]) == expected
        assert f"scale {expected}" in result.output
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "bad"), "--images", "5",
                                 "--scale", "huge"])
    assert isinstance(result.exception, ConfigError)
    assert "refcoco" in str(result.exception) and "small" in str(result.exception)


# --- --phrasing varied ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phrasings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("phrasing")
    roots = {name: base / name for name in ("standard", "varied")}
    for name, root in roots.items():
        generate_synthref(root, seed=SEED, num_images=40, workers=1, phrasing=name)
    return roots


def _refs_of(root: Path) -> list[dict[str, Any]]:
    with open(root / "synthref" / "refs(synth).p", "rb") as stream:
        return pickle.load(stream)


def _meaning(graph: dict[str, Any]) -> tuple[Any, ...]:
    """What a graph says, whatever the synonyms: generic heads as one, size words by class."""
    entities = tuple(
        ("object" if e["head"] in GENERIC_HEADS else e["head"],
         frozenset(SIZE_WORDS.get(a, a) for a in e["attributes"]), tuple(e["spatial"]))
        for e in graph["entities"])
    return entities, tuple((r["subject"], r["predicate"], r["object"])
                           for r in graph["relations"])


def test_varied_phrasing_keeps_images_referents_and_meanings(phrasings: dict[str, Path]
                                                             ) -> None:
    standard, varied = (phrasings[name] for name in ("standard", "varied"))
    images = sorted((standard / "images").iterdir())
    assert [p.read_bytes() for p in images] == [
        (varied / "images" / p.name).read_bytes() for p in images]
    ours = json.loads((varied / "synthref" / "instances.json").read_text())
    theirs = json.loads((standard / "synthref" / "instances.json").read_text())
    assert ours["annotations"] == theirs["annotations"]
    assert ours["info"]["args"]["phrasing"] == "varied"
    assert "phrasing" not in theirs["info"]["args"]  # standard bytes as before the option
    changed = total = 0
    for a, b in zip(_refs_of(standard), _refs_of(varied), strict=True):
        assert (a["ref_id"], a["ann_id"], a["split"]) == (b["ref_id"], b["ann_id"], b["split"])
        for s, v in zip(a["sentences"], b["sentences"], strict=True):
            assert s["type"] == v["type"]
            assert _meaning(s["graph"]) == _meaning(v["graph"]), (s["raw"], v["raw"])
            changed += s["sent"] != v["sent"]
            total += 1
    assert changed >= 0.6 * total, "most sentences are worded otherwise"


def test_varied_phrasing_uses_the_promised_constructions(phrasings: dict[str, Path]) -> None:
    texts = " | ".join(s["sent"] for r in _refs_of(phrasings["varied"]) for s in r["sentences"])
    for construction in ("that is", "of the", "colored", "located"):
        assert construction in texts, construction


def test_the_parser_knows_the_generators_placing_verbs() -> None:
    """paraphrase's placing verbs are words the parser's lexicon knows as verbs; those said
    before a region must be posture verbs, or the parser keeps them as attributes."""
    from refground.data.synth.paraphrase import PLACED, PLACED_BEFORE_REGIONS
    from refground.language import parse_many
    from refground.language.lexicon import PARTICIPLES, POSTURE_VERBS

    assert set(PLACED_BEFORE_REGIONS) <= set(PLACED)
    assert set(PLACED_BEFORE_REGIONS) <= POSTURE_VERBS
    assert set(PLACED) <= POSTURE_VERBS | PARTICIPLES
    texts = [f"the red circle {verb} on the left side" for verb in PLACED_BEFORE_REGIONS]
    for graph in parse_many(texts, backend="rules"):
        assert [(e.head, e.attributes, e.spatial) for e in graph.entities] == [
            ("circle", ("red",), ("on the left",))]


@pytest.mark.parametrize("backend", ["rules", "spacy"])
def test_the_parser_reads_the_varied_phrasing(phrasings: dict[str, Path], backend: str) -> None:
    from refground.language import parse_many

    sentences = [s for r in _refs_of(phrasings["varied"]) for s in r["sentences"]]
    parsed = parse_many([s["raw"] for s in sentences], backend=backend)
    same = sum(_meaning(graph.to_dict())[0] == _meaning(s["graph"])[0]
               and _meaning(graph.to_dict())[1] == _meaning(s["graph"])[1]
               for graph, s in zip(parsed, sentences, strict=True))
    assert same >= 0.95 * len(sentences)


def test_unknown_phrasing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="phrasing must be one of standard, varied"):
        generate_synthref(tmp_path / "out", num_images=10, phrasing="poetic")
    assert not (tmp_path / "out").exists()


def test_cli_synth_takes_the_phrasing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "v"), "--images", "12",
                                      "--phrasing", "varied"])
    assert result.exit_code == 0, result.output
    assert "varied phrasing" in result.output
    info = json.loads((tmp_path / "v" / "synthref" / "instances.json").read_text())["info"]
    assert info["args"]["phrasing"] == "varied"
