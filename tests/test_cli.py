"""The `refground` command end to end on a small SynthRef: synth, eval, errors, resume."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refground.cli import app


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(app, ["synth", "--out", str(root), "--seed", "3",
                                      "--images", "30"])
    assert result.exit_code == 0, result.output
    return root


def run_eval(root: Path, method: str, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["eval", "--data", str(root), "--method", method,
                                      "--split", "test", "--out", str(out), "--no-progress",
                                      *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_oracle_is_perfect_and_heuristics_are_lower(synth_root: Path, tmp_path: Path) -> None:
    oracle = run_eval(synth_root, "oracle", tmp_path / "oracle")
    assert oracle["acc@0.5"] == 1.0 and oracle["acc@0.9"] == 1.0 and oracle["n"] > 0
    assert set(oracle["by_type"]) <= {"attribute", "position", "relation", "comparative",
                                      "ordinal"}
    for name in ("center", "largest"):
        metrics = run_eval(synth_root, name, tmp_path / name)
        assert 0.0 < metrics["acc@0.5"] < 1.0
        records = [json.loads(line) for line in
                   (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        assert len(records) == metrics["n"]
        hits = sum(r["iou"] >= 0.5 for r in records)
        assert metrics["acc@0.5"] == pytest.approx(hits / len(records))


def test_limit_and_resume(synth_root: Path, tmp_path: Path) -> None:
    first = run_eval(synth_root, "largest", tmp_path / "run", "--limit", "5")
    assert first["n"] == 5
    resumed = run_eval(synth_root, "largest", tmp_path / "run", "--resume")
    fresh = run_eval(synth_root, "largest", tmp_path / "fresh")
    assert resumed["acc@0.5"] == fresh["acc@0.5"] and resumed["n"] == fresh["n"]


def test_errors_are_one_line_and_exit_2(synth_root: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    (hostile / "synthref").mkdir(parents=True)
    (hostile / "images").mkdir()
    (hostile / "synthref" / "instances.json").write_text(
        '{"images": [], "annotations": [], "categories": []}')
    (hostile / "synthref" / "refs(synth).p").write_bytes(
        pickle.dumps(subprocess.Popen, protocol=2))  # a global: must be refused
    command = [sys.executable, "-m", "refground", "eval", "--data", str(hostile),
               "--method", "oracle"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "refused to load" in result.stderr and "Popen" in result.stderr
    assert "Traceback" not in result.stderr

    unknown = subprocess.run([sys.executable, "-m", "refground", "eval", "--data",
                              str(synth_root), "--method", "centre"],
                             capture_output=True, text=True, check=False)
    assert unknown.returncode == 2 and "Did you mean 'center'" in unknown.stderr
