"""The REFER loader on a hand-written dataset: samples, conversions, and every kind of bad file."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest

from refground.data import Dataset
from refground.data.safe_pickle import load_plain_pickle
from refground.errors import DatasetError, UnsafePickleError
from tests.conftest import (
    MINI_ANNOTATIONS,
    MINI_CATEGORIES,
    MINI_IMAGES,
    mini_refs,
    write_mini_refer,
)


def test_one_sample_per_sentence_with_metadata(mini_refer: Path) -> None:
    split = Dataset(mini_refer, "refcocog", "umd").split("test")
    assert [s.sample_id for s in split] == ["2:200", "2:201", "2:202", "3:300"]
    tall_man = split.samples[0]
    assert tall_man.expression == "the tall man"
    # xywh [300, 40, 120, 300] -> xyxy
    assert tall_man.gt_box == (300.0, 40.0, 420.0, 340.0)
    # the real file name comes from instances.json, not the ref's suffixed file_name
    assert tall_man.image_path == mini_refer / "images" / "COCO_train2014_000000581857.jpg"
    assert (tall_man.width, tall_man.height) == (640, 480)
    assert (tall_man.image_id, tall_man.ann_id, tall_man.ref_id, tall_man.sent_id) == (
        581857, 17, 2, 200)
    assert tall_man.category_id == 1 and tall_man.category == "person"
    assert {a.ann_id for a in tall_man.annotations} == {16, 17, 18}
    assert tall_man.distractors == 1  # the other person
    assert split.samples[3].distractors == 0  # the only dog


def test_other_splits_and_unknown_split(mini_refer: Path) -> None:
    assert len(Dataset(mini_refer, "refcocog", "umd").split("train")) == 2
    val = Dataset(mini_refer, "refcocog", "umd").split("val")
    assert val.samples[0].gt_box == (0.0, 0.0, 50.5, 40.0)
    with pytest.raises(DatasetError, match="it has: test, train, val"):
        Dataset(mini_refer, "refcocog", "umd").split("testA")
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p"):
        Dataset(mini_refer, "refcocog", "google").split("val")


class _CreatesFile:
    """A hostile object: unpickling it opens (creates) a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "evil": _CreatesFile(marker)}])
    pickle.loads(payload)[0]["evil"].close()  # the payload is live: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()

    root = write_mini_refer(tmp_path / "data")
    (root / "refcocog" / "refs(umd).p").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="refused to load"):
        Dataset(root, "refcocog", "umd").split("test")
    assert not marker.exists()


def test_pickle_with_reduce_of_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned2"
    # hand-written protocol-0 pickle: os.system("touch <marker>")
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.p"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        load_plain_pickle(path)
    assert not marker.exists()


def test_plain_pickle_containers_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.p"
    data = [{"a": (1, 2.5, None, True), "b": {"x", "y"}, "c": "héllo", "d": b"raw"}]
    buffer = io.BytesIO()
    pickle.dump(data, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    assert load_plain_pickle(path) == data


def test_truncated_pickle_is_a_clear_error(mini_refer: Path) -> None:
    path = mini_refer / "refcocog" / "refs(umd).p"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetError, match="not a readable REFER pickle"):
        Dataset(mini_refer, "refcocog", "umd").split("test")


def test_missing_key_names_file_and_record(tmp_path: Path) -> None:
    refs = mini_refs()
    del refs[2]["ann_id"]
    root = write_mini_refer(tmp_path / "data", refs=refs)
    expected = r"refs\(umd\)\.p, ref #2 \(ref_id=3\): missing key 'ann_id'"
    with pytest.raises(DatasetError, match=expected):
        Dataset(root, "refcocog", "umd").split("test")
    split = Dataset(root, "refcocog", "umd").split("test", skip_invalid=True)
    assert len(split) == 3 and len(split.skipped) == 1


def test_unknown_ann_id_and_missing_image(tmp_path: Path) -> None:
    refs = mini_refs()
    refs[2]["ann_id"] = 12345
    root = write_mini_refer(tmp_path / "data", refs=refs)
    with pytest.raises(DatasetError, match=r"ann_id 12345 is not in instances\.json"):
        Dataset(root, "refcocog", "umd").split("test")

    root = write_mini_refer(tmp_path / "data2")
    (root / "images" / "COCO_train2014_000000000042.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image file missing: .*000000000042\.jpg"):
        Dataset(root, "refcocog", "umd").split("val")
    assert len(Dataset(root, "refcocog", "umd").split("val", skip_invalid=True)) == 0


def test_empty_sentence_is_invalid(tmp_path: Path) -> None:
    refs = mini_refs()
    refs[2]["sentences"][0]["sent"] = "   "
    root = write_mini_refer(tmp_path / "data", refs=refs)
    with pytest.raises(DatasetError, match="sentence 300 is empty"):
        Dataset(root, "refcocog", "umd").split("test")


def test_malformed_instances(tmp_path: Path) -> None:
    root = write_mini_refer(tmp_path / "data")
    (root / "refcocog" / "instances.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances\.json: not valid JSON"):
        Dataset(root, "refcocog", "umd").split("test")

    bad = [dict(a) for a in MINI_ANNOTATIONS]
    bad[0]["bbox"] = [10, 10, -5, 3]
    instances = {"images": MINI_IMAGES, "annotations": bad, "categories": MINI_CATEGORIES}
    root = write_mini_refer(tmp_path / "data2", instances=instances)
    with pytest.raises(DatasetError, match=r"annotations\[0\] is malformed.*negative width"):
        Dataset(root, "refcocog", "umd").split("test")
    # skipping the bad annotation makes ref 1 (which uses it) invalid in turn, not test refs
    assert len(Dataset(root, "refcocog", "umd").split("test", skip_invalid=True)) == 4

    root = write_mini_refer(tmp_path / "data3", instances={"images": []})
    with pytest.raises(DatasetError, match="missing list 'annotations'"):
        Dataset(root, "refcocog", "umd").split("test")
    json.dumps(instances)  # the fixture itself stays serialisable


def test_missing_directories(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset directory not found"):
        Dataset(tmp_path, "refcoco", "unc").split("val")
    root = write_mini_refer(tmp_path / "data")
    with pytest.raises(DatasetError, match="image directory not found"):
        Dataset(root, "refcocog", "umd", images_dir=tmp_path / "nope").split("test")
