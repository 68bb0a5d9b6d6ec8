"""SynthRef's renderings: ``shifted`` draws the same logical scenes in ways ``standard`` never
does, ``randomised`` is the training distribution, and every consumer can tell which is which.

What every rendering must keep (boxes inside images, size words in order, expressions that name
exactly their referent, byte determinism) is checked by tests/test_synth.py, which runs its
dataset tests once per rendering; this module checks what differs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from refground.cli import app
from refground.data.synth import generate_synthref
from refground.data.synth.rendering import (
    HELD_OUT,
    RANDOMISED,
    RENDERINGS,
    SHIFTED,
    STANDARD,
    Span,
    dress_scene,
    paint_background,
    render,
    rendering_named,
)
from refground.data.synth.scales import scene_config_for
from refground.data.synth.scenes import sample_scene
from refground.data.synth.writer import dataset_rendering, rendering_record
from refground.errors import ConfigError

SEED, IMAGES = 5, 30
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One SynthRef per rendering, same seed and size."""
    base = tmp_path_factory.mktemp("renderings")
    roots = {name: base / name for name in RENDERINGS}
    for name, root in roots.items():
        generate_synthref(root, seed=SEED, num_images=IMAGES, workers=1, rendering=name)
    return roots


def _instances(root: Path) -> dict[str, Any]:
    return json.loads((root / "synthref" / "instances.json").read_text())


def _stats(root: Path) -> dict[str, Any]:
    return json.loads((root / "synthref" / "stats.json").read_text())


