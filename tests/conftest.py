"""Shared fixtures: a hand-written mini REFER dataset, independent of the SynthRef generator."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from refground.types import Sample

MINI_IMAGES = [
    {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 480},
    {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 320, "height": 240},
]
MINI_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 18, "name": "dog", "supercategory": "animal"}]
MINI_ANNOTATIONS = [
    {"id": 16, "image_id": 581857, "category_id": 1, "bbox": [10.0, 20.0, 100.0, 200.0]},
    {"id": 17, "image_id": 581857, "category_id": 1, "bbox": [300.0, 40.0, 120.0, 300.0]},
    {"id": 18, "image_id": 581857, "category_id": 18, "bbox": [500.0, 300.0, 80.0, 60.0]},
    {"id": 99, "image_id": 42, "category_id": 18, "bbox": [0.0, 0.0, 50.5, 40.0]},
]


def mini_refs() -> list[dict[str, Any]]:
    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sentences: list[str],
            first_sent_id: int) -> dict[str, Any]:
        sent_ids = list(range(first_sent_id, first_sent_id + len(sentences)))
        return {
            "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "category_id": 1, "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sent_ids": sent_ids,
            "sentences": [{"sent_id": s, "sent": text, "raw": text, "tokens": text.split()}
                          for s, text in zip(sent_ids, sentences, strict=True)],
        }

    return [
        ref(1, 16, 581857, "train", ["man on the left", "left guy"], 100),
        ref(2, 17, 581857, "test", ["the tall man", "man in the middle", "person right"], 200),
        ref(3, 18, 581857, "test", ["the dog"], 300),
        ref(4, 99, 42, "val", ["small dog"], 400),
    ]


def write_mini_refer(root: Path, refs: list[dict[str, Any]] | None = None,
                     instances: dict[str, Any] | None = None) -> Path:
    """Write ``root/refcocog/{refs(umd).p,instances.json}`` and ``root/images/*.jpg``."""
    dataset = root / "refcocog"
    dataset.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for image in MINI_IMAGES:
        Image.new("RGB", (image["width"], image["height"]), (90, 120, 30)).save(
            root / "images" / image["file_name"])
    if instances is None:
        instances = {"images": MINI_IMAGES, "annotations": MINI_ANNOTATIONS,
                     "categories": MINI_CATEGORIES}
    (dataset / "instances.json").write_text(json.dumps(instances))
    with open(dataset / "refs(umd).p", "wb") as stream:
        pickle.dump(mini_refs() if refs is None else refs, stream, protocol=2)
    return root


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # `make test` runs pytest workers (pytest-xdist): the cores are shared out among them, or
    # the workers' OpenMP pools fight over the same cores (two workers on CI's two cores with
    # two threads each ran the suite 30% slower than with one thread each).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(
        os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def mini_refer(tmp_path: Path) -> Path:
    return write_mini_refer(tmp_path / "data")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads on a shared, busy 2-core machine
    spend most of each step waiting at OpenMP barriers (40 steps: 9 s instead of 0.8 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthref_root(factory: pytest.TempPathFactory, seed: int = 3, images: int = 10) -> Path:
    """A small SynthRef, generated once per (seed, images) in a test session and shared:
    callers read it and never write into it (a test that writes makes its own)."""
    from refground.data.synth import generate_synthref

    root = factory.getbasetemp() / "shared-synthref" / f"seed{seed}-images{images}"
    if not (root / "synthref" / "instances.json").is_file():
        generate_synthref(root, seed=seed, num_images=images)
    return root


def synthref_split(factory: pytest.TempPathFactory, split: str = "test", seed: int = 3,
                   images: int = 10) -> list[Sample]:
    """The samples of one split of a shared small SynthRef (see :func:`synthref_root`)."""
    from refground.data.synth import synthref_dataset

    root = synthref_root(factory, seed, images)
    return list(synthref_dataset(root).split(split).samples)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real CLIP (``save_tiny_clip``'s defaults) for the whole session, loaded through
    ``from_pretrained`` like any checkpoint; tests never write into it."""
    from refground.vision.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("operator-models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_clip_600(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP with a 600-token vocabulary (detr's text tower needs a few more words)."""
    from refground.vision.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip-600"), vocab_size=600)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``refground ARGV`` in this process through the console script's own entry point
    (``refground.cli.main``: its one-line errors and exit codes); returns (exit code, stderr).

    A child process would repeat a 5 s start-up per call; ``test_cli`` keeps one real one."""
    from refground.cli import main

    capsys.readouterr()  # drop what came before
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err
