"""``detr`` end to end on tiny real models: matching, loss, save/load, training, text encoders.

No model is mocked: the CLIP text tower is a tiny ``CLIPModel`` saved to a temp directory, the
BERT one is the packaged all-MiniLM-L6-v2 (or a tiny ``BertModel`` with a trained WordPiece
tokenizer), and every model is loaded through the same ``from_pretrained`` path users take.
"""

from __future__ import annotations

import math
import pickle
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from refground.data import Dataset
from refground.errors import ConfigError, ModelLoadError
from refground.methods import build_method
from refground.methods.detr import (
    DetrConfig,
    DetrMethod,
    initial_references,
    sine_points,
    sine_positions_2d,
)
from refground.methods.detr_matching import MatchWeights, hungarian_match, match_costs, set_loss
from refground.methods.trainable import WEIGHTS_FILE
from refground.types import Sample
from refground.vision.text_encoders import load_text_encoder, minilm_path
from refground.vision.tiny_clip import DEFAULT_CORPUS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_options(text_model: Path | str, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "text_model": str(text_model), "image_size": 32, "backbone_widths": [8, 16],
        "backbone_blocks": 1, "d_model": 32, "heads": 2, "encoder_layers": 1,
        "decoder_layers": 2, "queries": 4, "ffn": 64, "dropout": 0.0}
    return {**options, **overrides}


@pytest.fixture
def samples(mini_refer: Path) -> list[Sample]:
    return Dataset(mini_refer, "refcocog", "umd").split("test").samples


# --- plain-Python references ------------------------------------------------------------------

