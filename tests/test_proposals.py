"""Proposers: shared post-processing, ``gt``, and real tiny OWL-ViT / Grounding DINO / DETR models.

The detector tests build tiny randomly initialised checkpoints (``tests/tiny_detectors.py``),
save them with ``save_pretrained`` and load them by directory name through ``build_proposer``,
the path users take with hub checkpoints. Their outputs are meaningless, so the tests check the
contract (shapes, boxes inside the image, sorting, filters, labels, fallbacks), and check the
filters independently of ``refground.boxes``.
"""

from __future__ import annotations

import math
import sys
from itertools import combinations
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from refground.errors import (
    BoxError,
    ConfigError,
    MissingDependencyError,
    UnknownNameError,
)
from refground.types import Annotation, Entity, Sample, SceneGraph
from refground.vision.proposals import (
    PROPOSERS,
    WHOLE_IMAGE,
    PostProcess,
    Proposals,
    Proposer,
    ProposerLoadError,
    build_proposer,
    default_queries,
    graph_queries,
    postprocess,
)
from refground.vision.proposers.grounding_dino import grounding_prompt, token_query_map
from tests.tiny_detectors import (
    DETR_CLASSES,
    bert_wordpiece_tokenizer,
    save_tiny_detr,
    save_tiny_grounding_dino,
    save_tiny_owlvit,
)

QUERIES = [["car", "man"], ["dog"]]


# --- independent reference geometry ----------------------------------------------------------

def ref_area(box: list[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def ref_iou(a: list[float], b: list[float]) -> float:
    inter = ref_area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = ref_area(a) + ref_area(b) - inter
    return inter / union if union > 0 else 0.0


def max_pairwise_iou(boxes: torch.Tensor) -> float:
    rows = boxes.tolist()
    return max((ref_iou(a, b) for a, b in combinations(rows, 2)), default=0.0)


# --- fixtures --------------------------------------------------------------------------------

def scene(width: int, height: int, seed: int) -> Image.Image:
    """A few coloured rectangles on a background: structure for the random detectors to see."""
    generator = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", (width, height), (40, 70, 110))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(torch.randint(0, size - 8, (1,), generator=generator)) for size in
                  (width, height))
        w, h = (int(torch.randint(4, size // 2, (1,), generator=generator)) for size in
                (width, height))
        color = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=generator))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
    return image


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [scene(64, 48, 0), scene(40, 80, 1)]


@pytest.fixture(scope="module")
def samples(images: list[Image.Image]) -> list[Sample]:
    return [Sample(f"s{i}", Path(f"img{i}.jpg"), image.width, image.height,
                   "the red car left of the man")
            for i, image in enumerate(images)]


@pytest.fixture(scope="module")
def owlvit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_owlvit(tmp_path_factory.mktemp("owlvit") / "model")


@pytest.fixture(scope="module")
def gdino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_grounding_dino(tmp_path_factory.mktemp("gdino") / "model")


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_detr(tmp_path_factory.mktemp("detr") / "model")


@pytest.fixture(scope="module")
def model_dirs(owlvit_dir: Path, gdino_dir: Path, detr_dir: Path) -> dict[str, Path]:
    return {"owlvit": owlvit_dir, "grounding-dino": gdino_dir, "detr": detr_dir}


DETECTORS = ["owlvit", "grounding-dino", "detr"]
UNFILTERED = {"score_threshold": 0.0, "top_k": None, "nms_iou": None, "max_area_fraction": None}


def run(name: str, model_dirs: dict[str, Path], images: list[Image.Image],
        samples: list[Sample], queries: list[list[str]] = QUERIES, **options: object
        ) -> list[Proposals]:
    proposer = build_proposer(name, model=str(model_dirs[name]), device="cpu", **options)
    assert isinstance(proposer, Proposer)
    return proposer.propose(images, samples, queries)


def assert_valid(proposals: Proposals, image: Image.Image) -> None:
    boxes, scores = proposals.boxes, proposals.scores
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert scores.shape == (len(boxes),) and len(proposals.labels) == len(boxes) >= 1
    assert torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert torch.equal(scores, scores.sort(descending=True).values)


# --- shared post-processing ------------------------------------------------------------------

RAW_BOXES = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],     # 0: score .9
    [1.0, 1.0, 10.0, 10.0],     # 1: IoU .81 with box 0, score .8
    [20.0, 20.0, 40.0, 40.0],   # 2: score .3
    [-5.0, -5.0, 95.0, 95.0],   # 3: the whole 100x100 image once clipped, score .95
    [120.0, 0.0, 130.0, 10.0],  # 4: wholly outside -> zero area after clipping, score .99
    [50.0, 50.0, 60.0, 60.0],   # 5: score .05
])
RAW_SCORES = torch.tensor([0.9, 0.8, 0.3, 0.95, 0.99, 0.05])
RAW_LABELS = ["a", "b", "c", "d", "e", "f"]


