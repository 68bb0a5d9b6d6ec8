"""`-o key=value` and `--set key=value` share one parser: the same values, the same errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from refground.errors import ConfigError
from refground.overrides import parse_assignment, parse_assignments, parse_value
from tests.conftest import run_cli


@pytest.mark.parametrize(("raw", "value"), [
    ("3", 3), ("-2", -2), ("0.5", 0.5), ("3e-4", 3e-4), ("1E5", 1e5), ("010", 10), ("0x10", 16),
    ("true", True), ("False", False), ("null", None), ("", None), ("~", None),
    ("[1, 2]", [1, 2]), ("[255,0,0]", [255, 0, 0]), ("[blur, blur-gray]", ["blur", "blur-gray"]),
    ("{debias: 0}", {"debias": 0}), ('{"debias": 0, "aggregate": "mean"}',
                                     {"debias": 0, "aggregate": "mean"}),
    ("{}", {}), ("[yes, 010, off]", ["yes", 10, "off"]),
    ("'3'", "3"), ('"true"', "true"), ("[2024-01-01, <<]", ["2024-01-01", "<<"]),
    # YAML 1.1's booleans are words here; text is kept exactly as written
    ("yes", "yes"), ("off", "off"), ("cuda:0", "cuda:0"), ("This is ", "This is "),
    ("{} in the picture", "{} in the picture"), ("a photo of {}", "a photo of {}"),
    ("a: b", "a: b"), ("#1 # not a comment", "#1 # not a comment"), ("[1, 2", "[1, 2"),
    ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
])
def test_values_read_as_yaml_core_scalars_lists_and_mappings(raw: str, value: object) -> None:
    parsed = parse_value(raw)
    assert parsed == value and type(parsed) is type(value)


def test_special_floats() -> None:
    assert parse_value(".inf") == math.inf and parse_value("-.inf") == -math.inf
    assert math.isnan(parse_value(".nan"))


def test_pairs_split_at_the_first_equals_sign() -> None:
    assert parse_assignment("options.template=a = {}", "--set") == ("options.template", "a = {}")
    assert parse_assignments(["a=1", "b=[x]", "a=2"], "-o") == {"a": 2, "b": ["x"]}
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match=rf"^-o takes key=value, got '{bad}'$"):
            parse_assignment(bad, "-o")


def test_o_and_set_refuse_a_malformed_pair_alike(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    code, predict = run_cli(["predict", "--image", str(image), "--text", "a dot",
                             "--method", "center", "-o", "novalue"], capsys)
    assert code == 2 and "-o takes key=value, got 'novalue'" in predict
    code, train = run_cli(["train", "--config", str(tmp_path / "none.yaml"),
                           "--set", "novalue"], capsys)
    assert code == 2 and "--set takes key=value, got 'novalue'" in train
