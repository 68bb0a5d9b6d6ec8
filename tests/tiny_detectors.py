"""Tiny, randomly initialised OWL-ViT, Grounding DINO and DETR checkpoints for the proposer tests.

Nothing can be downloaded here, yet the proposers must be tested through the code path users
take. So each builder makes the real transformers model class from a small config, a real
tokenizer and image processor, ``save_pretrained``s all of them into a directory, and the tests
load that directory by name exactly like a hub snapshot.

Details that keep the tiny models faithful to the real ones:

* OWL-ViT pools a text at its largest token id (OpenAI CLIP's end-of-text), so the CLIP
  tokenizer puts ``<|startoftext|>`` / ``<|endoftext|>`` last, as 49406 / 49407 are in CLIP;
* Grounding DINO hard-codes BERT's ids for [CLS] 101, [SEP] 102, "." 1012 and "?" 1029 when it
  splits a prompt into phrases, so the WordPiece vocabulary puts those tokens at those ids;
* hub DETR uses a timm backbone; the tiny one uses a transformers ResNet
  (``use_timm_backbone=False``) because timm is not installed.

Some random weights are re-drawn with a larger spread (``_spread_heads``): at the default
initialisation every query of a tiny DETR predicts the same box and OWL-ViT's boxes are all
alike, which would make the NMS and area tests vacuous.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPTokenizer,
    DetrConfig,
    DetrForObjectDetection,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    OwlViTConfig,
    OwlViTForObjectDetection,
    OwlViTProcessor,
    ResNetConfig,
    SwinConfig,
)

try:  # transformers 5 names the torchvision-free image processors *Pil
    from transformers import (
        DetrImageProcessorPil as DetrImageProcessor,
    )
    from transformers import (
        GroundingDinoImageProcessorPil as GroundingDinoImageProcessor,
    )
    from transformers import (
        OwlViTImageProcessorPil as OwlViTImageProcessor,
    )
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import (  # type: ignore[assignment]
        DetrImageProcessor,
        GroundingDinoImageProcessor,
        OwlViTImageProcessor,
    )

#: Words the tiny BERT vocabulary knows whole; anything else is spelt with letter pieces.
WORDS = ("cat", "dog", "car", "red", "person", "man", "woman", "table", "the", "a", "photo", "of",
         "left", "right", "ball", "cup")
DETR_CLASSES = ("person", "dog", "car", "cup")


def _spread_heads(model: torch.nn.Module, names: tuple[str, ...], std: float, seed: int) -> None:
    """Redraw the parameters of the named submodules from N(0, std) (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in names):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def clip_byte_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """A real CLIPTokenizer over the 256 byte symbols (no merges): every text encodes."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [s + "</w>" for s in alphabet])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def save_tiny_owlvit(directory: Path, seed: int = 0) -> Path:
    """OWL-ViT with 32x32 inputs, 8x8 patches (16 boxes per image), hidden size 16."""
    tokenizer = clip_byte_tokenizer(max_length=16)
    eos = tokenizer.eos_token_id
    config = OwlViTConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = OwlViTForObjectDetection(config).eval()
    _spread_heads(model, ("box_head",), 0.5, seed)
    image_processor = OwlViTImageProcessor(size={"height": 32, "width": 32},
                                           crop_size={"height": 32, "width": 32})
    processor = OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(directory, model, processor)


def bert_wordpiece_tokenizer() -> BertTokenizer:
    """A real uncased BertTokenizer whose special ids match bert-base-uncased's."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                 "[MASK]"]
    for fixed_id, token in ((1012, "."), (1029, "?")):
        tokens += [f"[unused{i}]" for i in range(len(tokens) - 4, fixed_id - 4)]
        tokens.append(token)
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens += list(WORDS) + list(letters) + [f"##{c}" for c in letters] + [",", "!", "'"]
    vocab = {token: i for i, token in enumerate(tokens)}
    assert (vocab["[CLS]"], vocab["[SEP]"], vocab["."], vocab["?"]) == (101, 102, 1012, 1029)
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def save_tiny_grounding_dino(directory: Path, seed: int = 0) -> Path:
    """Grounding DINO with a 4-stage Swin of width 8, d_model 32, 20 queries, 32 text tokens."""
    tokenizer = bert_wordpiece_tokenizer()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=2, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=64),
        d_model=32,  # GroupNorm(32, d_model) needs a multiple of 32
        encoder_layers=1, decoder_layers=2,  # one decoder layer breaks the tied bbox heads
        encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=20, num_feature_levels=4, encoder_n_points=1,
        decoder_n_points=1, max_text_len=32,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _save(directory, model, processor)


def save_tiny_detr(directory: Path, seed: int = 0) -> Path:
    """DETR with a 4-stage basic-block ResNet of width 8-16, d_model 16, 10 object queries."""
    config = DetrConfig(
        use_timm_backbone=False,
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16],
                                     depths=[1, 1, 1, 1], layer_type="basic",
                                     out_features=["stage4"]),
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
        id2label=dict(enumerate(DETR_CLASSES)),
        label2id={name: i for i, name in enumerate(DETR_CLASSES)},
    )
    torch.manual_seed(seed)
    model = DetrForObjectDetection(config).eval()
    # At the default init the decoder's cross-attention is uniform and every query predicts the
    # same box; sharper attention, object queries and heads give varied boxes and scores.
    _spread_heads(model, ("query_position_embeddings",), 1.0, seed)
    _spread_heads(model, ("encoder_attn.q_proj", "encoder_attn.k_proj"), 0.5, seed + 1)
    _spread_heads(model, ("bbox_predictor",), 0.4, seed + 2)
    _spread_heads(model, ("class_labels",), 0.5, seed + 3)
    image_processor = DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return _save(directory, model, image_processor)


def _save(directory: Path, model: Any, processor: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
