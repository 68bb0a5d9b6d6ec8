"""crop-rank and visual-prompt: their arithmetic against independent computations, options,
errors, and the CLI with a local CLIP directory. Parity with the reference is in
test_visual_prompt_parity.py (it needs the shipped, trained CLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refground.cli import app
from refground.data import Dataset
from refground.errors import ConfigError, ImageError, ModelLoadError
from refground.methods import build_method
from refground.methods.crop_rank import CropRank, crop_pixels
from refground.methods.proposal_scoring import ProposalScoringMethod
from refground.methods.visual_prompt import VisualPrompt, debiased_similarity
from refground.types import Sample
from refground.vision.clip import ClipEncoder
from refground.vision.tiny_clip import build_tiny_clip, save_tiny_clip
from tests.conftest import write_mini_refer
from tests.tiny_detectors import save_tiny_owlvit


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    model, tokenizer, processor = build_tiny_clip(image_size=32, patch_size=8, seed=3)
    return ClipEncoder(model, tokenizer, processor, name="tiny")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = write_mini_refer(tmp_path_factory.mktemp("mini"))
    return list(Dataset(root, "refcocog", "umd").split("test").samples)


def test_debiasing_equals_the_full_matrix_column_mean() -> None:
    torch.manual_seed(0)
    views = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(16), dim=-1)
    debias = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    matrix = torch.cat((text[None], debias)) @ views.T  # rows: [given; debias], cols: views
    expected = matrix[0] - matrix.mean(0)
    got = debiased_similarity(text, debias.mean(0), 50, views)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(debiased_similarity(text, None, 0, views), views @ text)


def test_visual_prompt_scores_from_view_features(encoder: ClipEncoder,
                                                 samples: list[Sample]) -> None:
    method = VisualPrompt(encoders=[encoder], debias=0, aggregate="mean")
    items = method.prepare_items(samples[:2])
    views = encoder.encode_image_tensors(method.render(encoder, items))
    texts = encoder.encode_texts(["This is " + s.expression for s in samples[:2]])
    scores = method.score(items)
    start = 0
    for item, text, got in zip(items, texts, scores, strict=True):
        count = len(item.proposals) * 2
        expected = (views[start:start + count] @ text).view(-1, 2).mean(1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        start += count
    maximum = VisualPrompt(encoders=[encoder], debias=0, aggregate="max").score(items)
    assert all((m >= s - 1e-6).all() for m, s in zip(maximum, scores, strict=True))


def test_predictions_rank_every_proposal(encoder: ClipEncoder, samples: list[Sample]) -> None:
    for method in (CropRank(encoders=[encoder]), VisualPrompt(encoders=[encoder], debias=0)):
        for sample, prediction in zip(samples, method.predict(samples), strict=True):
            scores = [c.score for c in prediction.candidates]
            assert len(scores) == len(sample.annotations)
            assert scores == sorted(scores, reverse=True)
            assert prediction.box == prediction.candidates[0].box
            assert {c.box for c in prediction.candidates} == {a.box for a in sample.annotations}


def test_crop_rank_scores_are_crop_similarities(encoder: ClipEncoder,
                                                samples: list[Sample]) -> None:
    method = CropRank(encoders=[encoder])
    item = method.prepare_items(samples[:1])[0]
    crops = crop_pixels(item)
    assert [tuple(c.shape[1:]) for c in crops] == [(200, 100), (300, 120), (60, 80)]
    expected = encoder.encode_images(crops) @ encoder.encode_texts([samples[0].expression])[0]
    torch.testing.assert_close(method.score([item])[0], expected, atol=1e-5, rtol=1e-4)


def test_ensemble_averages_backbones(encoder: ClipEncoder, samples: list[Sample]) -> None:
    model, tokenizer, processor = build_tiny_clip(image_size=32, patch_size=8, seed=4)
    other = ClipEncoder(model, tokenizer, processor, name="tiny-2")
    single = [CropRank(encoders=[e]) for e in (encoder, other)]
    both = CropRank(encoders=[encoder, other])
    items = both.prepare_items(samples)
    expected = [(a + b) / 2 for a, b in zip(single[0].score(items), single[1].score(items),
                                            strict=True)]
    for got, want in zip(both.score(items), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_category_prior_adds_label_similarity(encoder: ClipEncoder, samples: list[Sample],
                                              tmp_path: Path) -> None:
    """The prior scores a detector's own labels (gt labels are gold: test_gold_leakage.py)."""
    detector = {"proposals": "owlvit",
                "proposal_options": {"model": str(save_tiny_owlvit(tmp_path / "owl"))}}
    plain = VisualPrompt(encoders=[encoder], debias=0, **detector)
    prior = VisualPrompt(encoders=[encoder], debias=0, category_prior=0.5, **detector)
    items = plain.prepare_items(samples[:1], [["man", "dog", "car"]])
    assert len(set(items[0].proposals.labels)) > 1  # not a constant offset
    expression = encoder.encode_texts([samples[0].expression])[0]
    labels = encoder.encode_texts([f"A picture of a {label}"
                                   for label in items[0].proposals.labels])
    torch.testing.assert_close(prior.score(items)[0] - plain.score(items)[0],
                               0.5 * labels @ expression, atol=1e-5, rtol=1e-4)


def test_debias_expressions_come_from_train_split_only(encoder: ClipEncoder,
                                                       tmp_path: Path) -> None:
    root = write_mini_refer(tmp_path / "data")
    method = VisualPrompt(encoders=[encoder], debias=5000)
    method.prepare(Dataset(root, "refcocog", "umd"))
    assert method.debias_texts == sorted(["man on the left", "left guy"])
    sampled = VisualPrompt(encoders=[encoder], debias=1, debias_seed=1)
    sampled.prepare(Dataset(root, "refcocog", "umd"))
    assert len(sampled.debias_texts or ()) == 1


def test_missing_debias_source_is_a_clear_error(encoder: ClipEncoder,
                                                samples: list[Sample]) -> None:
    method = VisualPrompt(encoders=[encoder], debias=100)
    with pytest.raises(ConfigError, match="debias=0"):
        method.predict(samples[:1])


def test_bad_options_unknown_models_and_images(encoder: ClipEncoder, samples: list[Sample],
                                               tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="aggregate"):
        VisualPrompt(encoders=[encoder], aggregate="median")
    with pytest.raises(ConfigError, match="template"):
        CropRank(encoders=[encoder], template="no slot")
    with pytest.raises(ModelLoadError):
        build_method("crop-rank", clip=str(tmp_path / "no-such-clip"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    sample = Sample(**{**samples[0].__dict__, "image": broken})
    with pytest.raises(ImageError, match=r"broken\.png"):
        CropRank(encoders=[encoder]).predict([sample])
    assert issubclass(CropRank, ProposalScoringMethod)


def test_eval_cli_with_a_local_clip_directory(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    root = write_mini_refer(tmp_path / "data")
    clip_dir = save_tiny_clip(tmp_path / "clip", image_size=32, patch_size=8)
    for method in ("crop-rank", "visual-prompt"):
        out = tmp_path / method
        result = CliRunner().invoke(app, [
            "eval", "--data", str(root), "--dataset", "refcocog", "--split-by", "umd",
            "--split", "test", "--method", method, "--proposals", "gt", "-o", f"clip={clip_dir}",
            "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n"] == 4 and metrics["run"]["method"] == method
        assert metrics["run"]["options"]["proposals"] == "gt"
        lines = (out / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 4 and all(len(json.loads(x)["candidates"]) == 3 for x in lines)