def test_postprocess_defaults_clip_sort_and_drop_zero_area() -> None:
    result = postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100)
    assert result.labels == ("d", "a", "b", "c", "f")  # "e" is outside, sorted by score
    assert result.boxes[0].tolist() == [0.0, 0.0, 95.0, 95.0]
    assert result.fallback is None and len(result) == 5


def test_postprocess_each_filter() -> None:
    assert postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100,
                       PostProcess(score_threshold=0.3)).labels == ("d", "a", "b", "c")
    assert postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100,
                       PostProcess(max_area_fraction=0.8)).labels == ("a", "b", "c", "f")
    # The limit is inclusive: a box covering exactly the fraction is dropped.
    exact = PostProcess(max_area_fraction=0.9025)  # box "d" is 95 x 95 of 100 x 100
    assert "d" not in postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100, exact).labels
    # NMS at .5: "b" overlaps "a" at .81; "a" overlaps "d" at 100/9025, kept.
    assert postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100,
                       PostProcess(nms_iou=0.5)).labels == ("d", "a", "c", "f")
    assert postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100,
                       PostProcess(top_k=2)).labels == ("d", "a")
    combined = PostProcess(score_threshold=0.1, top_k=2, nms_iou=0.5, max_area_fraction=0.8)
    assert postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 100, combined).labels == ("a", "c")


def test_postprocess_fallback_when_nothing_survives() -> None:
    result = postprocess(RAW_BOXES, RAW_SCORES, RAW_LABELS, 100, 80, PostProcess(1.01))
    assert result.fallback == WHOLE_IMAGE
    assert result.boxes.tolist() == [[0.0, 0.0, 100.0, 80.0]] and result.scores.tolist() == [0.0]
    empty = postprocess(torch.zeros(0, 4), torch.zeros(0), [], 30, 20)
    assert empty.fallback == WHOLE_IMAGE and len(empty) == 1


def test_postprocess_rejects_broken_detections() -> None:
    with pytest.raises(BoxError):
        postprocess(torch.tensor([[0.0, 0.0, math.nan, 1.0]]), torch.ones(1), ["x"], 10, 10)
    with pytest.raises(ConfigError):
        postprocess(RAW_BOXES, RAW_SCORES[:2], RAW_LABELS, 100, 100)


@pytest.mark.parametrize("options", [{"top_k": 0}, {"nms_iou": 1.5}, {"max_area_fraction": 0.0},
                                     {"max_area_fraction": 1.2}])