def _objects_by_image(instances: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return by_image


@pytest.mark.parametrize("name", ["shifted", "randomised"])
def test_other_renderings_draw_the_same_scenes_differently(drawn: dict[str, Path],
                                                           name: str) -> None:
    standard, other = _instances(drawn["standard"]), _instances(drawn[name])
    # same images, sizes, objects (shape, colour, size class) and held-out combinations
    assert [(i["id"], i["width"], i["height"]) for i in standard["images"]] == [
        (i["id"], i["width"], i["height"]) for i in other["images"]]
    assert standard["info"]["held_out_combos"] == other["info"]["held_out_combos"]
    ours, theirs = _objects_by_image(other), _objects_by_image(standard)
    for image_id, anns in theirs.items():
        assert [(a["category_id"], a["color"], a["size"]) for a in anns] == [
            (a["category_id"], a["color"], a["size"]) for a in ours[image_id]]
        # each object stays in its nominal square, which the standard box nearly fills
        for a, b in zip(anns, ours[image_id], strict=True):
            x, y, w, h = a["bbox"]
            grow = 0.15 * max(w, h)
            bx, by, bw, bh = b["bbox"]
            assert x - grow <= bx and bx + bw <= x + w + grow
            assert y - grow <= by and by + bh <= y + h + grow
    # same split per image; the split sizes are those of standard
    assert {s: v["images"] for s, v in _stats(drawn["standard"])["splits"].items()} == {
        s: v["images"] for s, v in _stats(drawn[name])["splits"].items()}
    # and not one image is byte-identical
    for image in standard["images"]:
        a = (drawn["standard"] / "images" / image["file_name"]).read_bytes()
        assert a != (drawn[name] / "images" / image["file_name"]).read_bytes()


def test_standard_files_carry_no_rendering_fields(drawn: dict[str, Path]) -> None:
    instances = _instances(drawn["standard"])
    assert "rendering" not in instances["info"]["args"]
    assert not any("look" in a for a in instances["annotations"])
    assert not any("drawing" in i for i in instances["images"])
    assert "rendering" not in _stats(drawn["standard"])


def test_shifted_never_draws_with_standard_parameters(drawn: dict[str, Path]) -> None:
    instances = _instances(drawn["shifted"])
    assert instances["info"]["args"]["rendering"] == "shifted"
    assert _stats(drawn["shifted"])["rendering"] == "shifted"
    shapes = {c["id"]: c["name"] for c in instances["categories"]}
    for ann in instances["annotations"]:
        look, shape = ann["look"], shapes[ann["category_id"]]
        assert abs(look["rotation"]) >= 6.0
        assert 0.86 <= look["scale"] <= 0.96
        if shape == "cross":
            assert not 0.29 < look["proportion"] < 0.38  # standard: 1/3
        if shape == "star":
            assert not 0.40 < look["proportion"] < 0.52  # standard: 0.45
        if shape == "circle":
            assert look["aspect"] <= 0.92
        assert max(abs(v) for v in look["shade"]) <= 22 + 18
    kinds = {image["drawing"]["background"] for image in instances["images"]}
    assert kinds <= set(SHIFTED.background.kinds) and "standard" not in kinds
    assert any(image["drawing"]["jpeg_quality"] is not None for image in instances["images"])
    assert any(image["drawing"]["blur"] > 0 for image in instances["images"])


def test_randomised_draws_a_quarter_of_objects_as_standard(drawn: dict[str, Path]) -> None:
    anns = _instances(drawn["randomised"])["annotations"]
    plain = np.mean(["look" not in a for a in anns])
    assert 0.1 < plain < 0.4  # p_standard = 0.25


def test_shifted_boxes_are_tight_around_the_painted_pixels() -> None:
    """With blur and JPEG off, the pixels that differ from the bare background are exactly
    the objects', and each object's box is their bounding box."""
    sharp = replace(SHIFTED, p_blur=0.0, p_jpeg=0.0)
    config = scene_config_for("refcoco")
    for seed in range(6):
        scene = dress_scene(sample_scene(np.random.default_rng([seed, 0]), config), sharp,
                            np.random.default_rng([seed, 1]))
        image, drawing = render(scene, sharp, np.random.default_rng([seed, 2]))
        background, kind = paint_background(np.random.default_rng([seed, 2]), scene.width,
                                            scene.height, sharp.background)
        assert drawing["background"] == kind and drawing["blur"] == 0
        changed = (np.asarray(image) != np.asarray(background)).any(axis=-1)
        claimed = np.zeros_like(changed)
        for obj in scene.objects:
            square = changed[obj.y:obj.y + obj.side, obj.x:obj.x + obj.side]
            claimed[obj.y:obj.y + obj.side, obj.x:obj.x + obj.side] = True
            rows, cols = np.flatnonzero(square.any(axis=1)), np.flatnonzero(square.any(axis=0))
            assert obj.box == (float(obj.x + cols[0]), float(obj.y + rows[0]),
                               float(obj.x + cols[-1] + 1), float(obj.y + rows[-1] + 1))
        assert not (changed & ~claimed).any(), "paint outside every object's square"


def test_training_distribution_holds_out_what_it_says() -> None:
    """HELD_OUT (recorded in training.json) against the parameters themselves: every range
    said to overlap lies inside randomised's; the held-out ones do not."""
    def hull(span: Span) -> tuple[float, float]:
        return min(b[0] for b in span.bands), max(b[1] for b in span.bands)

    def inside(test: Span, train: Span) -> bool:
        (low, high), (train_low, train_high) = hull(test), hull(train)
        return train_low <= low and high <= train_high

    test_looks, train_looks = SHIFTED.looks, RANDOMISED.looks
    for field in ("turn", "small_turn", "aspect", "scale", "cross_arm", "star_depth", "stroke"):
        assert inside(getattr(test_looks, field), getattr(train_looks, field)), field
    assert test_looks.shade <= train_looks.shade
    assert test_looks.brightness <= train_looks.brightness
    assert inside(SHIFTED.blur, RANDOMISED.blur)
    assert inside(SHIFTED.background.speckle, RANDOMISED.background.speckle)
    assert inside(SHIFTED.background.brightness, RANDOMISED.background.brightness)
    # partly held out: strong tints and low JPEG qualities
    assert hull(SHIFTED.background.tint)[1] > hull(RANDOMISED.background.tint)[1]
    assert hull(SHIFTED.jpeg_quality)[0] < hull(RANDOMISED.jpeg_quality)[0]
    # held out: tiled backgrounds
    assert "tiles" in SHIFTED.background.kinds and "tiles" not in RANDOMISED.background.kinds
    assert set(HELD_OUT) == {"overlap", "partly held out", "held out"}
    assert "tiled" in HELD_OUT["held out"]


def test_rendering_is_read_back_and_unknown_data_refused(drawn: dict[str, Path],
                                                          tmp_path: Path) -> None:
    assert {name: dataset_rendering(root) for name, root in drawn.items()} == {
        name: name for name in RENDERINGS}
    with pytest.raises(ConfigError, match=r"cannot tell how .* was drawn"):
        dataset_rendering(tmp_path / "nowhere")
    foreign = tmp_path / "foreign" / "synthref"
    foreign.mkdir(parents=True)
    (foreign / "instances.json").write_text(json.dumps({"info": {"generator": "someone"}}))
    with pytest.raises(ConfigError, match=r"not written by refground\.data\.synth"):
        dataset_rendering(foreign.parent)
    future = _instances(drawn["shifted"])
    future["info"]["args"]["rendering"] = "watercolour"
    (foreign / "instances.json").write_text(json.dumps(future))
    with pytest.raises(ConfigError, match="unknown rendering 'watercolour'; choose one of"):
        dataset_rendering(foreign.parent)


def test_training_records_name_the_rendering(drawn: dict[str, Path], tmp_path: Path) -> None:
    from refground.train.pretrain_clip import data_recipe

    record = data_recipe(drawn["randomised"])["rendering"]
    assert record["name"] == "randomised"
    assert record["parameters"] == RANDOMISED.record()
    assert record["versus_shifted"] == HELD_OUT
    assert "versus_shifted" not in rendering_record(drawn["standard"])
    assert rendering_record(tmp_path) is None  # not a SynthRef: nothing claimed


def test_unknown_rendering_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown rendering 'sketchy'; choose one of: "
                                          "standard, shifted, randomised"):
        generate_synthref(tmp_path / "api", num_images=10, rendering="sketchy")
    assert not (tmp_path / "api").exists()
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "cli"), "--images", "10",
                                      "--rendering", "sketchy"])
    assert isinstance(result.exception, ConfigError)
    assert "standard, shifted, randomised" in str(result.exception)
    assert not (tmp_path / "cli").exists()
    with pytest.raises(ConfigError, match="choose one of"):
        rendering_named("")


