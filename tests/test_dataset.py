"""`Dataset`: the one object every reader of a benchmark goes through, and its format registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refground.data import DATASET_FORMATS, Dataset, Split
from refground.errors import DatasetError, UnknownNameError
from refground.language import cache_key, graph_cache_path, write_graph_cache
from refground.language.prepare import prepare_graph_cache
from refground.types import Entity, Sample, SceneGraph
from tests.conftest import run_cli


def mini(root: Path) -> Dataset:
    return Dataset(root, "refcocog", "umd")


def test_expressions_read_the_sentences_without_the_images(mini_refer: Path) -> None:
    dataset = mini(mini_refer)
    texts = {split: [s.expression for s in dataset.split(split)]
             for split in ("train", "val", "test")}
    for image in (mini_refer / "images").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="image file missing"):
        dataset.split("test")
    for split, expected in texts.items():
        assert dataset.expressions(split) == expected
    assert dataset.expressions() == texts["train"] + texts["test"] + texts["val"]  # file order
    (mini_refer / "refcocog" / "instances.json").unlink()  # text needs no annotations either
    assert dataset.expressions("test") == texts["test"]
    with pytest.raises(DatasetError, match="it has: test, train, val"):
        dataset.expressions("testA")
    with pytest.raises(DatasetError, match=r"refs\(google\)\.p not found"):
        Dataset(mini_refer, "refcocog", "google").expressions()


def test_split_limit_keeps_what_was_skipped(mini_refer: Path) -> None:
    (mini_refer / "images" / "COCO_train2014_000000000042.jpg").unlink()
    dataset = mini(mini_refer)
    assert [s.sample_id for s in dataset.split("test", limit=2)] == ["2:200", "2:201"]
    limited = dataset.split("val", skip_invalid=True, limit=1)
    assert len(limited) == 0 and len(limited.skipped) == 1


def test_graphs_are_the_cache_prepare_graphs_writes(mini_refer: Path) -> None:
    dataset = mini(mini_refer)
    assert dataset.graphs("rules") == {}
    graph = SceneGraph((Entity("the dog", "dog"),))
    write_graph_cache(graph_cache_path(dataset.directory, "rules"), {"the dog": graph})
    assert dataset.graphs("rules") == {"the dog": graph}

    for image in (mini_refer / "images").iterdir():
        image.unlink()
    result = prepare_graph_cache(dataset, "rules")
    assert result.path == graph_cache_path(dataset.directory, "rules")
    assert result.expressions == len(dataset.expressions()) == 7
    assert set(dataset.graphs("rules")) == {cache_key(t) for t in dataset.expressions()}


def test_annotation_files_define_the_version(mini_refer: Path) -> None:
    assert mini(mini_refer).annotation_files() == [
        mini_refer / "refcocog" / "refs(umd).p", mini_refer / "refcocog" / "instances.json"]


@DATASET_FORMATS.register("test-jsonl")
class JsonlFormat:
    """A format as a user would add one: ``<root>/<name>/<split_by>.jsonl``, one sample a line
    (split, image, width, height, xyxy box, sentence)."""

    def _records(self, dataset: Dataset) -> list[dict]:
        path = dataset.directory / f"{dataset.split_by}.jsonl"
        if not path.is_file():
            raise DatasetError(f"{path} not found")
        return [json.loads(line) for line in path.read_text().splitlines()]

    def split(self, dataset: Dataset, name: str, skip_invalid: bool) -> Split:
        samples = tuple(
            Sample(sample_id=str(index), image=dataset.images_root / r["image"],
                   width=r["width"], height=r["height"], expression=r["sentence"],
                   gt_box=tuple(float(v) for v in r["box"]))
            for index, r in enumerate(self._records(dataset)) if r["split"] == name)
        return Split(dataset.name, dataset.split_by, name, samples)

    def expressions(self, dataset: Dataset, split: str | None) -> list[str]:
        return [r["sentence"] for r in self._records(dataset)
                if split is None or r["split"] == split]

    def annotation_files(self, dataset: Dataset) -> list[Path]:
        return [dataset.directory / f"{dataset.split_by}.jsonl"]


def test_a_registered_format_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"refer", "test-jsonl"} <= set(DATASET_FORMATS.names())
    folder = tmp_path / "mine"
    folder.mkdir()
    records = [{"split": "test", "image": "a.png", "width": 40, "height": 30,
                "box": [1, 2, 10, 20], "sentence": "the red square"},
               {"split": "train", "image": "b.png", "width": 40, "height": 30,
                "box": [0, 0, 5, 5], "sentence": "the blue circle"}]
    (folder / "all.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    dataset = Dataset(tmp_path, "mine", "all", format="test-jsonl")
    [sample] = dataset.split("test").samples
    assert sample.expression == "the red square" and sample.gt_box == (1, 2, 10, 20)
    assert sample.image_path == tmp_path / "images" / "a.png"
    assert dataset.expressions("train") == ["the blue circle"]
    assert dataset.annotation_files() == [folder / "all.jsonl"]
    with pytest.raises(UnknownNameError, match="unknown dataset format 'jsonl'"):
        Dataset(tmp_path, "mine", "all", format="jsonl").split("test")
    # the command line and training configs name it too
    from refground.train.config import DataConfig

    assert DataConfig(root=tmp_path, dataset="mine", split_by="all",
                      format="test-jsonl").as_dataset() == dataset
    out = tmp_path / "run"
    code, errors = run_cli(["eval", "--data", str(tmp_path), "--dataset", "mine", "--split-by",
                            "all", "--format", "test-jsonl", "--method", "oracle", "--out",
                            str(out), "--no-progress"], capsys)
    assert code == 0, errors
    assert json.loads((out / "metrics.json").read_text())["acc@0.5"] == 1.0
