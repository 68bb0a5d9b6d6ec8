"""``erpa``: Entity-Relationship-Pairs Attention (ERP-A, the visgator design restated in
docs/methods.md), trained.

The expression is parsed into a scene graph (:mod:`refground.language`). Every entity is
looked for with a proposer (text-conditioned detectors get the entity's head noun as query);
each of its top-k detections becomes a *node*, and every pair of detections whose entities are
related in the graph becomes an *edge*. Then:

1. CLIP's vision tower gives patch tokens and its text tower pooled token states of each
   entity span and relation predicate (projections dropped), all projected to ``hidden``.
2. A node query is its entity's text embedding, an edge query its predicate's embedding.
3. Decoder layers (pre-norm, LayerScale) cross-attend from ``[nodes; edges]`` to the patches.
   The attention logits are biased by the *log* of a Gaussian heatmap: a node sees mostly its
   box, an edge mostly its two boxes and their union (max of the three heatmaps). That is how
   geometry enters the model.
4. A transformer encoder over ``[REG; nodes; edges]`` (sinusoidal positions over the valid
   tokens, padding masked) and an MLP on ``[REG]`` regress the box: sigmoid ``cxcywh``,
   L1 + GIoU loss.

Eight additions, each switchable (``False`` gives the ERP-A design of docs/methods.md):

* ``box_embedding``: node and edge queries also get an MLP embedding of their box (and
  detection score). In ERP-A a query's position is only known through its heatmap mask;
  feeding it directly lets the head regress coordinates it can see.
* ``role_embedding``: a learned embedding of the entity's index in the graph, so the head
  knows which nodes are the *referent's* (entity 0) and which are anchors.
* ``match_embedding``: a node query also gets a projection of ``text * pooled patches`` (the
  element-wise product of its entity's embedding and the patch tokens averaged under its
  heatmap). Attention only *adds* what a box looks like to what the entity says; deciding
  whether they agree needs a multiplicative interaction, and without one ERP-A on SynthRef sat
  at chance (uniform over the referent's proposals) for the first 140 steps.
* ``node_crops``: each node also gets CLIP's (projected) image embedding of its box's crop and
  that crop's cosine similarity to its entity's (projected) text embedding -- what
  ``crop-rank`` scores. Patch tokens of a whole image carry little about small objects: with
  the shipped SynthRef CLIP, picking the referent's proposal by the similarity of its
  heatmap-pooled patch tokens to the text is *below* chance on attribute expressions (0.15 vs
  0.20, val), while crops are what that CLIP was trained on.
* ``pair_reasoning``: an edge query also gets a projection of its two node queries (so an
  edge token knows *which* detections it joins, not just where their union is), and with the
  select head a node's logit adds the log-sum-exp of the logits of its edges as subject: "the
  cup left of the plate" scores a cup by its best plate-and-relation pair, the shape of
  reasoning graph-resolve does by hand.
* ``modifier_embedding``: a node query also gets the text embedding of its entity's spatial
  modifiers from the graph ("leftmost", "second from the left"), so the selection operator
  is an input of its own and not diluted in the span's embedding.
* ``rank_features``: where a node stands among its entity's *members* -- the membership-
  weighted number and share of the entity's nodes before and after it along x, y and area
  (membership: a learnt sigmoid of the crop-text similarity, uniform without ``node_crops``).
  "leftmost" is "no member before it along x", "second from the top" "one member above it";
  a transformer can learn such counting, but slowly, and graph-resolve shows how much of
  SynthRef it is.
* ``head="select"``: instead of regressing, score every referent node and answer its box
  (cross-entropy to the node that best overlaps the target). With good proposals a pointer
  cannot be slightly off; a regressor can.

Batching is vectorised: graphs are padded to the batch's largest node and edge counts with
masks, edges are built with ``cartesian_prod`` per related entity pair, and only real edges are
materialised (at most ``max_edges`` per graph, best detection-score products first), so memory
grows with the edges a graph has, not with the square of its detections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from torch import Tensor, nn

from refground import boxes as B
from refground.boxes import gaussian_heatmaps
from refground.data.dataset import Dataset
from refground.devices import AUTO, DeviceSpec, resolve_device
from refground.errors import ConfigError
from refground.images import decode_images
from refground.language.queries import entity_phrase
from refground.methods.base import METHODS
from refground.methods.box_losses import L1, box_regression_loss
from refground.methods.options import MethodConfig
from refground.methods.trainable import (
    Batch,
    FrozenPartModel,
    TrainableMethod,
    image_sizes,
    require_target,
    target_boxes,
    trainable_factory,
)
from refground.types import Candidate, Entity, Prediction, Sample, SceneGraph
from refground.vision.clip import ClipEncoder, CLIPModel, clip_image_features, clip_text_features
from refground.vision.feature_cache import FeatureGroup, FeatureTable, image_row_keys
from refground.vision.feature_groups import (
    CLIP_CROPS,
    CLIP_IMAGES,
    CLIP_TEXTS,
    clip_crop_group,
    clip_identity,
    clip_image_group,
    clip_text_group,
)
from refground.vision.preprocess import (
    ClipPreprocessConfig,
    crop_box,
    pil_to_tensor,
    preprocess_tensor,
    squash_config,
)
from refground.vision.proposals import (
    GroundTruthProposer,
    Proposals,
    Proposer,
    build_proposer,
)
from refground.vision.shipped import SHIPPED_CLIP, resolve_clip_name


class ErpaConfig(MethodConfig):
    """Options of ``erpa`` (saved in ``method.json``; unknown names are an error)."""

    clip: str = SHIPPED_CLIP
    freeze_clip: bool = True
    proposals: str = "gt"
    proposal_options: dict[str, Any] = Field(default_factory=dict)
    top_k: int = Field(50, ge=1)
    graphs: Literal["parsed", "gold"] = "parsed"
    parser_backend: str = "auto"
    max_entities: int = Field(4, ge=1)
    max_edges: int = Field(1024, ge=1)
    hidden: int = Field(256, ge=8)
    heads: int = Field(8, ge=1)
    decoder_layers: int = Field(2, ge=1)
    encoder_layers: int = Field(2, ge=1)
    ffn_ratio: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    #: dropout on the cross-attention probabilities; off by default: on the CPU its mask
    #: (batch x heads x queries x patches) cost 30% of a training step
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    layer_scale: float = Field(0.1, gt=0.0)
    sigma_scale: float = Field(0.5, gt=0.0)
    min_sigma: float = Field(0.02, gt=0.0)
    box_embedding: bool = True
    role_embedding: bool = True
    match_embedding: bool = True
    node_crops: bool = True
    pair_reasoning: bool = True
    modifier_embedding: bool = True
    rank_features: bool = True
    head: Literal["regress", "select"] = "regress"
    #: with head="regress": "token" regresses the absolute box from [REG] (ERP-A, TransVG);
    #: "nodes" regresses it relative to the referent's nodes (see ``reference_box``)
    regress_from: Literal["token", "nodes"] = "token"
    l1_weight: float = Field(5.0, ge=0.0)
    giou_weight: float = Field(2.0, ge=0.0)

    def model_post_init(self, context: Any) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")


# --- graphs -----------------------------------------------------------------------------------

def referent_only(expression: str) -> SceneGraph:
    """The graph of an expression the parser could not structure: one entity, all of it."""
    return SceneGraph((Entity(span=expression, head=expression),))


def sample_graphs(samples: Sequence[Sample], source: str, backend: str,
                  cache: Mapping[str, SceneGraph] | None = None) -> list[SceneGraph]:
    """Each sample's graph: gold (``Sample.graph``) or parsed (``cache`` first); never one
    without entities."""
    if source == "gold":
        missing = [s.sample_id for s in samples if s.graph is None]
        if missing:
            raise ConfigError(f"erpa: graphs='gold' but samples {missing[:3]} have no gold graph; "
                              "use graphs='parsed'")
        graphs = [s.graph for s in samples]
    else:
        from refground.language import graphs_for

        graphs = graphs_for([s.expression for s in samples], cache, backend=backend)
    return [g if g is not None and g.entities else referent_only(s.expression)
            for g, s in zip(graphs, samples, strict=True)]


def truncate_graph(graph: SceneGraph, max_entities: int) -> SceneGraph:
    """Keep the first ``max_entities`` entities and the relations among them."""
    if len(graph.entities) <= max_entities:
        return graph
    relations = tuple(r for r in graph.relations
                      if r.subject < max_entities and r.object < max_entities)
    return SceneGraph(graph.entities[:max_entities], relations)


# --- the batch --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphLayout:
    """One sample's nodes and edges before padding (boxes normalised ``cxcywh``)."""

    node_boxes: Tensor      # (N, 4)
    node_pixels: Tensor     # (N, 4) the same boxes, xyxy pixels (what "select" answers)
    node_scores: Tensor     # (N,)
    node_entity: Tensor     # (N,) entity index in the graph
    node_text: Tensor       # (N,) index into the batch's texts
    node_modifier: Tensor   # (N,) index of the entity's spatial modifiers' text, -1 for none
    edge_nodes: Tensor      # (E, 2) node indices (subject, object)
    edge_text: Tensor       # (E,)


