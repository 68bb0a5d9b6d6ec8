"""The `refground` command end to end on a small SynthRef: synth, eval, errors, resume."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from refground.cli import app
from refground.errors import ConfigError
from tests.conftest import run_cli


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


def test_the_help_names_every_registered_proposer() -> None:
    from refground.cli import PROPOSER_NAMES
    from refground.vision.proposals import PROPOSERS

    assert sorted(PROPOSER_NAMES) == sorted(PROPOSERS.names())
    assert "owlv2" in CliRunner().invoke(app, ["eval", "--help"], terminal_width=400).output


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


def test_resume_refuses_another_runs_records(synth_root: Path, tmp_path: Path) -> None:
    """`eval --resume` must not keep oracle's records under center's name (issue 11, 3)."""
    out = tmp_path / "mix"
    oracle = run_eval(synth_root, "oracle", out, "--limit", "10")
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "oracle" and run["split"] == "test" and run["proposals"] is None
    assert run["data"] == str(synth_root.resolve())
    before = (out / "predictions.jsonl").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(synth_root, copy)
    for extra, differs in ((["--method", "center"], 'method: "oracle" -> "center"'),
                           (["--method", "oracle", "--split", "val"],
                            'split: "test" -> "val"'),
                           (["--method", "oracle", "--data", str(copy)], "data: ")):
        result = CliRunner().invoke(app, ["eval", "--data", str(synth_root), "--out", str(out),
                                          "--no-progress", "--resume", "--split", "test",
                                          *extra])
        assert isinstance(result.exception, ConfigError), result.output
        assert differs in str(result.exception), result.exception
    assert (out / "predictions.jsonl").read_bytes() == before
    assert json.loads((out / "metrics.json").read_text()) == oracle
    # the same run resumes; a fresh start (no --resume) may reuse the directory
    assert run_eval(synth_root, "oracle", out, "--resume")["n"] > 10
    center = run_eval(synth_root, "center", out)
    assert center == run_eval(synth_root, "center", tmp_path / "fresh") | {"run": center["run"]}
    assert center["acc@0.5"] < 1.0
    # records without a run.json (older runs) cannot be vouched for
    (out / "run.json").unlink()
    result = CliRunner().invoke(app, ["eval", "--data", str(synth_root), "--method", "center",
                                      "--out", str(out), "--no-progress", "--resume"])
    assert isinstance(result.exception, ConfigError)
    assert "no run.json" in str(result.exception)


def test_errors_are_one_line_and_exit_2(synth_root: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    hostile = tmp_path / "hostile"
    (hostile / "synthref").mkdir(parents=True)
    (hostile / "images").mkdir()
    (hostile / "synthref" / "instances.json").write_text(
        '{"images": [], "annotations": [], "categories": []}')
    (hostile / "synthref" / "refs(synth).p").write_bytes(
        pickle.dumps(subprocess.Popen, protocol=2))  # a global: must be refused
    # once as users run it, in a process of its own: the exit status and stderr it ends with
    command = [sys.executable, "-m", "refground", "eval", "--data", str(hostile),
               "--method", "oracle"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "refused to load" in result.stderr and "Popen" in result.stderr
    assert "Traceback" not in result.stderr

    code, stderr = run_cli(["eval", "--data", str(synth_root), "--method", "centre"], capsys)
    assert code == 2 and "Did you mean 'center'" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("method", ["regressor", "detr", "erpa"])
def test_train_then_eval_from_the_cli(method: str, synth_root: Path, tmp_path: Path,
                                      tiny_clip: Path) -> None:
    """configs/<method>.yaml, shrunk by --set overrides, trains from the CLI; the checkpoint
    evaluates through `refground eval -o checkpoint=` to the numbers the Trainer reported."""
    import yaml

    clip = tiny_clip
    shrink = {
        "regressor": {"cnn_image_size": 32, "grid": 4, "hrnet_widths": [4, 8], "clip_channels": 8,
                      "cnn_channels": 8, "fused_dim": 16, "hidden": 16, "clip": str(clip)},
        "detr": {"image_size": 32, "backbone_widths": [8, 16], "d_model": 16, "ffn": 32,
                 "queries": 4, "encoder_layers": 1, "decoder_layers": 1,
                 "text_model": str(clip)},
        "erpa": {"hidden": 16, "heads": 2, "decoder_layers": 1, "encoder_layers": 1,
                 "clip": str(clip)},
    }[method]
    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / f"{method}.yaml"
    sets = [f"options.{k}={json.dumps(v)}" for k, v in shrink.items()]
    sets += [f"data.root={synth_root}", f"out={out}", "train.epochs=1", "train.batch_size=8",
             "train.num_workers=0", "data.train_limit=32", "data.val_limit=12",
             "train.device=cpu"]
    args = ["train", "--config", str(config), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best val" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["options"]["text_model" if method == "detr" else "clip"] == str(clip)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 32 // 8
    metrics = run_eval(synth_root, method, tmp_path / "eval", "--split", "val", "--limit", "12",
                       "-o", f"checkpoint={out / 'checkpoints' / 'last'}")
    assert metrics["n"] == summary["last_metrics"]["n"] > 0
    assert metrics["miou"] == pytest.approx(summary["last_metrics"]["miou"], abs=1e-6)
    # resuming a finished run is a no-op that keeps the weights
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    # the export ships float16 weights with the record of how they were made
    exported = tmp_path / "exported"
    result = CliRunner().invoke(app, [
        "export", "--run", str(out), "--out", str(exported), "--checkpoint", "last",
        "--data", "refground synth ...", "--command", "refground train ...",
        "--eval", f"val={tmp_path / 'eval'}"])
    assert result.exit_code == 0, result.output
    record = json.loads((exported / "training.json").read_text())
    assert record["config"]["method"] == method and record["steps"] == summary["steps"]
    assert record["val_curve"][-1]["miou"] == pytest.approx(summary["last_metrics"]["miou"])
    assert record["test"]["val"]["n"] == metrics["n"] and "--dtype float16" in record["export"]
    weights = load_file(str(exported / "model.safetensors"))
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float16}
    shipped = run_eval(synth_root, method, tmp_path / "eval-exported", "--split", "val",
                       "--limit", "12", "-o", f"checkpoint={exported}")
    assert shipped["miou"] == pytest.approx(metrics["miou"], abs=0.02)


def test_demo_runs_offline_and_draws_pictures(tmp_path: Path) -> None:
    """`refground demo` (the README's main command): data, every method's metrics, pictures."""
    from PIL import Image

    from refground.demo import demo_methods

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--images", "20"])
    assert result.exit_code == 0, result.output
    for display in demo_methods():
        metrics = json.loads((tmp_path / display.split()[0] / "metrics.json").read_text())
        assert metrics["n"] > 0
    oracle = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert oracle["acc@0.5"] == 1.0
    pictures = sorted((tmp_path / "pictures").glob("*.png"))
    assert pictures and all(Image.open(p).size[0] > 0 for p in pictures)
    assert "graph-resolve on one test image" in result.output
    assert_printed_table_matches_predictions(result.output, tmp_path)


def printed_rows(output: str) -> dict[str, list[str]]:
    """The cells of each row of the rich tables in ``output``, keyed by the first cell."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if len(cells) >= 2 and cells[0]:
            rows.setdefault(cells[0], cells[1:])
    return rows


def assert_printed_table_matches_predictions(output: str, out: Path) -> None:
    """The README's claim, checked: every Acc@0.5/0.75/0.9 and mIoU `refground demo` prints is
    what its predictions.jsonl gives, with IoUs recomputed here by a plain-Python IoU against
    the boxes of instances.json (not the records' own iou or gt_box fields)."""
    from refground.demo import demo_methods
    from tests.test_boxes import py_iou

    instances = json.loads((out / "synthref-data" / "synthref" / "instances.json").read_text())
    gt = {a["id"]: [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3]] for a in instances["annotations"]}
    rows = printed_rows(output)
    for display in demo_methods():
        records = [json.loads(line) for line in
                   (out / display.split()[0] / "predictions.jsonl").read_text().splitlines()]
        ious = [py_iou(r["pred_box"], gt[r["ann_id"]]) for r in records]
        expected = [str(len(ious))] + [
            f"{100 * sum(i >= t for i in ious) / len(ious):.1f}" for t in (0.5, 0.75, 0.9)]
        expected.append(f"{100 * sum(ious) / len(ious):.1f}")
        assert rows[display] == expected, (display, rows[display], expected)


def test_export_refuses_bad_arguments_with_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --eval and a directory that is no training run are named, not traced."""
    base = ["export", "--out", str(tmp_path / "out"), "--data", "d", "--command", "c"]
    code, bad_eval = run_cli([*base, "--run", str(tmp_path), "--eval", "test"], capsys)
    assert code == 2 and "--eval takes SPLIT=DIR, got 'test'" in bad_eval
    code, no_run = run_cli([*base, "--run", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "cannot read method file" in no_run
    for stderr in (bad_eval, no_run):
        assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