def test_postprocess_options_are_validated(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PostProcess(**options)  # type: ignore[arg-type]


# --- registry ----------------------------------------------------------------------------------

def test_registry_lists_every_proposer_and_rejects_unknown_names() -> None:
    assert {"gt", "owlvit", "owlv2", "grounding-dino", "detr", "yolo"} <= set(PROPOSERS.names())
    with pytest.raises(UnknownNameError, match=r"Known: .*grounding-dino.*owlvit") as info:
        build_proposer("owl-vit")
    assert "Did you mean 'owlvit'" in str(info.value)


def test_build_proposer_rejects_unknown_options() -> None:
    with pytest.raises(ConfigError, match=r"Accepted options: .*score_threshold"):
        build_proposer("gt", treshold=0.5)


def test_build_proposer_merges_postprocess_options() -> None:
    proposer = build_proposer("gt", postprocess=PostProcess(top_k=3), nms_iou=0.5)
    assert proposer.postprocess == PostProcess(top_k=3, nms_iou=0.5)  # type: ignore[attr-defined]


def test_yolo_without_ultralytics_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import ultralytics -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'refground\[yolo\]'") as info:
        build_proposer("yolo")
    assert "torchvision" in str(info.value)


# --- gt --------------------------------------------------------------------------------------

ANNOTATIONS = (
    Annotation(1, (10.0, 20.0, 30.0, 40.0), 1, "person"),
    Annotation(2, (0.0, 0.0, 64.0, 48.0), 18, "dog"),
    Annotation(3, (50.0, 30.0, 70.0, 60.0), 3, "car"),  # sticks out of the 64 x 48 image
)


def test_gt_returns_exactly_the_annotations(images: list[Image.Image]) -> None:
    sample = Sample("g", Path("g.jpg"), 64, 48, "the dog", annotations=ANNOTATIONS)
    bare = Sample("h", Path("h.jpg"), 40, 80, "nothing annotated")
    with_anns, without = build_proposer("gt").propose(images, [sample, bare])
    assert with_anns.fallback is None
    assert with_anns.labels == ("person", "dog", "car")
    assert with_anns.boxes.tolist() == [[10, 20, 30, 40], [0, 0, 64, 48], [50, 30, 64, 48]]
    assert with_anns.scores.tolist() == [1.0, 1.0, 1.0]
    assert without.fallback == WHOLE_IMAGE and without.boxes.tolist() == [[0, 0, 40, 80]]
    candidates = with_anns.candidates()
    assert candidates[0].box == (10.0, 20.0, 30.0, 40.0) and candidates[0].label == "person"


def test_gt_scales_annotations_to_a_resized_image() -> None:
    sample = Sample("g", Path("g.jpg"), 64, 48, "the dog", annotations=ANNOTATIONS[:1])
    (result,) = build_proposer("gt").propose([Image.new("RGB", (32, 24))], [sample])
    assert result.boxes.tolist() == [[5.0, 10.0, 15.0, 20.0]]


def test_gt_honours_shared_options(images: list[Image.Image]) -> None:
    sample = Sample("g", Path("g.jpg"), 64, 48, "the dog", annotations=ANNOTATIONS)
    (result,) = build_proposer("gt", max_area_fraction=0.8).propose(images[:1], [sample])
    assert result.labels == ("person", "car")


def test_batch_size_mismatch_is_an_error(images: list[Image.Image],
                                         samples: list[Sample]) -> None:
    with pytest.raises(ConfigError, match="2 images for 1 samples"):
        build_proposer("gt").propose(images, samples[:1])


def test_default_queries_are_the_parsed_entity_heads_never_the_gold_graph() -> None:
    """Sample.graph is SynthRef's gold graph: detector queries must come from parsing."""
    gold = SceneGraph((Entity("the striped zebra", "zebra"), Entity("a lamp", "lamp")))
    sample = Sample("q", Path("q.jpg"), 1, 1, "the red car left of the man", graph=gold)
    assert default_queries(sample) == ("car", "man")
    assert default_queries(Sample("q", Path("q.jpg"), 1, 1, " the  dog ")) == ("dog",)
    assert default_queries(Sample("q", Path("q.jpg"), 1, 1, "", graph=gold)) == ()
    # an expression the parser refuses (too long) is its own query
    long = "the dog " * 300
    assert default_queries(Sample("q", Path("q.jpg"), 1, 1, long)) == (long.strip(),)
    assert graph_queries(gold, "anything") == ("zebra", "lamp")
    assert graph_queries(SceneGraph(), " the  dog ") == ("the dog",)


# --- tiny real detectors -----------------------------------------------------------------------

@pytest.mark.parametrize("name", DETECTORS)
def test_detector_contract(name: str, model_dirs: dict[str, Path], images: list[Image.Image],
                           samples: list[Sample]) -> None:
    results = run(name, model_dirs, images, samples, top_k=5, score_threshold=0.0)
    assert len(results) == len(images)
    for result, image, queries in zip(results, images, QUERIES, strict=True):
        assert_valid(result, image)
        assert result.fallback is None and 1 <= len(result) <= 5
        allowed = set(queries) if name != "detr" else set(DETR_CLASSES)
        assert set(result.labels) <= allowed


@pytest.mark.parametrize("name", DETECTORS)
def test_threshold_above_one_falls_back_to_whole_image(
        name: str, model_dirs: dict[str, Path], images: list[Image.Image],
        samples: list[Sample]) -> None:
    for result, image in zip(run(name, model_dirs, images, samples, score_threshold=1.01),
                             images, strict=True):
        assert result.fallback == WHOLE_IMAGE
        assert result.boxes.tolist() == [[0.0, 0.0, image.width, image.height]]
        assert result.scores.tolist() == [0.0]


@pytest.mark.parametrize("name", DETECTORS)
def test_max_area_fraction_drops_exactly_the_large_boxes(
        name: str, model_dirs: dict[str, Path], images: list[Image.Image],
        samples: list[Sample]) -> None:
    everything = run(name, model_dirs, images, samples, **UNFILTERED)
    fractions = [[ref_area(b) / (image.width * image.height) for b in result.boxes.tolist()]
                 for result, image in zip(everything, images, strict=True)]
    ranked = sorted(fractions[0])
    middle = len(ranked) // 2
    # Halfway between two middle boxes: boxes on either side, none at float32 rounding distance.
    limit = (ranked[middle - 1] + ranked[middle]) / 2
    # Same batch again (batch composition can change padded detectors' outputs slightly).
    filtered = run(name, model_dirs, images, samples,
                   **{**UNFILTERED, "max_area_fraction": limit})
    for result, image, before in zip(filtered, images, fractions, strict=True):
        kept = [ref_area(b) / (image.width * image.height) for b in result.boxes.tolist()]
        if result.fallback is None:
            assert all(fraction < limit for fraction in kept)
        assert len(result) == max(1, sum(f < limit for f in before))
    assert ranked[middle - 1] < limit < ranked[middle]


@pytest.mark.parametrize("name", DETECTORS)
def test_nms_leaves_no_overlap_above_the_threshold(
        name: str, model_dirs: dict[str, Path], images: list[Image.Image],
        samples: list[Sample]) -> None:
    overlapping = run(name, model_dirs, images, samples, **UNFILTERED)
    suppressed = run(name, model_dirs, images, samples, **{**UNFILTERED, "nms_iou": 0.3})
    for before, after, image in zip(overlapping, suppressed, images, strict=True):
        assert_valid(after, image)
        assert max_pairwise_iou(after.boxes) <= 0.3 + 1e-6
        assert after.scores[0] == before.scores[0]  # the best box always survives
        if max_pairwise_iou(before.boxes) > 0.3:
            assert len(after) < len(before)
    if name in ("owlvit", "detr"):  # their tiny outputs overlap, so the check is not vacuous
        assert max(max_pairwise_iou(result.boxes) for result in overlapping) > 0.3


def test_owlvit_batching_does_not_change_results(owlvit_dir: Path, images: list[Image.Image],
                                                  samples: list[Sample]) -> None:
    """Images with fewer queries are padded with " " queries; those must never win a box."""
    batched = build_proposer("owlvit", model=str(owlvit_dir), **UNFILTERED)
    single = build_proposer("owlvit", model=str(owlvit_dir), batch_size=1, **UNFILTERED)
    for a, b in zip(batched.propose(images, samples, QUERIES),
                    single.propose(images, samples, QUERIES), strict=True):
        assert a.labels == b.labels
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-4)