def layout_graph(graph: SceneGraph, proposals: Sequence[Proposals], width: float, height: float,
                 text_index: Mapping[str, int], max_edges: int) -> GraphLayout:
    """Nodes = every entity's detections; edges = detection pairs of related entities."""
    boxes, pixels, scores, entity_ids, texts, modifiers = [], [], [], [], [], []
    first: list[int] = []
    for index, (entity, props) in enumerate(zip(graph.entities, proposals, strict=True)):
        first.append(sum(len(b) for b in boxes))
        boxes.append(B.xyxy_to_cxcywh(B.normalize(props.boxes, width, height)))
        pixels.append(props.boxes)
        scores.append(props.scores)
        entity_ids.append(torch.full((len(props),), index, dtype=torch.long))
        texts.append(torch.full((len(props),), text_index[entity_phrase(entity)], dtype=torch.long))
        modifier = modifier_text(entity)
        modifiers.append(torch.full((len(props),), -1 if modifier is None else
                                    text_index[modifier], dtype=torch.long))
    pair_nodes, pair_texts, pair_scores = [], [], []
    node_scores = torch.cat(scores)
    for relation in graph.relations:
        subject = torch.arange(len(proposals[relation.subject])) + first[relation.subject]
        obj = torch.arange(len(proposals[relation.object])) + first[relation.object]
        pairs = torch.cartesian_prod(subject, obj).reshape(-1, 2)
        pair_nodes.append(pairs)
        pair_texts.append(torch.full((len(pairs),), text_index[relation.predicate],
                                     dtype=torch.long))
        pair_scores.append(node_scores[pairs[:, 0]] * node_scores[pairs[:, 1]])
    if pair_nodes:
        edge_nodes, edge_text = torch.cat(pair_nodes), torch.cat(pair_texts)
        if len(edge_nodes) > max_edges:
            keep = torch.cat(pair_scores).argsort(descending=True, stable=True)[:max_edges]
            edge_nodes, edge_text = edge_nodes[keep], edge_text[keep]
    else:
        edge_nodes = torch.zeros((0, 2), dtype=torch.long)
        edge_text = torch.zeros((0,), dtype=torch.long)
    return GraphLayout(torch.cat(boxes), torch.cat(pixels), node_scores,
                       torch.cat(entity_ids), torch.cat(texts), torch.cat(modifiers),
                       edge_nodes, edge_text)