def _giou_py(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes, written out coordinate by coordinate."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _random_boxes(generator: torch.Generator, *shape: int) -> torch.Tensor:
    centre = torch.rand(*shape, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(*shape, 2, generator=generator) * 0.3 + 0.05
    return torch.cat((centre, size), dim=-1)


# --- (a) matching -----------------------------------------------------------------------------

@pytest.mark.parametrize(("queries", "sizes"), [(4, (1, 1, 1)), (4, (2, 3, 1)), (5, (3, 2, 4)),
                                                (2, (3, 1, 2))])
def test_hungarian_match_equals_brute_force(queries: int, sizes: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(queries * 10 + sum(sizes))
    logits = torch.randn(len(sizes), queries, generator=generator)
    boxes = _random_boxes(generator, len(sizes), queries)
    targets = [_random_boxes(generator, t) for t in sizes]
    weights = MatchWeights(cost_class=1.5, cost_l1=5.0, cost_giou=2.0)
    matches = hungarian_match(logits, boxes, targets, 1.5, 5.0, 2.0)
    torch_costs = match_costs(logits, boxes, targets, weights)
    for i, (rows, cols) in enumerate(matches):
        cost = [[-1.5 * _sigmoid(float(logits[i, q]))
                 + 5.0 * sum(abs(float(boxes[i, q, k] - targets[i][t, k])) for k in range(4))
                 - 2.0 * _giou_py(boxes[i, q].tolist(), targets[i][t].tolist())
                 for t in range(sizes[i])] for q in range(queries)]
        assert torch.allclose(torch_costs[i], torch.tensor(cost), atol=1e-5)
        pairs = min(queries, sizes[i])
        if sizes[i] <= queries:  # choose a distinct query for every target
            options = [tuple(zip(p, range(pairs), strict=True))
                       for p in permutations(range(queries), pairs)]
        else:  # more targets than queries: choose a distinct target for every query
            options = [tuple(zip(range(pairs), p, strict=True))
                       for p in permutations(range(sizes[i]), pairs)]
        best = min(options, key=lambda pairing: sum(cost[q][t] for q, t in pairing))
        assert len(rows) == len(cols) == pairs
        assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == sorted(best)
        assert rows.dtype == cols.dtype == torch.long


def test_match_accepts_batched_target_tensor() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, generator=generator)
    boxes = _random_boxes(generator, 2, 4)
    targets = _random_boxes(generator, 2, 1)
    as_tensor = hungarian_match(logits, boxes, targets)
    as_list = hungarian_match(logits, boxes, list(targets))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(as_tensor, as_list, strict=True))


# --- (b) set loss -----------------------------------------------------------------------------

def test_set_loss_matches_hand_computation() -> None:
    logits = [[0.5, -1.0, 2.0], [-0.3, 1.2, 0.0]]
    boxes = [[[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.4, 0.4]],
             [[0.2, 0.2, 0.1, 0.1], [0.7, 0.3, 0.3, 0.2], [0.5, 0.5, 0.5, 0.5]]]
    targets = [[[0.35, 0.45, 0.25, 0.3]], [[0.6, 0.35, 0.3, 0.3]]]
    matched = [(0, 1), (1, 1)]  # (sample, query) matched to the one target
    matches = [(torch.tensor([q]), torch.tensor([0])) for _, q in matched]
    out_focal = set_loss(torch.tensor(logits), torch.tensor(boxes), torch.tensor(targets),
                         matches, class_loss="focal", focal_alpha=0.25, focal_gamma=2.0)
    out_bce = set_loss(torch.tensor(logits), torch.tensor(boxes), torch.tensor(targets),
                       matches, class_loss="bce")

    focal = bce = 0.0
    for i in range(2):
        for q in range(3):
            p = _sigmoid(logits[i][q])
            if (i, q) in matched:
                bce += -math.log(p)
                focal += 0.25 * (1 - p) ** 2 * -math.log(p)
            else:
                bce += -math.log(1 - p)
                focal += 0.75 * p ** 2 * -math.log(1 - p)
    l1 = sum(abs(boxes[i][q][k] - targets[i][0][k]) for i, q in matched for k in range(4))
    giou = sum(1 - _giou_py(boxes[i][q], targets[i][0]) for i, q in matched)
    assert out_focal["class"].item() == pytest.approx(focal / 2, rel=1e-5)
    assert out_bce["class"].item() == pytest.approx(bce / 2, rel=1e-5)
    for out in (out_focal, out_bce):
        assert out["l1"].item() == pytest.approx(l1 / 2, rel=1e-5)
        assert out["giou"].item() == pytest.approx(giou / 2, rel=1e-5)


# --- (c, g) save / load, predictions ----------------------------------------------------------

def _assert_inside(predictions: list[Any], samples: list[Sample]) -> None:
    assert [p.sample_id for p in predictions] == [s.sample_id for s in samples]
    for prediction, sample in zip(predictions, samples, strict=True):
        x0, y0, x1, y1 = prediction.box
        assert 0 <= x0 <= x1 <= sample.width and 0 <= y0 <= y1 <= sample.height
        assert 0.0 <= prediction.score <= 1.0


@pytest.mark.parametrize("freeze_text", [True, False])
def test_save_load_round_trip(tiny_clip_600: Path, samples: list[Sample], tmp_path: Path,
                              freeze_text: bool) -> None:
    method = build_method("detr", **tiny_options(tiny_clip_600, freeze_text=freeze_text))
    assert isinstance(method, DetrMethod)
    with torch.no_grad():  # one train-mode pass moves the BatchNorm statistics off their init
        method.model(method.collator()(samples))
    predictions = method.predict(samples)
    _assert_inside(predictions, samples)

    directory = method.save_pretrained(tmp_path / "ckpt")
    saved = load_file(str(directory / WEIGHTS_FILE))
    text_keys = [k for k in saved if k.startswith("text_encoder.")]
    assert any(k.startswith("backbone.") for k in saved)
    assert (not text_keys) if freeze_text else text_keys
    loaded = build_method("detr", checkpoint=directory)
    assert isinstance(loaded, DetrMethod) and loaded.config == method.config
    assert loaded.predict(samples) == predictions


def test_reference_points_spread_encode_like_image_tokens_and_anchor_the_boxes(
        tiny_clip_600: Path, samples: list[Sample], tmp_path: Path) -> None:
    anchors = initial_references(6).sigmoid()
    expected_grid = torch.tensor([[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25],
                                  [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]])
    assert torch.allclose(anchors, expected_grid, atol=1e-6)
    # an anchor on a token's centre gets exactly that token's position encoding
    grid = sine_positions_2d(4, 4, 16, torch.device("cpu"))
    assert torch.allclose(sine_points(torch.tensor([[1.5 / 4, 2.5 / 4]]), 16)[0],
                          grid[2 * 4 + 1], atol=1e-6)
    method = build_method("detr", **tiny_options(tiny_clip_600, reference_points=True))
    assert isinstance(method, DetrMethod)
    model = method.model
    model.eval()
    with torch.no_grad():
        torch.nn.init.zeros_(model.box_head.layers[-1].weight)
        torch.nn.init.zeros_(model.box_head.layers[-1].bias)
        boxes = model(method.collator()(samples))["boxes"]
    # a head that predicts no offset puts every query's centre on its anchor
    expected = initial_references(4).sigmoid()
    assert torch.allclose(boxes[..., :2], expected.expand_as(boxes[..., :2]), atol=1e-6)
    loaded = build_method("detr", checkpoint=method.save_pretrained(tmp_path / "ckpt"))
    assert loaded.predict(samples) == method.predict(samples)


def test_collator_is_picklable_and_omits_missing_targets(tiny_clip_600: Path,
                                                         samples: list[Sample]) -> None:
    method = DetrMethod.from_options(tiny_options(tiny_clip_600))
    collate = pickle.loads(pickle.dumps(method.collator()))
    batch = collate(samples)
    reference = method.collator()(samples)
    assert set(batch) == {"pixels", "input_ids", "attention_mask", "size", "target"}
    assert all(torch.equal(batch[k], reference[k]) for k in batch)
    assert batch["pixels"].shape == (len(samples), 3, 32, 32)
    unlabeled = [Sample("x", s.image_path, s.width, s.height, s.expression) for s in samples]
    assert "target" not in collate(unlabeled)


# --- (d) errors -------------------------------------------------------------------------------

def test_bad_options_name_the_field(tiny_clip_600: Path) -> None:
    with pytest.raises(ConfigError, match="bogus_option"):
        build_method("detr", **tiny_options(tiny_clip_600, bogus_option=1))
    with pytest.raises(ConfigError, match="heads"):
        build_method("detr", **tiny_options(tiny_clip_600, heads=3))
    with pytest.raises(ConfigError, match="text_encoder"):
        build_method("detr", **tiny_options(tiny_clip_600, text_encoder="word2vec"))
    assert DetrConfig(text_encoder="minilm").text_model == "minilm"
    assert DetrConfig().text_model == "synthref-clip"


def test_corrupt_weights_raise_model_load_error(tiny_clip_600: Path, tmp_path: Path) -> None:
    method = DetrMethod.from_options(tiny_options(tiny_clip_600))
    directory = method.save_pretrained(tmp_path / "ckpt")
    (directory / WEIGHTS_FILE).write_bytes(b"\x00garbage, not a safetensors file")
    with pytest.raises(ModelLoadError, match=WEIGHTS_FILE):
        build_method("detr", checkpoint=directory)
    other = DetrMethod.from_options(tiny_options(tiny_clip_600, d_model=16))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "method.json").write_text(
        (directory / "method.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="shape"):
        build_method("detr", checkpoint=tmp_path / "other")


# --- (e) training -----------------------------------------------------------------------------

def test_overfits_four_samples(tiny_clip_600: Path, samples: list[Sample]) -> None:
    torch.manual_seed(0)
    method = DetrMethod.from_options(tiny_options(tiny_clip_600))
    model = method.model
    batch = method.collator()(samples[:4])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3, weight_decay=1e-4)
    model.train()
    assert not model.text_encoder.training  # a frozen tower stays in eval mode
    losses = []
    for _ in range(40):
        loss = method.loss(batch, model(batch))
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(loss["loss"].item())
    assert set(loss) == {"loss", "class", "l1", "giou"}
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert min(losses[-5:]) < 0.5 * losses[0], losses


def test_group_norm_outputs_do_not_depend_on_the_batch(tiny_clip_600: Path,
                                                      samples: list[Sample]) -> None:
    """With GroupNorm and masked text padding, a sample's outputs are the same whichever
    batch it is in: what makes multi-process training equal to one process."""
    method = DetrMethod.from_options(tiny_options(tiny_clip_600, norm="group"))
    method.model.train()
    collate = method.collator()
    whole = method.model(collate(samples))
    parts = [method.model(collate(samples[:2])), method.model(collate(samples[2:]))]
    for key in ("logits", "boxes"):
        joined = torch.cat([part[key] for part in parts], dim=1)
        assert torch.allclose(whole[key], joined, atol=1e-5)


def test_loss_weights_and_aux_layers(tiny_clip_600: Path, samples: list[Sample]) -> None:
    method = DetrMethod.from_options(tiny_options(tiny_clip_600, aux_loss=False))
    batch = method.collator()(samples)
    with torch.no_grad():
        outputs = method.model(batch)
        loss = method.loss(batch, outputs)
    weighted = 2.0 * loss["class"] + 5.0 * loss["l1"] + 2.0 * loss["giou"]
    assert loss["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)
    method_aux = DetrMethod.from_options(tiny_options(tiny_clip_600, aux_loss=True))
    assert method_aux.loss(batch, outputs)["loss"].item() > loss["loss"].item()


def test_forward_under_bf16_autocast(tiny_clip_600: Path, samples: list[Sample]) -> None:
    method = DetrMethod.from_options(tiny_options(tiny_clip_600))
    batch = method.collator()(samples)
    assert batch["pixels"].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = method.model(batch)
        loss = method.loss(batch, outputs)
    assert outputs["boxes"].shape == (2, len(samples), 4, 4)
    assert torch.isfinite(loss["loss"])
    loss["loss"].backward()
    boxes, scores = method.decode(batch, outputs)
    assert boxes.dtype == scores.dtype == torch.float32 and boxes.shape == (len(samples), 4)


# --- (f) text encoders ------------------------------------------------------------------------

def test_minilm_loads_real_weights_and_grounds(samples: list[Sample]) -> None:
    encoder = load_text_encoder("minilm")
    assert len(encoder.tokenizer) == 30522 and encoder.hidden_size == 384
    files = load_file(str(minilm_path() / "model.safetensors"))
    name = next(k for k in files if k.endswith("word_embeddings.weight"))
    assert torch.equal(encoder.tower.model.embeddings.word_embeddings.weight, files[name])
    method = DetrMethod.from_options({**tiny_options("minilm"), "text_encoder": "minilm"})
    _assert_inside(method.predict(samples), samples)


def test_broken_minilm_copy_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "minilm"
    copy.mkdir()
    for path in minilm_path().iterdir():
        if path.is_file() and path.name not in TOKENIZER_FILES:
            (copy / path.name).symlink_to(path)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_text_encoder("bert", str(copy))


def test_tiny_bert_from_tokenizers(tmp_path: Path, samples: list[Sample]) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(DEFAULT_CORPUS, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=special))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, backend.token_to_id(t))
                                                 for t in ("[CLS]", "[SEP]")])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    directory = tmp_path / "tiny-bert"
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(directory)

    encoder = load_text_encoder("bert", str(directory))
    assert len(encoder.tokenizer) == len(tokenizer) and encoder.hidden_size == 32
    states = encoder.tower(**{k: v for k, v in encoder.tokenizer(
        ["the red square"], return_tensors="pt").items() if k != "token_type_ids"})
    assert states.shape[-1] == 32
    method = build_method("detr", **tiny_options(directory, text_encoder="bert"))
    _assert_inside(method.predict(samples), samples)