def test_cli_synth_takes_the_rendering(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "s"), "--images", "12",
                                      "--rendering", "shifted"])
    assert result.exit_code == 0, result.output
    assert "shifted rendering" in " ".join(result.output.split())  # rich wraps lines
    assert dataset_rendering(tmp_path / "s") == "shifted"


def test_rendering_records_are_plain_json() -> None:
    for rendering in RENDERINGS.values():
        record = rendering.record()
        assert json.loads(json.dumps(record)) == record
        assert record["name"] == rendering.name
    assert STANDARD.record()["looks"] is None


@pytest.mark.parametrize("bench", ["clip_probe.py", "proposals.py"])
def test_benches_refuse_data_whose_rendering_they_cannot_tell(bench: str,
                                                              tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "cannot tell how" in done.stderr


def test_synth_stats_describes_the_drawing(drawn: dict[str, Path]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "synth_stats.py"), "--data",
                           str(drawn["standard"]), str(drawn["shifted"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line[:28].strip(): line[28:].split() for line in done.stdout.splitlines()
            if line.strip()}  # a 28-character label column, then one cell per dataset
    assert rows["rendering"] == ["standard", "shifted"]
    assert rows["objects with a look"] == ["0.0%", "100.0%"]
    assert rows["rotated"] == ["-", "100.0%"]


def test_extra_train_drawings_redraw_train_scenes_and_leave_other_splits_alone(
        drawn: dict[str, Path], tmp_path: Path) -> None:
    once, thrice = drawn["randomised"], tmp_path / "thrice"
    generate_synthref(thrice, seed=SEED, num_images=IMAGES, workers=1, rendering="randomised",
                      train_drawings=3)
    first, more = _instances(once), _instances(thrice)
    assert more["info"]["args"]["train_drawings"] == 3
    # the first IMAGES images are byte for byte those of one drawing
    for image in first["images"]:
        name = image["file_name"]
        assert (once / "images" / name).read_bytes() == (thrice / "images" / name).read_bytes()
    train = {s: v for s, v in _stats(once)["splits"].items()}["train"]["images"]
    assert len(more["images"]) == IMAGES + 2 * train
    assert _stats(thrice)["splits"]["train"]["images"] == 3 * train
    for split in ("val", "test", "testC", "testR"):
        assert _stats(thrice)["splits"][split] == _stats(once)["splits"][split]
    # each extra image is a train scene drawn anew: same objects, other pixels and looks
    by_image_once, by_image_more = _objects_by_image(first), _objects_by_image(more)
    train_ids = sorted({r for r in by_image_once if r in _train_image_ids(once)})
    extra_ids = [i["id"] for i in more["images"][IMAGES:]]
    for k, extra in enumerate(extra_ids):
        source = train_ids[k // 2]
        assert [(a["category_id"], a["color"], a["size"]) for a in by_image_more[extra]] == [
            (a["category_id"], a["color"], a["size"]) for a in by_image_once[source]]
        assert [a.get("look") for a in by_image_more[extra]] != [
            a.get("look") for a in by_image_once[source]]
    assert _train_image_ids(thrice) >= set(extra_ids)


def _train_image_ids(root: Path) -> set[int]:
    import pickle

    with open(root / "synthref" / "refs(synth).p", "rb") as stream:
        return {r["image_id"] for r in pickle.load(stream) if r["split"] == "train"}


def test_extra_drawings_need_a_random_rendering(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_drawings > 1 needs a rendering"):
        generate_synthref(tmp_path / "a", num_images=10, train_drawings=2)
    with pytest.raises(ConfigError, match="train_drawings must be >= 1"):
        generate_synthref(tmp_path / "b", num_images=10, rendering="shifted", train_drawings=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
