"""The Python API (``Grounder``) on a tiny generated SynthRef: every image form gives the same
answer, batches equal single calls, bad inputs fail with errors that say what to change, and
threads sharing one Grounder get what a sequential caller gets. Nothing is mocked."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from refground import Grounder
from refground.api import MAX_TEXT_CHARS, as_pil
from refground.errors import BoxError, ImageError, InputError
from refground.images import decode_images
from refground.types import ImageSource, Sample
from tests.conftest import synthref_split

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    return synthref_split(tmp_path_factory)


@pytest.fixture(scope="module")
def grounder() -> Grounder:
    """crop-rank with the shipped SynthRef CLIP and gt proposals (the offline setting)."""
    return Grounder.load("crop-rank")


def boxes_of(sample: Sample) -> list[tuple[float, float, float, float]]:
    return [a.box for a in sample.annotations]


# --- one image, five forms ------------------------------------------------------------------

def test_every_image_form_gives_the_same_prediction(grounder: Grounder,
                                                    samples: list[Sample]) -> None:
    sample = samples[0]
    pil = Image.open(sample.image_path).convert("RGB")
    pixels = np.asarray(pil)
    # float64 from a multiplication, as numpy code writes it: 33 * (1/255) * 255 is just
    # below 33, so a truncating conversion would shift some pixels by one
    floats = pixels * (1 / 255)
    assert np.array_equal(np.asarray(as_pil(floats)), pixels)
    forms = {"path": sample.image_path, "str": str(sample.image_path), "pil": pil,
             "uint8": pixels, "float": floats, "png bytes": sample.image_path.read_bytes()}
    predictions = {name: grounder.ground(image, sample.expression, boxes=boxes_of(sample))
                   for name, image in forms.items()}
    reference = predictions["path"]
    assert reference.box in boxes_of(sample)
    assert len(reference.candidates) == len(sample.annotations)
    for name, prediction in predictions.items():
        assert prediction == reference, name


def test_ground_batch_equals_one_by_one(grounder: Grounder, samples: list[Sample]) -> None:
    chosen = samples[:5]
    images = [Image.open(s.image_path) if i % 2 else s.image_path for i, s in enumerate(chosen)]
    batch = grounder.ground_batch(images, [s.expression for s in chosen],
                                  [boxes_of(s) for s in chosen])
    single = [grounder.ground(s.image_path, s.expression, boxes_of(s)) for s in chosen]
    assert [(p.box, p.score, p.candidates) for p in batch] == [
        (p.box, p.score, p.candidates) for p in single]
    assert [p.sample_id for p in batch] == [str(i) for i in range(len(chosen))]
    assert grounder.ground_batch([], []) == []


def test_whitespace_in_the_expression_is_collapsed(grounder: Grounder,
                                                   samples: list[Sample]) -> None:
    sample = samples[1]
    spaced = "  " + sample.expression.replace(" ", " \n\t ") + "  "
    assert grounder.ground(sample.image_path, spaced, boxes_of(sample)) == grounder.ground(
        sample.image_path, sample.expression, boxes_of(sample))


def test_threads_sharing_a_grounder_get_sequential_results(grounder: Grounder,
                                                           samples: list[Sample]) -> None:
    """Four threads, 16 calls on in-memory images (several threads store the same image at
    once): the same predictions as one caller in order."""
    jobs = [samples[i % 4] for i in range(16)]
    pils = {s.sample_id: Image.open(s.image_path).convert("RGB") for s in jobs}

    def run(sample: Sample) -> tuple:
        prediction = grounder.ground(pils[sample.sample_id], sample.expression,
                                     boxes_of(sample))
        return prediction.box, prediction.score, prediction.candidates

    sequential = [run(s) for s in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run, jobs))
    assert concurrent == sequential


# --- clear errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("x" * (MAX_TEXT_CHARS + 1), f"limit of {MAX_TEXT_CHARS}"),
    (42, "must be a string, got int"),
    (None, "must be a string, got NoneType"),
])
def test_bad_text_is_refused(grounder: Grounder, samples: list[Sample], text: object,
                             message: str) -> None:
    with pytest.raises(InputError, match=message):
        grounder.ground(samples[0].image_path, text, boxes_of(samples[0]))  # type: ignore[arg-type]


def test_bad_images_are_refused(grounder: Grounder, samples: list[Sample],
                                tmp_path: Path) -> None:
    sample = samples[0]
    png = sample.image_path.read_bytes()
    with pytest.raises(ImageError, match="cannot read image <bytes>"):
        grounder.ground(png[: len(png) // 3], sample.expression, boxes_of(sample))
    with pytest.raises(ImageError, match="cannot read image <bytes>"):
        grounder.ground(b"not an image at all", sample.expression, boxes_of(sample))
    with pytest.raises(ImageError, match="image not found"):
        grounder.ground(tmp_path / "missing.png", sample.expression)
    with pytest.raises(ImageError, match="HxW, HxWx3 or HxWx4"):
        grounder.ground(np.zeros((4, 4, 2), np.uint8), sample.expression, [[0, 0, 2, 2]])
    with pytest.raises(ImageError, match="NaN"):
        grounder.ground(np.full((4, 4, 3), np.nan), sample.expression, [[0, 0, 2, 2]])
    with pytest.raises(ImageError, match="cannot use a list as an image"):
        grounder.ground([[0, 1]], sample.expression, [[0, 0, 1, 1]])  # type: ignore[arg-type]


@pytest.mark.parametrize(("boxes", "message"), [
    ([[0, 0, 700, 10]], r"lies outside the \d+x\d+ image"),
    ([[-1, 0, 10, 10]], "lies outside"),
    ([[50, 50, 10, 60]], "x1 >= x0"),
    ([[0, 0, 10, float("nan")]], "NaN"),
    ([[0, 0, 10]], "shape"),
    ([0, 0, 10, 10], r"wrap a single box in a list: \[\[x0, y0, x1, y1\]\]"),
    ([[0, 0, "a", 10]], "boxes of numbers"),
    ("0,0,10,10", "got str"),
])
def test_bad_boxes_are_refused(grounder: Grounder, samples: list[Sample], boxes: object,
                               message: str) -> None:
    sample = samples[0]
    assert sample.width < 700
    with pytest.raises(BoxError, match=message):
        grounder.ground(sample.image_path, sample.expression, boxes)  # type: ignore[arg-type]


def test_mismatched_lists_are_refused(grounder: Grounder, samples: list[Sample]) -> None:
    sample = samples[0]
    with pytest.raises(InputError, match="2 images and 1 texts"):
        grounder.ground_batch([sample.image_path] * 2, [sample.expression])
    with pytest.raises(InputError, match="1 images and 1 texts"):
        grounder.ground_batch([sample.image_path], sample.expression)
    with pytest.raises(InputError, match=r"one list per image \(2\)"):
        grounder.ground_batch([sample.image_path] * 2, [sample.expression] * 2,
                              [boxes_of(sample)])


def test_without_boxes_or_a_detector_a_grounder_asks_for_boxes(samples: list[Sample]) -> None:
    grounder = Grounder.load("crop-rank", detector=None)
    with pytest.raises(InputError, match=r"crop-rank chooses among candidate boxes.*boxes="):
        grounder.ground(samples[0].image_path, samples[0].expression)


def test_without_boxes_the_default_detector_proposes_them(grounder: Grounder,
                                                          samples: list[Sample]) -> None:
    """The shipped synthref-det finds SynthRef's objects: every annotated box is among the
    candidates the method ranked (IoU >= 0.5), and the referent is found."""
    from refground import boxes as B

    assert grounder.detector == "auto"
    for sample in samples[:3]:
        prediction = grounder.ground(sample.image_path, sample.expression)
        candidates = B.as_tensor([c.box for c in prediction.candidates])
        annotated = B.as_tensor([a.box for a in sample.annotations])
        assert len(annotated) <= len(candidates) <= 50  # the detector's top 50, score >= 0.1
        assert bool((B.iou_matrix(annotated, candidates).amax(1) >= 0.5).all())
        assert {c.label for c in prediction.candidates} == {"object"}


# --- trained methods ------------------------------------------------------------------------

def test_a_regressor_needs_no_boxes(tiny_clip: Path, samples: list[Sample]) -> None:
    torch.manual_seed(0)
    tiny = {"cnn_image_size": 32, "grid": 4, "hrnet_widths": [4, 8], "hrnet_blocks": 1,
            "clip_channels": 8, "cnn_channels": 8, "fused_dim": 16, "hidden": 16,
            "dropout": 0.0}
    grounder = Grounder.load("regressor", clip=str(tiny_clip), **tiny)
    sample = samples[0]
    prediction = grounder.ground(sample.image_path, sample.expression)
    x0, y0, x1, y1 = prediction.box
    assert 0 <= x0 <= x1 <= sample.width and 0 <= y0 <= y1 <= sample.height
    assert grounder.ground(np.asarray(Image.open(sample.image_path)),
                           sample.expression) == prediction


def test_erpa_with_gt_proposals_takes_boxes_or_the_detectors(tiny_clip: Path,
                                                             samples: list[Sample]) -> None:
    torch.manual_seed(0)
    options = {"clip": str(tiny_clip), "hidden": 16, "heads": 2, "decoder_layers": 1,
               "encoder_layers": 1, "dropout": 0.0, "parser_backend": "rules"}
    strict = Grounder.load("erpa", detector=None, **options)
    with pytest.raises(InputError, match=r"erpa .*pass boxes=\[\[x0, y0, x1, y1\]"):
        strict.ground(samples[0].image_path, samples[0].expression)
    torch.manual_seed(0)
    grounder = Grounder.load("erpa", **options)
    sample = samples[0]
    detected = grounder.ground(sample.image_path, sample.expression)
    x0, y0, x1, y1 = detected.box
    assert 0 <= x0 <= x1 <= sample.width and 0 <= y0 <= y1 <= sample.height
    # what erpa chose among: the detector's boxes, as the sample's candidates
    bare = grounder.sample(0, sample.image_path, sample.expression, None)
    [filled] = grounder.detect_missing([bare], [0])
    [found] = grounder.detector_proposer().propose([Image.open(sample.image_path)], [bare])
    assert [a.box for a in filled.annotations] == [c.box for c in found.candidates()]
    assert len(filled.annotations) >= len(sample.annotations)
    prediction = grounder.ground(sample.image_path, sample.expression, boxes_of(sample))
    x0, y0, x1, y1 = prediction.box
    assert 0 <= x0 <= x1 <= sample.width and 0 <= y0 <= y1 <= sample.height


# --- one decode per image, nothing on disk ----------------------------------------------------

def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file PIL opens from now on (decoding starts with Image.open)."""
    opened: list[str] = []
    real_open = Image.open

    def counting_open(source: Any, *args: Any, **kwargs: Any) -> Image.Image:
        opened.append(str(getattr(source, "name", source)))
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def test_a_batch_decodes_each_image_once_and_reuses_decoded_ones(
        samples: list[Sample], monkeypatch: pytest.MonkeyPatch) -> None:
    sample = samples[0]
    others = [s for s in samples if s.image_path == sample.image_path]
    assert len(others) >= 2  # SynthRef asks several expressions per image
    opened = count_opens(monkeypatch)
    images = decode_images(others)
    assert opened == [str(sample.image_path)]
    assert all(image is images[0] for image in images)
    # an image that arrives decoded is used as it is: no file is opened
    in_memory = ImageSource.memory(images[0])
    assert decode_images([Sample("m", in_memory, sample.width, sample.height, "x")]) == [
        images[0]]
    assert len(opened) == 1
    # the same pixels given twice are one image; other pixels are another
    assert ImageSource.memory(images[0].copy()) == in_memory
    assert ImageSource.memory(images[0].rotate(90)).key != in_memory.key
    # methods read three channels, whatever the caller decoded
    assert ImageSource.memory(images[0].convert("RGBA")).decoded.mode == "RGB"
    assert ImageSource.file(sample.image_path, images[0].convert("L")).decoded.mode == "RGB"
    with pytest.raises(ImageError, match="neither a file nor decoded pixels"):
        decode_images([Sample("e", ImageSource("nowhere"), 1, 1, "x")])


def test_grounding_decodes_once_for_detector_and_method_and_writes_nothing(
        grounder: Grounder, samples: list[Sample], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """Without boxes the detector runs first; it and the method share the Grounder's decode,
    and an in-memory image is never written anywhere (no temporary PNG)."""
    sample = samples[0]
    opened = count_opens(monkeypatch)
    by_path = grounder.ground(sample.image_path, sample.expression)
    assert opened == [str(sample.image_path)]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pil = Image.open(sample.image_path).convert("RGB")
    opened.clear()
    assert grounder.ground(pil, sample.expression) == by_path
    assert opened == [] and list(tmp_path.iterdir()) == []
    built = grounder.sample(0, pil, sample.expression, None)
    assert built.image_path is None and built.image.key.startswith("memory:")


def test_close_is_no_longer_needed_and_says_so(grounder: Grounder) -> None:
    with pytest.warns(DeprecationWarning, match="no longer needed"):
        grounder.close()