def modifier_text(entity: Entity) -> str | None:
    """The entity's spatial modifiers as one text ("leftmost; on the left"), if it has any."""
    return "; ".join(entity.spatial) if entity.spatial else None


def pad_stack(rows: Sequence[Tensor], fill: float = 0) -> tuple[Tensor, Tensor]:
    """Pad ``(n_i, ...)`` tensors to ``(B, max n, ...)``; the mask is True on real rows."""
    longest = max(1, max(len(r) for r in rows))
    padded = rows[0].new_full((len(rows), longest, *rows[0].shape[1:]), fill)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
        mask[i, :len(row)] = True
    return padded, mask


@dataclass(frozen=True, eq=False)
class ErpaCollator:
    """``samples -> Batch``: image pixels, graphs, per-entity detections, padded node/edge
    tensors and tokenized texts. Picklable; holds the proposer, not the model.

    A detector proposer (OWL-ViT, ...) runs here, in the DataLoader workers; ``gt`` costs
    nothing.
    """

    config: ErpaConfig
    proposer: Proposer
    tokenizer: Any
    max_length: int
    preprocess: ClipPreprocessConfig
    crop_preprocess: ClipPreprocessConfig
    graph_cache: dict[str, SceneGraph] = field(default_factory=dict, repr=False)
    features: dict[str, FeatureTable] = field(default_factory=dict, repr=False)

    def detections(self, images: Sequence[Image.Image], samples: Sequence[Sample],
                   graphs: Sequence[SceneGraph]) -> list[list[Proposals]]:
        """Per sample, per entity: top-k boxes from the proposer queried with its head noun.

        One proposer call per entity *rank* across the batch, not one per sample.
        """
        per_sample: list[list[Proposals]] = [[] for _ in samples]
        for rank in range(max(len(g.entities) for g in graphs)):
            chosen = [i for i, g in enumerate(graphs) if rank < len(g.entities)]
            found = self.proposer.propose([images[i] for i in chosen],
                                          [samples[i] for i in chosen],
                                          [[graphs[i].entities[rank].head] for i in chosen])
            for i, props in zip(chosen, found, strict=True):
                per_sample[i].append(top_k(props, self.config.top_k))
        return per_sample

    def graphs(self, samples: Sequence[Sample]) -> list[SceneGraph]:
        return [truncate_graph(g, self.config.max_entities) for g in
                sample_graphs(samples, self.config.graphs, self.config.parser_backend,
                              self.graph_cache)]

    def texts(self, samples: Sequence[Sample]) -> list[str]:
        """Every text the batch's queries embed: entity spans, predicates, modifiers."""
        return graph_texts(self.graphs(samples))

    def gt_proposals(self, sample: Sample) -> Proposals:
        """The gt proposer's top-k boxes of a sample, from its annotations alone (no pixels)."""
        assert isinstance(self.proposer, GroundTruthProposer)
        return top_k(self.proposer.propose_sample(sample), self.config.top_k)

    def gt_detections(self, samples: Sequence[Sample],
                      graphs: Sequence[SceneGraph]) -> list[list[Proposals]]:
        """``detections`` for the gt proposer (every entity gets the same boxes)."""
        return [[self.gt_proposals(s)] * len(g.entities)
                for s, g in zip(samples, graphs, strict=True)]

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        graphs = self.graphs(samples)
        texts = graph_texts(graphs)
        batch = self.cached(samples, graphs, texts) if self.features else None
        if batch is None:
            batch = self.computed(samples, graphs, texts)
        target = target_boxes(samples)
        if target is not None:
            batch["target"] = target
        return batch

    def layout(self, samples: Sequence[Sample], graphs: Sequence[SceneGraph],
               texts: Sequence[str], detections: Sequence[Sequence[Proposals]],
               image_keys: Sequence[str]) -> tuple[Batch, list[GraphLayout]]:
        """The padded node and edge tensors every batch has, however its features come."""
        text_index = {text: i for i, text in enumerate(texts)}
        layouts = [layout_graph(g, props, s.width, s.height, text_index, self.config.max_edges)
                   for g, props, s in zip(graphs, detections, samples, strict=True)]
        image_slot = {key: slot for slot, key in enumerate(dict.fromkeys(image_keys))}
        node_boxes, node_mask = pad_stack([lay.node_boxes for lay in layouts], 0.5)
        edge_nodes, edge_mask = pad_stack([lay.edge_nodes for lay in layouts])
        batch: Batch = {
            "image_index": torch.tensor([image_slot[key] for key in image_keys]),
            "node_boxes": node_boxes,
            "node_pixels": pad_stack([lay.node_pixels for lay in layouts])[0],
            "node_scores": pad_stack([lay.node_scores for lay in layouts])[0],
            "node_entity": pad_stack([lay.node_entity for lay in layouts])[0],
            "node_text": pad_stack([lay.node_text for lay in layouts])[0],
            "node_modifier": pad_stack([lay.node_modifier for lay in layouts], -1)[0],
            "node_mask": node_mask,
            "edge_nodes": edge_nodes,
            "edge_text": pad_stack([lay.edge_text for lay in layouts])[0],
            "edge_mask": edge_mask,
            "size": image_sizes(samples),
        }
        return batch, layouts

    def computed(self, samples: Sequence[Sample], graphs: Sequence[SceneGraph],
                 texts: Sequence[str]) -> Batch:
        images = decode_images(samples)
        keys = [s.image.key for s in samples]
        batch, layouts = self.layout(samples, graphs, texts,
                                     self.detections(images, samples, graphs), keys)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        pixels = {key: pil_to_tensor(image)  # once per distinct image, in first-seen order
                  for key, image in dict(zip(keys, images, strict=True)).items()}
        batch["pixels"] = preprocess_tensor(list(pixels.values()), self.preprocess)
        batch["input_ids"] = tokens["input_ids"]
        batch["attention_mask"] = tokens["attention_mask"]
        if self.config.node_crops:
            batch["crops"], batch["node_crop"] = self.crops(
                [pixels[key] for key in keys],
                [lay.node_pixels for lay in layouts], keys)
        return batch

    def cached(self, samples: Sequence[Sample], graphs: Sequence[SceneGraph],
               texts: Sequence[str]) -> Batch | None:
        """The batch from the feature tables (gt proposals only), or None when a row is
        missing."""
        if not isinstance(self.proposer, GroundTruthProposer):
            return None
        keys = image_row_keys(samples)
        images, words = self.features[CLIP_IMAGES], self.features[CLIP_TEXTS]
        if keys is None or not (images.has_all(keys) and words.has_all(texts)):
            return None
        batch, layouts = self.layout(samples, graphs, texts, self.gt_detections(samples, graphs),
                                     keys)
        if self.config.node_crops:
            crops = self.features[CLIP_CROPS]
            distinct, batch["node_crop"] = crop_index([lay.node_pixels for lay in layouts], keys)
            if not crops.has_all(distinct):
                return None
            batch["crop_embeds"] = crops.gather(list(distinct))["embeds"]
        text_rows = words.gather(list(texts))
        batch["patches"] = images.gather(list(dict.fromkeys(keys)))["patches"]
        batch["text_pooled"], batch["text_embeds"] = text_rows["pooled"], text_rows["embeds"]
        return batch

    def crops(self, images: Sequence[Tensor], node_pixels: Sequence[Tensor],
              keys: Sequence[str]) -> tuple[Tensor, Tensor]:
        """CLIP-ready crops of every distinct (image, box) and each node's crop index."""
        distinct, node_crop = crop_index(node_pixels, keys)
        cut = [crop_box(images[sample], box) for sample, box in distinct.values()]
        return preprocess_tensor(cut, self.crop_preprocess), node_crop


