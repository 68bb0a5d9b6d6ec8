"""ERP-A on a tiny real CLIP and a small generated SynthRef: graph batching, heatmap masks,
both heads, save/load, and that it learns. Nothing is mocked."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from refground import boxes as B
from refground.errors import ConfigError
from refground.methods.base import build_method
from refground.methods.erpa import (
    ErpaMethod,
    gaussian_heatmaps,
    layout_graph,
    pad_stack,
    union_cxcywh,
)
from refground.methods.trainable import move_batch
from refground.types import Entity, Relation, Sample, SceneGraph
from refground.vision.proposals import Proposals
from tests.conftest import synthref_split

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden": 16, "heads": 2, "decoder_layers": 1, "encoder_layers": 1, "dropout": 0.0,
        "graphs": "gold"}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    return synthref_split(tmp_path_factory, "train", seed=5, images=12)


def proposals(boxes: list[list[float]], scores: list[float] | None = None) -> Proposals:
    scores = scores or [1.0] * len(boxes)
    return Proposals(torch.tensor(boxes), torch.tensor(scores), tuple("x" for _ in boxes))


def test_edges_join_only_detections_of_related_entities() -> None:
    graph = SceneGraph((Entity("the cup", "cup"), Entity("the plate", "plate"),
                        Entity("the fork", "fork")),
                       (Relation(0, "left of", 1),))
    props = [proposals([[0, 0, 10, 10], [20, 0, 30, 10]]),
             proposals([[0, 50, 10, 60], [20, 50, 30, 60], [40, 50, 50, 60]]),
             proposals([[80, 80, 90, 90]])]
    texts = {"the cup": 0, "the plate": 1, "the fork": 2, "left of": 3}
    layout = layout_graph(graph, props, 100, 100, texts, max_edges=100)
    assert layout.node_entity.tolist() == [0, 0, 1, 1, 1, 2]
    assert layout.node_modifier.tolist() == [-1] * 6  # no spatial modifiers
    assert layout.node_text.tolist() == [0, 0, 1, 1, 1, 2]
    # 2 cups x 3 plates; the unrelated fork takes part in no edge
    expected = {(c, p) for c in (0, 1) for p in (2, 3, 4)}
    assert {tuple(e) for e in layout.edge_nodes.tolist()} == expected
    assert layout.edge_text.tolist() == [3] * 6
    assert torch.allclose(layout.node_boxes[0], torch.tensor([0.05, 0.05, 0.1, 0.1]))


def test_max_edges_keeps_the_most_confident_pairs() -> None:
    graph = SceneGraph((Entity("a", "a"), Entity("b", "b")), (Relation(0, "near", 1),))
    props = [proposals([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], [0.9, 0.5, 0.1]),
             proposals([[6, 6, 7, 7], [8, 8, 9, 9]], [0.8, 0.2])]
    layout = layout_graph(graph, props, 10, 10, {"a": 0, "b": 1, "near": 2}, max_edges=2)
    assert layout.edge_nodes.tolist() == [[0, 3], [1, 3]]  # 0.72 and 0.40, not 0.18 ...


def test_many_detections_materialise_only_real_edges(tiny_clip: Path,
                                                     samples: list[Sample]) -> None:
    """Three entities of 40 detections, one relation: 1600 edges, not (120 choose 2)."""
    boxes = torch.rand(40, 2) * 50
    boxes = torch.cat((boxes, boxes + 5), 1).tolist()
    graph = SceneGraph((Entity("a", "a"), Entity("b", "b"), Entity("c", "c")),
                       (Relation(0, "near", 2),))
    layout = layout_graph(graph, [proposals(boxes)] * 3, 100, 100,
                          {"a": 0, "b": 1, "c": 2, "near": 3}, max_edges=10_000)
    assert len(layout.node_boxes) == 120 and len(layout.edge_nodes) == 1600


def test_heatmap_peaks_on_the_box_and_matches_the_formula() -> None:
    box = torch.tensor([[0.25, 0.75, 0.2, 0.4]])  # cx, cy, w, h
    heat = gaussian_heatmaps(box, grid=4, sigma_scale=0.5, min_sigma=0.01).reshape(4, 4)
    # patch centres at 0.125, 0.375, ...: the box centre (0.25, 0.75) lies between patches
    # (x 0.125/0.375, y 0.625/0.875); compute one cell independently
    x, y = 0.375, 0.625
    expected = math.exp(-0.5 * (((x - 0.25) / 0.1) ** 2 + ((y - 0.75) / 0.2) ** 2))
    assert heat[2, 1].item() == pytest.approx(expected, rel=1e-5)
    assert heat.argmax().item() // 4 in (2, 3) and heat.argmax().item() % 4 in (0, 1)
    assert heat[0, 3].item() < 1e-6


def test_union_and_padding() -> None:
    a = B.xyxy_to_cxcywh(torch.tensor([[0.1, 0.1, 0.2, 0.2]]))
    b = B.xyxy_to_cxcywh(torch.tensor([[0.5, 0.4, 0.6, 0.9]]))
    assert torch.allclose(B.cxcywh_to_xyxy(union_cxcywh(a, b)),
                          torch.tensor([[0.1, 0.1, 0.6, 0.9]]))
    padded, mask = pad_stack([torch.ones(2, 3), torch.ones(0, 3)], fill=7)
    assert padded.shape == (2, 2, 3) and mask.tolist() == [[True, True], [False, False]]
    assert padded[1].eq(7).all()


def test_edge_attention_bias_is_the_max_of_its_heatmaps(tiny_clip: Path,
                                                         samples: list[Sample]) -> None:
    method = build_method("erpa", clip=str(tiny_clip), **TINY)
    relational = [s for s in samples if s.graph is not None and s.graph.relations][:2]
    batch = method.collator()(relational)
    model = method.model
    nodes = batch["node_boxes"]
    src = batch["node_boxes"][0, batch["edge_nodes"][0, 0, 0]]
    dst = batch["node_boxes"][0, batch["edge_nodes"][0, 0, 1]]
    union = union_cxcywh(src, dst)
    _, _, unions = model.queries(batch, torch.zeros(batch["input_ids"].shape[0], 16))
    bias = model.attention_bias(batch, unions)
    heat = lambda box: gaussian_heatmaps(box[None], model.grid, 0.5, 0.02)[0]  # noqa: E731
    expected = torch.maximum(torch.maximum(heat(src), heat(dst)), heat(union))
    assert torch.allclose(bias[0, nodes.shape[1]].exp(), expected.clamp_min(1e-6), atol=1e-6)
    assert torch.allclose(bias[0, 0].exp(), heat(nodes[0, 0]).clamp_min(1e-6), atol=1e-6)


@pytest.mark.parametrize("head", ["regress", "select"])
def test_predictions_are_boxes_in_the_image(head: str, tiny_clip: Path,
                                            samples: list[Sample]) -> None:
    method = build_method("erpa", clip=str(tiny_clip), head=head, **TINY)
    predictions = method.predict(samples[:5])
    assert [p.sample_id for p in predictions] == [s.sample_id for s in samples[:5]]
    for prediction, sample in zip(predictions, samples, strict=False):
        x0, y0, x1, y1 = prediction.box
        assert 0 <= x0 <= x1 <= sample.width and 0 <= y0 <= y1 <= sample.height
    if head == "select":  # the answer is one of the referent's proposals (gt boxes here)
        for prediction, sample in zip(predictions, samples, strict=False):
            assert prediction.box in {a.box for a in sample.annotations}


def test_collator_is_picklable_and_graphs_are_checked(tiny_clip: Path,
                                                      samples: list[Sample]) -> None:
    method = build_method("erpa", clip=str(tiny_clip), **TINY)
    collate = pickle.loads(pickle.dumps(method.collator()))
    batch = collate(samples[:3])
    assert batch["target"].shape == (3, 4) and batch["node_mask"].any(1).all()
    from dataclasses import replace
    with pytest.raises(ConfigError, match="no gold graph"):
        collate([replace(samples[0], graph=None)])


@pytest.mark.parametrize("options,match", [
    ({"hidden": 10, "heads": 4}, "divisible"),
    ({"head": "pointer"}, "head"),
    ({"top_k": 0}, "top_k"),
    ({"sigma": 1.0}, "sigma"),
])
def test_bad_options_raise_config_error(options: dict, match: str, tiny_clip: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        build_method("erpa", clip=str(tiny_clip), **options)


def test_save_load_round_trip(tiny_clip: Path, samples: list[Sample], tmp_path: Path) -> None:
    method = build_method("erpa", clip=str(tiny_clip), **TINY)
    saved = method.save_pretrained(tmp_path / "erpa")
    loaded = build_method("erpa", checkpoint=str(saved))
    assert isinstance(loaded, ErpaMethod)
    assert not any(k.startswith("clip.") for k in method.state_to_save())
    assert [p.box for p in loaded.predict(samples[:4])] == [p.box
                                                            for p in method.predict(samples[:4])]
    # how inputs are prepared may change at load time; the architecture may not
    fewer = build_method("erpa", checkpoint=str(saved), top_k=2)
    assert fewer.config.top_k == 2 and fewer.config.hidden == TINY["hidden"]
    assert fewer.collator()(samples[:1])["node_mask"].sum() <= 2 * 3
    with pytest.raises(ConfigError, match="changeable at load time: graphs"):
        build_method("erpa", checkpoint=str(saved), hidden=32)


def test_select_head_learns_to_pick_the_referent(tiny_clip: Path, samples: list[Sample]) -> None:
    """A few dozen steps on eight samples: the chosen node moves to the target."""
    torch.manual_seed(0)
    method = build_method("erpa", clip=str(tiny_clip), head="select",
                          **{**TINY, "hidden": 32, "heads": 4})
    chosen = samples[:8]
    batch = move_batch(method.collator()(chosen), "cpu")

    def hits() -> int:
        return sum(B.iou(B.as_tensor([p.box]), B.as_tensor([s.gt_box])).item() >= 0.5
                   for p, s in zip(method.predict(chosen), chosen, strict=True))

    before = hits()
    optimizer = torch.optim.AdamW([p for p in method.model.parameters() if p.requires_grad],
                                  lr=3e-3)
    method.model.train()
    for _ in range(60):
        loss = method.loss(batch, method.model(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert hits() == 8 > before
    frozen = [p for p in method.model.clip.parameters()]
    assert all(p.grad is None for p in frozen)


def test_regress_head_loss_matches_an_independent_computation(tiny_clip: Path,
                                                               samples: list[Sample]) -> None:
    method = build_method("erpa", clip=str(tiny_clip), l1_weight=2.0, giou_weight=3.0, **TINY)
    batch = method.collator()(samples[:4])
    outputs = method.model(batch)
    losses = method.loss(batch, outputs)
    pred, target = outputs["boxes"], batch["target"]
    l1 = (pred - target).abs().mean()
    giou = torch.stack([1 - B.giou(B.cxcywh_to_xyxy(p[None]), B.cxcywh_to_xyxy(t[None]))[0]
                        for p, t in zip(pred, target, strict=True)]).mean()
    assert losses["loss"].item() == pytest.approx((2 * l1 + 3 * giou).item(), rel=1e-5)


def test_parsed_graphs_come_from_the_dataset_cache(tiny_clip: Path, samples: list[Sample],
                                                   tmp_path: Path) -> None:
    """prepare() reads graphs.<backend>.jsonl; a cached graph wins over parsing."""
    from refground.data.synth import synthref_dataset
    from refground.language import cache_key, graph_cache_path, write_graph_cache

    sample = samples[0]
    planted = SceneGraph((Entity("the planted thing", "thing"), Entity("the anchor", "anchor")),
                         (Relation(0, "far from", 1),))
    write_graph_cache(graph_cache_path(tmp_path / "synthref", "rules"),
                      {cache_key(sample.expression): planted})
    method = build_method("erpa", clip=str(tiny_clip),
                          **{**TINY, "graphs": "parsed", "parser_backend": "rules"})
    parsed = method.collator()([sample])
    method.prepare(synthref_dataset(tmp_path))
    cached = method.collator()([sample])
    assert cached["node_entity"].max() == 1 and cached["edge_mask"].any()
    assert not torch.equal(parsed["input_ids"], cached["input_ids"])


def test_subject_logsumexp_matches_a_loop() -> None:
    from refground.methods.erpa import subject_logsumexp

    torch.manual_seed(1)
    edge_nodes = torch.tensor([[[0, 3], [0, 4], [2, 3], [1, 1]], [[1, 0], [1, 2], [0, 0], [0, 0]]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    logits = torch.randn(2, 4) * 3
    got = subject_logsumexp(logits, {"edge_nodes": edge_nodes, "edge_mask": mask}, count=5)
    for b in range(2):
        for node in range(5):
            mine = [logits[b, e] for e in range(4) if mask[b, e] and edge_nodes[b, e, 0] == node]
            expected = torch.logsumexp(torch.stack(mine), 0) if mine else torch.tensor(0.0)
            assert got[b, node].item() == pytest.approx(expected.item(), abs=1e-5)


REPORT_DESIGN = {"box_embedding": False, "role_embedding": False, "match_embedding": False,
                 "node_crops": False, "pair_reasoning": False, "modifier_embedding": False,
                 "rank_features": False, "head": "regress"}


@pytest.mark.parametrize("options", [{}, {"head": "select"}, REPORT_DESIGN],
                         ids=["regress", "select", "report-design"])
def test_every_trainable_weight_gets_a_gradient(options: dict, tiny_clip: Path,
                                                samples: list[Sample]) -> None:
    """Unused parameters break DDP (find_unused_parameters=False) and bloat checkpoints: each
    configuration builds exactly the modules it uses."""
    method = build_method("erpa", clip=str(tiny_clip), **{**TINY, **options})
    relational = [s for s in samples if s.graph is not None and s.graph.relations][:2]
    batch = method.collator()(relational + samples[:2])
    method.loss(batch, method.model(batch))["loss"].backward()
    missing = [name for name, p in method.model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert missing == []
    if options is REPORT_DESIGN:
        saved = method.state_to_save()
        for addition in ("box_embed", "role_embed", "match_proj", "crop_embed", "pair_proj",
                         "edge_head", "node_head", "modifier_proj", "rank_embed", "membership"):
            assert not any(key.startswith(addition) for key in saved)


def test_rank_inputs_count_members_before_and_after(tiny_clip: Path) -> None:
    """Uniform membership (no crops): node ranks along x among the same entity's nodes."""
    method = build_method("erpa", clip=str(tiny_clip), node_crops=False, **TINY)
    # one sample: entity 0 has three nodes at x = 0.5, 0.1, 0.9; entity 1 one node; one pad
    boxes = torch.tensor([[[0.5, 0.5, 0.1, 0.1], [0.1, 0.2, 0.1, 0.2], [0.9, 0.8, 0.3, 0.3],
                           [0.05, 0.5, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5]]])
    batch = {"node_boxes": boxes, "node_entity": torch.tensor([[0, 0, 0, 1, 0]]),
             "node_mask": torch.tensor([[True, True, True, True, False]])}
    features = method.model.rank_inputs(batch, None)[0]
    assert features[:3, 0].tolist() == [1.0, 0.0, 2.0]   # members left of each (x "before")
    assert features[:3, 1].tolist() == [1.0, 2.0, 0.0]   # members right of each
    assert features[3, :2].tolist() == [0.0, 0.0]        # alone in its entity
    assert features[:3, 2].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3])
    assert features[0, 12].item() == pytest.approx(math.log1p(3.0))


def test_shipped_checkpoint_loads_by_name(samples: list[Sample]) -> None:
    """``checkpoint="synthref-erpa"`` resolves to the packaged float16 weights; the frozen
    CLIP comes from the packaged synthref-clip; answers are the samples' own boxes."""
    method = build_method("erpa", checkpoint="synthref-erpa")
    assert isinstance(method, ErpaMethod) and method.config.head == "select"
    for prediction, sample in zip(method.predict(samples[:4]), samples, strict=False):
        assert prediction.box in {a.box for a in sample.annotations}
        assert prediction.candidates and prediction.candidates[0].box == prediction.box
