"""Hostile and corrupt dataset files: a valid split or a DatasetError, never anything else.

Findings of a security review (issue 11): a 615-byte pickle grew to 64 MiB through nested
``_codecs.encode(x, 'hex')``; ``MemoryError``/``LookupError`` escaped raw; ``file_name`` could
point outside the image folder. The fuzz loop mutates a real SynthRef split's files and checks
that every outcome is one of the two allowed, within a bounded amount of memory.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import random
import resource
import shutil
import tracemalloc
from pathlib import Path

import pytest

from refground.data import Dataset
from refground.data.safe_pickle import load_plain_pickle
from refground.data.synth import generate_synthref, synthref_dataset
from refground.errors import DatasetError, UnsafePickleError
from tests.conftest import MINI_IMAGES, write_mini_refer


def nested_encode_pickle(levels: int, codec: str = "hex") -> bytes:
    """``_codecs.encode(... encode("AAAA", codec) ..., codec)``: each level doubles with hex."""
    body = b"X\x04\x00\x00\x00AAAA"
    for _ in range(levels):
        body = b"c_codecs\nencode\n(" + body + b"X" + len(codec).to_bytes(4, "little") + \
            codec.encode() + b"tR"
    return b"\x80\x02" + body + b"."


def test_nested_hex_encode_is_refused_before_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "refs(umd).p"
    path.write_bytes(nested_encode_pickle(40))
    assert path.stat().st_size < 1200
    tracemalloc.start()
    try:
        with pytest.raises(UnsafePickleError, match=r"refused _codecs\.encode\(str, 'hex'\)"):
            load_plain_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize("codec", ["base64", "zlib", "no-such-codec", "rot13"])
def test_other_codecs_are_refused(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "x.p"
    path.write_bytes(nested_encode_pickle(1, codec))
    with pytest.raises(UnsafePickleError, match="only encode text as latin1"):
        load_plain_pickle(path)


def test_python3_protocol2_bytes_still_load(tmp_path: Path) -> None:
    """What the one admitted global exists for: ``bytes`` pickled by Python 3 at protocol 2."""
    data = [{"raw": b"\x00\xffbytes", "text": "héllo", "n": [1, 2.5, None]}]
    path = tmp_path / "ok.p"
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert b"_codecs" in path.read_bytes()
    assert load_plain_pickle(path) == data


def test_latin1_output_is_bounded_by_the_file_size(tmp_path: Path) -> None:
    """Many references to one memoised string, each encoded again: output beyond 4x the file
    is refused (memo references cost one byte each, so this is the only amplifier left)."""
    text = "A" * 10_000
    stream = io.BytesIO()
    stream.write(b"\x80\x02]q\x00(")  # empty list, memo 0, mark
    stream.write(b"X" + len(text).to_bytes(4, "little") + text.encode() + b"q\x01")
    stream.write(b"c_codecs\nencode\nq\x02")  # memo 2: the encode global
    for _ in range(200):  # encode(memo[1], 'latin1') 200 times: 2 MB from a 12 KB file
        stream.write(b"h\x02h\x01X\x06\x00\x00\x00latin1\x86R")
    stream.write(b"e.")
    path = tmp_path / "amp.p"
    path.write_bytes(stream.getvalue())
    with pytest.raises(UnsafePickleError, match="exceed 4x the file's size"):
        load_plain_pickle(path)


@pytest.mark.parametrize("payload", [
    b"\x80\x04\x8e" + (2**50).to_bytes(8, "little") + b"abc.",  # BINBYTES8 of a petabyte
    b"\x80\x04\x95" + (2**50).to_bytes(8, "little") + b"abc.",  # a petabyte FRAME
    b"\x80\x02c_codecs\nlookup\n.",                              # LookupError territory
    b"\x80\x02X\x01\x00\x00\x00\xff.",                           # invalid UTF-8
    b"\x80\x02}q\x00]q\x01s.",                                  # SETITEMS without a mark
    b"\x80\x04(]\x91.",                                             # a frozenset of a list
    b"",
])
def test_corrupt_bytes_are_dataset_errors(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "bad.p"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=r"bad\.p"):
        load_plain_pickle(path)


@pytest.mark.parametrize("file_name", [
    "../../../etc/x.png", "/etc/passwd", "sub/../../x.png", "..\\..\\x.png",
    "C:\\Windows\\x.png", "\\\\server\\share\\x.png", "a\0b.png", "",
])
def test_image_paths_outside_the_image_folder_are_refused(tmp_path: Path,
                                                          file_name: str) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "x.png"
    shutil.copy(write_mini_refer(root) / "images" / MINI_IMAGES[0]["file_name"], outside)
    images = [dict(MINI_IMAGES[0], file_name=file_name), MINI_IMAGES[1]]
    instances = json.loads((root / "refcocog" / "instances.json").read_text())
    instances["images"] = images
    write_mini_refer(root, instances=instances)
    with pytest.raises(DatasetError, match=r"images\[0\] is malformed.*file_name"):
        Dataset(root, "refcocog", "umd").split("test")
    split = Dataset(root, "refcocog", "umd").split("test", skip_invalid=True)
    assert {s.image_id for s in split.samples} <= {42}
    assert any("file_name" in problem for problem in split.skipped)
    assert all(outside != s.image_path.resolve() for s in split.samples)


def test_nested_image_folders_still_load(tmp_path: Path) -> None:
    root = write_mini_refer(tmp_path / "data")
    (root / "images" / "train2014").mkdir()
    name = MINI_IMAGES[0]["file_name"]
    shutil.move(root / "images" / name, root / "images" / "train2014" / name)
    instances = json.loads((root / "refcocog" / "instances.json").read_text())
    instances["images"][0]["file_name"] = f"train2014/{name}"
    write_mini_refer(root, instances=instances)
    split = Dataset(root, "refcocog", "umd").split("test")
    assert {s.image_path.parent.name for s in split.samples} == {"train2014"}


# --- fuzzing ---------------------------------------------------------------------------------

def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level edits: flip, overwrite, insert, delete, duplicate or cut."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buffer:
            break
        at = rng.randrange(len(buffer))
        kind = rng.randrange(6)
        if kind == 0:
            buffer[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buffer[at] = rng.randrange(256)
        elif kind == 2:
            buffer[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3:
            del buffer[at:at + rng.randint(1, 8)]
        elif kind == 4:
            end = min(len(buffer), at + rng.randint(1, 64))
            buffer[at:at] = buffer[at:end]
        else:
            del buffer[at:]
    return bytes(buffer)


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    """Type-level edits of instances.json values (mostly still valid JSON), or byte edits."""
    if rng.random() < 0.3:
        return mutate(data, rng)
    document = json.loads(data)
    odd_values = [None, -1, 0, 1e308, float("inf"), "x", "../../x.png", "/etc/passwd", [],
                  {}, [1, 2], True, 2**70, {"a": 1}, "", [[[[]]]]]
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(["images", "annotations", "categories"])
        if not document[key]:
            continue
        record = rng.choice(document[key])
        field = rng.choice(sorted(record))
        record[field] = rng.choice(odd_values)
    text = json.dumps(document)
    return text.encode()


def fuzz_dataset_file(source: Path, work: Path, target: str, cases: int,
                      seed: int) -> dict[str, int]:
    """Load ``cases`` mutations of ``source/synthref/target``; count splits and errors.

    Runs in a fresh process (see the test) so that its peak resident memory, reported as
    ``rss_growth_kib`` beyond the first clean load, belongs to this loop alone.
    """
    root = work / "data"
    shutil.copytree(source, root)
    path = root / "synthref" / target
    original = path.read_bytes()
    edit = mutate_json if target.endswith(".json") else mutate
    rng = random.Random(seed)
    synthref_dataset(root).split("train")  # imports and caches warmed up
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"split": 0, "error": 0}
    for _ in range(cases):
        path.write_bytes(edit(original, rng))
        try:
            for split in ("train", "test"):
                synthref_dataset(root).split(split, skip_invalid=rng.random() < 0.5)
            outcomes["split"] += 1
        except DatasetError as error:
            assert str(error), "a DatasetError must say what is wrong"
            outcomes["error"] += 1
    outcomes["rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    outcomes["file_bytes"] = len(original)
    return outcomes


@pytest.fixture(scope="module")
def small_synthref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthref(root, seed=5, num_images=6)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("target", ["refs(synth).p", "instances.json"])
def test_fuzzed_dataset_files_give_a_split_or_a_dataset_error(
        small_synthref: Path, tmp_path: Path, target: str) -> None:
    """2,000 seeded mutations of one real file each: every load returns a split or raises
    DatasetError (any other exception fails the worker, and so the test), and the loop's
    resident memory grows by less than 32 MiB (the files are about 10 KB; before the fix a
    615-byte pickle asked for 64 MiB)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        outcomes = pool.apply(fuzz_dataset_file, (small_synthref, tmp_path, target, 2000, 11))
    assert outcomes["split"] > 50 and outcomes["error"] > 50, outcomes
    assert outcomes["rss_growth_kib"] < 32 * 1024, outcomes