def crop_index(node_pixels: Sequence[Tensor], keys: Sequence[str]
               ) -> tuple[dict[str, tuple[int, Tensor]], Tensor]:
    """Every distinct (image, box) of a batch, keyed by
    :func:`~refground.boxes.image_boxes_key` in first-seen order (value: a sample showing it
    and the box), and each node's index among them ``(B, N)``."""
    distinct: dict[str, tuple[int, Tensor]] = {}
    order: dict[str, int] = {}
    rows = []
    for sample, (boxes, key) in enumerate(zip(node_pixels, keys, strict=True)):
        names = [B.image_boxes_key(key, box) for box in boxes]
        for name, box in zip(names, boxes, strict=True):
            if name not in order:
                order[name] = len(order)
                distinct[name] = (sample, box)
        rows.append(torch.tensor([order[name] for name in names], dtype=torch.long))
    return distinct, pad_stack(rows)[0]


def graph_texts(graphs: Sequence[SceneGraph]) -> list[str]:
    """The distinct texts of a batch's graphs, sorted: spans, predicates, modifiers."""
    return sorted({entity_phrase(e) for g in graphs for e in g.entities}
                  | {r.predicate for g in graphs for r in g.relations}
                  | {m for g in graphs for e in g.entities
                     if (m := modifier_text(e)) is not None})


def top_k(proposals: Proposals, k: int) -> Proposals:
    if len(proposals) <= k:
        return proposals
    return Proposals(proposals.boxes[:k], proposals.scores[:k], proposals.labels[:k],
                     proposals.fallback)


# --- the model --------------------------------------------------------------------------------