def test_owlvit_queries_default_to_entity_heads_and_empty_means_fallback(
        owlvit_dir: Path, images: list[Image.Image]) -> None:
    gold = SceneGraph((Entity("the striped zebra", "zebra"),))  # never used for queries
    sample = Sample("a", Path("a.jpg"), 64, 48, "the red car left of the man", graph=gold)
    other = Sample("b", Path("b.jpg"), 40, 80, "the dog")
    proposer = build_proposer("owlvit", model=str(owlvit_dir), **UNFILTERED)
    derived, from_expression = proposer.propose(images, [sample, other])
    assert set(derived.labels) <= {"car", "man"}
    assert set(from_expression.labels) == {"dog"}
    skipped, detected = proposer.propose(images, [sample, other], [[], ["dog"]])
    assert skipped.fallback == WHOLE_IMAGE and detected.fallback is None


def test_owlvit_template_is_validated(owlvit_dir: Path) -> None:
    with pytest.raises(ConfigError, match="template"):
        build_proposer("owlvit", model=str(owlvit_dir), template="a photo of a thing")


def test_grounding_dino_prompt_and_token_matching() -> None:
    prompt, spans = grounding_prompt(["Red car", "sofa", "st. man"])
    assert prompt == "red car . sofa . st man ."
    assert [prompt[s:e] for s, e in spans] == ["red car", "sofa", "st man"]
    tokenizer = bert_wordpiece_tokenizer()
    encoded = tokenizer([prompt], return_offsets_mapping=True, return_tensors="pt")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    owner = token_query_map(encoded["offset_mapping"], [spans])[0]  # (T, Q)
    by_query = [[t for t, row in zip(tokens, owner.tolist(), strict=True) if row[q]]
                for q in range(3)]
    assert by_query == [["red", "car"], ["s", "##o", "##f", "##a"], ["s", "##t", "man"]]
    assert not owner[[i for i, t in enumerate(tokens) if t in ("[CLS]", "[SEP]", ".")]].any()