def union_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """The smallest box enclosing both (normalised cxcywh in, cxcywh out)."""
    return B.xyxy_to_cxcywh(B.enclosing_box(B.cxcywh_to_xyxy(a), B.cxcywh_to_xyxy(b)))


def sinusoidal(positions: Tensor, dim: int) -> Tensor:
    """Transformer sinusoidal encoding of integer positions ``(...,)`` -> ``(..., dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angles = positions.float().unsqueeze(-1) * freqs
    encoding = torch.cat((angles.sin(), angles.cos()), dim=-1)
    return F.pad(encoding, (0, dim - 2 * half))


#: Inputs of the rank embedding: (before, after, share before, share after) x (x, y, area),
#: plus the log of the membership-weighted member count.
RANK_FEATURES = 13


def optional(enabled: bool, build: Callable[[], nn.Module]) -> nn.Module | None:
    return build() if enabled else None


def mlp(inputs: int, dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, dim), nn.ReLU(), nn.Linear(dim, dim))


class MaskedCrossAttention(nn.Module):
    """Multi-head attention from queries to patch tokens with an additive logit bias."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys: Tensor, bias: Tensor, image_index: Tensor) -> Tensor:
        """``keys`` are per *image* ``(I, P, dim)``, ``image_index`` each sample's image: the
        key/value projection runs once per image, not once per expression of it."""
        batch, count, dim = queries.shape
        heads = self.heads
        q = self.query(queries).view(batch, count, heads, dim // heads).transpose(1, 2)
        k, v = self.key_value(keys)[image_index].view(batch, keys.shape[1], 2, heads,
                                                      dim // heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.unsqueeze(1).to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).reshape(batch, count, dim))


class DecoderLayer(nn.Module):
    """Pre-norm masked cross-attention + FFN, each residual scaled by LayerScale."""

    def __init__(self, config: ErpaConfig) -> None:
        super().__init__()
        dim = config.hidden
        self.norm_query = nn.LayerNorm(dim)
        self.norm_keys = nn.LayerNorm(dim)
        self.attention = MaskedCrossAttention(dim, config.heads, config.attention_dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_ratio * dim), nn.GELU(),
                                 nn.Dropout(config.dropout), nn.Linear(config.ffn_ratio * dim, dim))
        self.scale_attention = nn.Parameter(torch.full((dim,), config.layer_scale))
        self.scale_ffn = nn.Parameter(torch.full((dim,), config.layer_scale))

    def forward(self, queries: Tensor, keys: Tensor, bias: Tensor, image_index: Tensor) -> Tensor:
        queries = queries + self.scale_attention * self.attention(
            self.norm_query(queries), self.norm_keys(keys), bias, image_index)
        return queries + self.scale_ffn * self.ffn(self.norm_ffn(queries))


class ErpaModel(FrozenPartModel):
    """``model(batch) -> {"boxes": (B, 4)}`` (regress: normalised cxcywh) or
    ``{"node_logits": (B, N)}`` (select: -inf on nodes that are not the referent's)."""

    def __init__(self, config: ErpaConfig, clip: CLIPModel) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        dim = config.hidden
        vision = clip.config.vision_config
        self.grid = int(vision.image_size) // int(vision.patch_size)
        self.patch_proj = nn.Linear(int(vision.hidden_size), dim)
        self.text_proj = nn.Linear(int(clip.config.text_config.hidden_size), dim)
        self.kind_embed = nn.Embedding(2, dim)  # node, edge
        # the switchable additions exist only when on: a module that gets no gradient is an
        # error under DDP, and a checkpoint should hold only what the model uses
        select = config.head == "select"
        projection = int(clip.visual_projection.out_features)
        self.box_embed = optional(config.box_embedding, lambda: mlp(5, dim))
        self.role_embed = optional(config.role_embedding,
                                   lambda: nn.Embedding(config.max_entities, dim))
        self.match_proj = optional(config.match_embedding, lambda: nn.Linear(dim, dim))
        self.crop_embed = optional(config.node_crops, lambda: mlp(projection + 1, dim))
        self.pair_proj = optional(config.pair_reasoning, lambda: nn.Linear(2 * dim, dim))
        self.edge_head = optional(config.pair_reasoning and select, lambda: nn.Linear(dim, 1))
        self.modifier_proj = optional(config.modifier_embedding, lambda: nn.Linear(dim, dim))
        self.rank_embed = optional(config.rank_features, lambda: mlp(RANK_FEATURES, dim))
        # membership = sigmoid(sharpness * (similarity - best similarity) + offset)
        self.membership = (nn.Parameter(torch.tensor([20.0, 2.0]))
                           if config.rank_features and config.node_crops else None)
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.reg_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.reg_token, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, config.heads, config.ffn_ratio * dim,
                                           config.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.encoder_layers,
                                             enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        self.box_head = optional(not select, lambda: nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(dim, 4)))
        self.node_head = optional(select, lambda: nn.Linear(dim, 1))
        self.reference_query = optional(not select and config.regress_from == "nodes",
                                        lambda: nn.Linear(dim, dim))
        unused = [clip.logit_scale]  # and both projections unless crops are compared
        if not config.node_crops:
            unused += [*clip.visual_projection.parameters(), *clip.text_projection.parameters()]
        self.freeze_part("clip", config.freeze_clip, unused)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """Patch tokens ``(I, P, hidden)`` (per image), text embeddings ``(T, hidden)`` and,
        with ``node_crops``, each node's crop features ``(B, N, projection + 1)``."""
        if "patches" in batch:  # read from the feature cache
            patches, text = batch["patches"], batch["text_pooled"]
            crops, aligned = batch.get("crop_embeds"), batch["text_embeds"]
        else:
            clip = self.clip
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_clip):
                patches = clip_image_features(clip, batch["pixels"])[0]
                text, aligned = clip_text_features(clip, batch["input_ids"],
                                                   batch["attention_mask"])
                crops = (clip_image_features(clip, batch["crops"])[1]
                         if self.config.node_crops else None)
        crop_features = None
        if self.config.node_crops:
            node_crops = crops.float()[batch["node_crop"]]
            similarity = (node_crops * aligned.float()[batch["node_text"]]).sum(-1, keepdim=True)
            crop_features = torch.cat((node_crops, similarity), -1)
        return self.patch_proj(patches.float()), self.text_proj(text.float()), crop_features

    def queries(self, batch: Batch, text: Tensor,
                crop_features: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Node and edge queries, and the edges' union boxes ``(B, E, 4)``."""
        node_boxes, edge_nodes = batch["node_boxes"], batch["edge_nodes"]
        src = torch.gather(node_boxes, 1, edge_nodes[..., 0:1].expand(-1, -1, 4))
        dst = torch.gather(node_boxes, 1, edge_nodes[..., 1:2].expand(-1, -1, 4))
        union = union_cxcywh(src, dst)
        nodes = text[batch["node_text"]] + self.kind_embed.weight[0]
        edges = text[batch["edge_text"]] + self.kind_embed.weight[1]
        if self.box_embed is not None:
            scores = batch["node_scores"].unsqueeze(-1)
            edge_scores = (torch.gather(batch["node_scores"], 1, edge_nodes[..., 0])
                           * torch.gather(batch["node_scores"], 1, edge_nodes[..., 1]))
            nodes = nodes + self.box_embed(torch.cat((node_boxes, scores), -1))
            edges = edges + self.box_embed(torch.cat((union, edge_scores.unsqueeze(-1)), -1))
        if self.role_embed is not None:
            nodes = nodes + self.role_embed(batch["node_entity"])
        if self.crop_embed is not None and crop_features is not None:
            nodes = nodes + self.crop_embed(crop_features)
        if self.modifier_proj is not None:
            index = batch["node_modifier"]
            modifier = text[index.clamp_min(0)] * (index >= 0).unsqueeze(-1)
            nodes = nodes + self.modifier_proj(modifier)
        if self.rank_embed is not None:
            nodes = nodes + self.rank_embed(self.rank_inputs(batch, crop_features))
        if self.pair_proj is not None:
            ends = torch.gather(nodes, 1, edge_nodes.reshape(edge_nodes.shape[0], -1, 1)
                                .expand(-1, -1, nodes.shape[-1]))
            edges = edges + self.pair_proj(ends.reshape(*edge_nodes.shape[:2], -1))
        return nodes, edges, union

    def rank_inputs(self, batch: Batch, crop_features: Tensor | None) -> Tensor:
        """``(B, N, 13)`` soft ranks of each node among its entity's members (see module)."""
        mask, entity = batch["node_mask"], batch["node_entity"]
        same = ((entity.unsqueeze(2) == entity.unsqueeze(1)) & mask.unsqueeze(2)
                & mask.unsqueeze(1))
        if self.membership is not None and crop_features is not None:
            similarity = crop_features[..., -1]
            best = similarity.unsqueeze(1).masked_fill(~same, float("-inf")).amax(-1)
            best = best.nan_to_num(0.0, 0.0, 0.0)
            weights = torch.sigmoid(self.membership[0] * (similarity - best) + self.membership[1])
        else:
            weights = mask.float()
        # pairwise[b, i, j]: how much node j counts as a fellow member for node i
        pairwise = weights.unsqueeze(1) * same
        members = pairwise.sum(-1).clamp_min(1e-6)
        boxes = batch["node_boxes"]
        keys = (boxes[..., 0], boxes[..., 1], boxes[..., 2] * boxes[..., 3])
        features = []
        for key in keys:
            before = (pairwise * (key.unsqueeze(1) < key.unsqueeze(2))).sum(-1)
            after = (pairwise * (key.unsqueeze(1) > key.unsqueeze(2))).sum(-1)
            features += [before, after, before / members, after / members]
        features.append(torch.log1p(members))
        return torch.stack(features, -1)

    def attention_bias(self, batch: Batch, union: Tensor) -> Tensor:
        """``(B, N + E, P)`` log-heatmaps: node box; max of an edge's boxes and their union."""
        config = self.config
        heat = gaussian_heatmaps(batch["node_boxes"], self.grid, config.sigma_scale,
                                 config.min_sigma)
        edge_nodes = batch["edge_nodes"]
        patches = heat.shape[-1]
        src = torch.gather(heat, 1, edge_nodes[..., 0:1].expand(-1, -1, patches))
        dst = torch.gather(heat, 1, edge_nodes[..., 1:2].expand(-1, -1, patches))
        joint = gaussian_heatmaps(union, self.grid, config.sigma_scale, config.min_sigma)
        edge_heat = torch.maximum(torch.maximum(src, dst), joint)
        return torch.cat((heat, edge_heat), 1).clamp_min(1e-6).log()

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        patches, text, crop_features = self.encode(batch)
        nodes, edges, union = self.queries(batch, text, crop_features)
        bias = self.attention_bias(batch, union)
        if self.match_proj is not None:
            count = nodes.shape[1]
            pooled = torch.softmax(bias[:, :count], -1) @ patches[batch["image_index"]]
            nodes = nodes + self.match_proj(text[batch["node_text"]] * pooled)
        tokens = torch.cat((nodes, edges), 1)
        for layer in self.decoder:
            tokens = layer(tokens, patches, bias, batch["image_index"])
        valid = torch.cat((batch["node_mask"], batch["edge_mask"]), 1)
        reg = self.reg_token.expand(tokens.shape[0], -1, -1)
        sequence = torch.cat((reg, tokens), 1)
        valid = torch.cat((valid.new_ones((valid.shape[0], 1)), valid), 1)
        positions = valid.long().cumsum(1) - 1
        sequence = sequence + sinusoidal(positions, sequence.shape[-1]) * valid.unsqueeze(-1)
        encoded = self.final_norm(self.encoder(sequence, src_key_padding_mask=~valid))
        if self.box_head is not None and self.reference_query is not None:
            return self.reference_box(encoded, batch, nodes.shape[1])
        if self.box_head is not None:
            return {"boxes": self.box_head(encoded[:, 0]).float().sigmoid()}
        count = nodes.shape[1]
        node_logits = self.node_head(encoded[:, 1:1 + count]).squeeze(-1).float()
        if self.edge_head is not None:
            edge_logits = self.edge_head(encoded[:, 1 + count:]).squeeze(-1).float()
            node_logits = node_logits + subject_logsumexp(edge_logits, batch, count)
        referent = batch["node_mask"] & (batch["node_entity"] == 0)
        return {"node_logits": node_logits.masked_fill(~referent, float("-inf"))}


    def reference_box(self, encoded: Tensor, batch: Batch, count: int) -> dict[str, Tensor]:
        """[REG] regresses relative to the referent's nodes (``regress_from="nodes"``).

        [REG]'s output scores the referent's encoded nodes (scaled dot product); the
        softmax-weighted mean of their boxes is the reference box, and the box MLP on [REG]
        predicts an offset (at most half the reference's side) and a log-scale of it. One
        token regresses, as in ERP-A and TransVG (Deng et al. 2021), but in the frame of the
        boxes it attends to, the way DETR variants refine reference boxes, rather than in
        absolute image coordinates (which, on SynthRef, never left the mean box).
        """
        reg, node_states = encoded[:, 0], encoded[:, 1:1 + count]
        scores = torch.einsum("bd,bnd->bn", self.reference_query(reg), node_states).float()
        scores = scores / math.sqrt(reg.shape[-1])
        referent = batch["node_mask"] & (batch["node_entity"] == 0)
        weights = scores.masked_fill(~referent, float("-inf")).softmax(-1).nan_to_num(0.0)
        reference = torch.einsum("bn,bnc->bc", weights, batch["node_boxes"].float())
        raw = self.box_head(reg).float()
        centre = reference[:, :2] + 0.5 * reference[:, 2:] * raw[:, :2].tanh()
        size = reference[:, 2:] * raw[:, 2:].clamp(-3.0, 3.0).exp()
        box = torch.cat((centre.clamp(0.0, 1.0), size.clamp(1e-4, 1.0)), -1)
        return {"boxes": box, "node_weights": weights}


def subject_logsumexp(edge_logits: Tensor, batch: Batch, count: int) -> Tensor:
    """``(B, N)``: per node, log-sum-exp of the logits of the edges it is the subject of
    (0 for a node in no edge), by scatter-add, without a loop over edges."""
    mask = batch["edge_mask"]
    subjects = batch["edge_nodes"][..., 0]
    shift = edge_logits.masked_fill(~mask, float("-inf")).amax(1, keepdim=True)
    shift = shift.nan_to_num(0.0, 0.0, 0.0).detach()
    weights = torch.where(mask, (edge_logits - shift).exp(), torch.zeros_like(edge_logits))
    sums = edge_logits.new_zeros((edge_logits.shape[0], count)).scatter_add(1, subjects, weights)
    has_edges = torch.zeros_like(sums).scatter_add(1, subjects, mask.float()) > 0
    return torch.where(has_edges, sums.clamp_min(1e-30).log() + shift, torch.zeros_like(sums))


# --- losses and decoding ----------------------------------------------------------------------

def best_node(batch: Batch, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the referent node overlapping the target most, and that IoU."""
    node_xyxy = B.cxcywh_to_xyxy(batch["node_boxes"])
    target_xyxy = B.cxcywh_to_xyxy(target.to(node_xyxy.device)).unsqueeze(1)
    ious = B.iou(node_xyxy, target_xyxy.expand_as(node_xyxy))
    ious = ious.masked_fill(~(batch["node_mask"] & (batch["node_entity"] == 0)), -1.0)
    return ious.max(1)


def selection_loss(logits: Tensor, batch: Batch, target: Tensor) -> dict[str, Tensor]:
    """Cross-entropy to the best-overlapping referent node; samples whose best node misses
    the target (IoU < 0.5) teach nothing reliable and are left out."""
    best_iou, best = best_node(batch, target)
    usable = best_iou >= 0.5
    if not usable.any():
        zero = logits.new_zeros(()) + 0.0 * logits.nan_to_num(0.0, 0.0, 0.0).sum()
        return {"loss": zero, "ce": zero.detach(), "usable": usable.float().mean()}
    ce = F.cross_entropy(logits[usable], best[usable])
    return {"loss": ce, "ce": ce.detach(), "usable": usable.float().mean()}


class ErpaMethod(TrainableMethod):
    """ERP-A; see the module docstring."""

    name = "erpa"
    summary = ("trained ERP-A: the parsed objects' candidate boxes attend to CLIP patches; a "
               "head picks the box")
    config_type = ErpaConfig
    frozen_prefixes = ("clip.",)
    freeze_option = "freeze_clip"
    inference_options = frozenset({"graphs", "parser_backend", "proposals", "proposal_options",
                                   "top_k", "max_edges"})
    config: ErpaConfig
    demo_order = 70
    demo_checkpoint = "synthref-erpa"

    def __init__(self, config: ErpaConfig, model: ErpaModel, device: DeviceSpec = AUTO,
                 *, collate: ErpaCollator, encoder: ClipEncoder) -> None:
        super().__init__(config, model, device)
        self._collate = collate
        self._encoder = encoder

    @classmethod
    def build(cls, config: ErpaConfig, device: DeviceSpec = AUTO) -> ErpaMethod:
        device = resolve_device(device)  # the CLIP loads straight onto it
        encoder = ClipEncoder.from_pretrained(resolve_clip_name(config.clip), device=device)
        model = ErpaModel(config, encoder.model)
        proposer = build_proposer(config.proposals, **dict(config.proposal_options))
        clip_preprocess = encoder.preprocess_config
        preprocess = squash_config(encoder.image_size, clip_preprocess.image_mean,
                                   clip_preprocess.image_std)
        collate = ErpaCollator(config, proposer, encoder.tokenizer, encoder.max_length,
                               preprocess, clip_preprocess)
        return cls(config, model, device, collate=collate, encoder=encoder)

    def feature_groups(self) -> list[FeatureGroup]:
        """With gt proposals and a frozen CLIP: patch tokens per image, pooled and projected
        states per graph text and (``node_crops``) an embedding per annotated box. A detector's
        boxes differ per run, so with one the batch is computed from images."""
        collate = self._collate
        if not self.config.freeze_clip or not isinstance(collate.proposer, GroundTruthProposer):
            return []
        encoder = self._encoder
        identity = clip_identity(encoder)
        groups = [clip_image_group(encoder, collate.preprocess, identity),
                  clip_text_group(encoder, collate.texts, identity)]
        if self.config.node_crops:
            groups.append(clip_crop_group(
                encoder, lambda sample: collate.gt_proposals(sample).boxes, identity))
        return groups

    def use_features(self, tables: Mapping[str, FeatureTable]) -> None:
        self._collate.features.update(tables)

    @property
    def needs_annotations(self) -> bool:
        return isinstance(self._collate.proposer, GroundTruthProposer)

    def prepare(self, dataset: Dataset) -> None:
        """Parsed graphs: read the dataset's graph cache (``refground prepare-graphs``), if
        any, so neither training workers nor evaluation parse again."""
        if self.config.graphs == "parsed":
            self._collate.graph_cache.update(dataset.graphs(self.config.parser_backend))

    def collator(self) -> ErpaCollator:
        return self._collate

    def loss(self, batch: Batch, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        target = require_target(batch, self.name)
        if self.config.head == "select":
            return selection_loss(outputs["node_logits"], batch, target)
        return box_regression_loss(outputs["boxes"], target, L1(),
                                   distance_weight=self.config.l1_weight,
                                   giou_weight=self.config.giou_weight)

    def decode(self, batch: Batch, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self.config.head == "select":
            probabilities = outputs["node_logits"].softmax(-1)
            score, index = probabilities.max(-1)
            boxes = batch["node_boxes"][torch.arange(len(index)), index]
            return boxes, score
        boxes = outputs["boxes"]
        return boxes, torch.ones(boxes.shape[0], device=boxes.device)

    def predictions(self, samples: Sequence[Sample], batch: Batch,
                    outputs: dict[str, Tensor]) -> list[Prediction]:
        """``select``: the chosen proposal's own pixel box, and the referent's proposals
        ranked by probability as candidates; ``regress``: the regressed box."""
        if self.config.head != "select":
            return super().predictions(samples, batch, outputs)
        probabilities = outputs["node_logits"].float().softmax(-1).cpu()
        pixels = batch["node_pixels"].cpu()
        results = []
        for i, sample in enumerate(samples):
            order = probabilities[i].argsort(descending=True, stable=True)
            order = order[probabilities[i, order] > 0]
            candidates = tuple(Candidate(B.to_tuple(pixels[i, j]), float(probabilities[i, j]))
                               for j in order.tolist())
            best = candidates[0]
            results.append(Prediction(sample.sample_id, best.box, best.score, candidates))
        return results


METHODS.register("erpa")(trainable_factory(ErpaMethod))