def test_grounding_dino_text_threshold_drops_unmatched_boxes(
        gdino_dir: Path, images: list[Image.Image], samples: list[Sample]) -> None:
    proposer = build_proposer("grounding-dino", model=str(gdino_dir), text_threshold=1.0)
    for result in proposer.propose(images, samples, QUERIES):
        assert result.fallback == WHOLE_IMAGE


# --- loading errors --------------------------------------------------------------------------

@pytest.mark.parametrize("name", DETECTORS)
def test_missing_model_directory_is_a_clear_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(ProposerLoadError, match="does not exist"):
        build_proposer(name, model=str(tmp_path / "no-such-model"))
    with pytest.raises(ProposerLoadError, match=r"no config\.json"):
        build_proposer(name, model=str(tmp_path))


def test_checkpoint_of_another_architecture_is_refused(detr_dir: Path) -> None:
    with pytest.raises(ProposerLoadError, match="'detr' checkpoint"):
        build_proposer("owlvit", model=str(detr_dir))


def test_missing_tokenizer_files_are_detected(tmp_path: Path) -> None:
    directory = save_tiny_owlvit(tmp_path / "owl")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    with pytest.raises(ProposerLoadError, match="tokenizer"):
        build_proposer("owlvit", model=str(directory))


def test_missing_weights_are_detected(tmp_path: Path) -> None:
    directory = save_tiny_detr(tmp_path / "detr")
    weights = load_file(directory / "model.safetensors")
    dropped = [key for key in weights if key.startswith("bbox_predictor")]
    save_file({k: v for k, v in weights.items() if k not in dropped},
              directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ProposerLoadError, match="bbox_predictor"):
        build_proposer("detr", model=str(directory))
    assert build_proposer("detr", model=str(directory), strict=False) is not None


def test_timm_backbone_without_timm_names_the_dependency(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    if __import__("importlib").util.find_spec("timm") is not None:
        pytest.skip("timm is installed")
    from transformers import DetrConfig

    DetrConfig().save_pretrained(tmp_path)  # hub DETR's default: a timm ResNet-50 backbone
    with pytest.raises(MissingDependencyError, match="timm"):
        build_proposer("detr", model=str(tmp_path))
