"""Pictures: boxes land on the right pixels, contact sheets come in the right number and order,
reports repeat the metrics files' numbers, curves are written, errors name the bad file, and
`refground predict` prints JSON and draws. Pixels are checked against positions worked out here,
not against the drawing code's own geometry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from refground.cli import app
from refground.defaults import DEFAULT_METHOD
from refground.errors import (
    ConfigError,
    DatasetError,
    ImageError,
    InputError,
    MissingDependencyError,
)
from refground.types import Candidate, Prediction
from refground.viz.curves import read_run_log, training_curves
from refground.viz.draw import (
    CAPTION_BACKGROUND,
    CHOSEN,
    GT,
    HALO,
    PREDICTED,
    RUNNER_UP,
    draw_gt_vs_pred,
    draw_prediction,
)
from refground.viz.report import load_metrics, load_runs, markdown_report
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

BACKGROUND = (90, 90, 90)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(app, ["synth", "--out", str(root), "--seed", "3",
                                      "--images", "10"])
    assert result.exit_code == 0, result.output
    return root


def grey(width: int = 240, height: int = 180) -> np.ndarray:
    return np.full((height, width, 3), BACKGROUND, dtype=np.uint8)


def px(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(image.getpixel((x, y)))


def run_of(image: Image.Image, x: int, y: int, dx: int, colour: tuple[int, ...]) -> int:
    """How many pixels from (x, y) stepping by dx have ``colour``."""
    count = 0
    while 0 <= x < image.width and px(image, x, y) == colour:
        count, x = count + 1, x + dx
    return count


# --- draw -------------------------------------------------------------------------------------

def test_chosen_box_is_framed_thick_just_outside_its_edges() -> None:
    box = (60.0, 50.0, 120.0, 110.0)
    prediction = Prediction("0", box, 0.87, (Candidate(box, 0.87),))
    picture = draw_prediction(grey(), prediction, "the grey square")
    mid_y, mid_x = 80, 90
    # left edge: columns 59, 58, ... are the frame, column 60 (inside the box) is untouched
    assert px(picture, 59, mid_y) == CHOSEN
    thick = run_of(picture, 59, mid_y, -1, CHOSEN)
    assert thick >= 3
    assert px(picture, 59 - thick, mid_y) == HALO  # the dark halo, then the background
    assert px(picture, 59 - thick - 1, mid_y) == BACKGROUND
    assert px(picture, 60, mid_y) == BACKGROUND and px(picture, 90, mid_y) == BACKGROUND
    # right edge: the box covers columns 60..119, the frame starts at 120
    assert px(picture, 119, mid_y) == BACKGROUND
    assert run_of(picture, 120, mid_y, 1, CHOSEN) == thick
    # top and bottom edges, same width
    assert px(picture, mid_x, 49) == CHOSEN and px(picture, mid_x, 50) == BACKGROUND
    assert px(picture, mid_x, 110) == CHOSEN and px(picture, mid_x, 109) == BACKGROUND
    assert px(picture, mid_x, 110 + thick - 1) == CHOSEN
    assert px(picture, mid_x, 110 + thick + 1) == BACKGROUND
    # the caption band sits under the unchanged image area
    assert picture.width == 240 and picture.height > 180
    band = np.asarray(picture)[180:]
    assert (band == CAPTION_BACKGROUND).all(-1).mean() > 0.5
    assert (band.min(-1) > 200).any()  # white text in it


def test_runner_ups_are_thin_faded_and_limited() -> None:
    chosen = (20.0, 20.0, 60.0, 60.0)
    others = [(100.0, 20.0, 140.0, 60.0), (170.0, 20.0, 210.0, 60.0),
              (20.0, 100.0, 60.0, 140.0), (100.0, 100.0, 140.0, 140.0)]
    candidates = (Candidate(chosen, 0.9), *(Candidate(b, 0.5 - 0.1 * i)
                                            for i, b in enumerate(others)))
    picture = draw_prediction(grey(), Prediction("0", chosen, 0.9, candidates), "x",
                              runner_ups=3)
    chosen_thick = run_of(picture, 19, 40, -1, CHOSEN)
    strengths = []
    for x0, y0, _, _ in others[:3]:
        edge = px(picture, int(x0) - 1, int(y0) + 20)  # just left of the box
        # a blend of the background towards the runner-up colour, not the colour itself
        assert edge != BACKGROUND and edge != RUNNER_UP
        alpha = (edge[2] - BACKGROUND[2]) / (RUNNER_UP[2] - BACKGROUND[2])
        assert 0.1 < alpha < 0.95
        for channel in range(3):
            expected = BACKGROUND[channel] + alpha * (RUNNER_UP[channel] - BACKGROUND[channel])
            assert abs(edge[channel] - expected) <= 2
        assert run_of(picture, int(x0) - 1, int(y0) + 20, -1, edge) < chosen_thick  # thinner
        assert px(picture, int(x0), int(y0) + 20) == BACKGROUND
        strengths.append(alpha)
    assert strengths == sorted(strengths, reverse=True) and len(set(strengths)) == 3
    x0, y0, _, _ = others[3]  # the fourth runner-up is not drawn
    assert px(picture, int(x0) - 1, int(y0) + 20) == BACKGROUND


def test_a_long_expression_wraps_into_a_taller_band() -> None:
    prediction = Prediction("0", (10.0, 10.0, 50.0, 50.0), 0.5)
    short = draw_prediction(grey(), prediction, "the cup")
    long = draw_prediction(grey(), prediction, "the small red cup " * 12)
    assert long.width == short.width == 240 and long.height > short.height + 20


def test_gt_and_prediction_are_both_visible_when_they_coincide() -> None:
    box = (40.0, 40.0, 100.0, 100.0)
    source = Image.fromarray(grey())
    picture = draw_gt_vs_pred(source, box, box, "IoU 1.00")
    assert px(picture, 39, 70) == GT and px(picture, 40, 70) == PREDICTED
    assert px(picture, 99, 70) == PREDICTED and px(picture, 100, 70) == GT
    assert px(picture, 70, 70) == BACKGROUND
    assert px(source, 39, 70) == BACKGROUND  # the caller's image is not drawn on


# --- contact sheets -------------------------------------------------------------------------

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200),
           (30, 200, 200), (240, 140, 20)]
IOUS = [0.7, 0.05, 0.9, 0.3, 0.55, 0.0, 0.8]


def write_predictions(folder: Path) -> Path:
    """Seven records, each on its own solid-colour 64x48 image, IoUs out of order."""
    lines = []
    for index, (colour, iou) in enumerate(zip(COLOURS, IOUS, strict=True)):
        path = folder / f"img{index}.png"
        Image.new("RGB", (64, 48), colour).save(path)
        lines.append(json.dumps({
            "sample_id": f"s{index}", "expression": f"thing number {index}",
            "pred_box": [2, 2, 10, 10], "score": 0.5, "gt_box": [4, 2, 12, 10], "iou": iou,
            "image_path": str(path), "expression_type": "attribute"}))
    predictions = folder / "predictions.jsonl"
    predictions.write_text("\n".join(lines) + "\n")
    return predictions


def tile_colours(sheet: Path) -> list[tuple[int, ...]]:
    """Centre colours of the two tiles of a one-row sheet (64-pixel tiles, 8-pixel gaps,
    a 32-pixel header)."""
    image = Image.open(sheet).convert("RGB")
    return [px(image, 8 + 32, 32 + 30), px(image, 8 + 64 + 8 + 32, 32 + 30)]


def test_viz_writes_sheets_worst_first_then_best_first(tmp_path: Path) -> None:
    predictions = write_predictions(tmp_path)
    out = tmp_path / "sheets"
    args = ["viz", "--predictions", str(predictions), "--out", str(out), "--per-page", "2",
            "--tile-size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sheets = sorted(out.glob("*.png"))
    assert [p.name for p in sheets] == [f"sheet-00{i}.png" for i in range(1, 5)]  # ceil(7/2)
    seen = [c for sheet in sheets for c in tile_colours(sheet)]
    worst_first = [COLOURS[i] for i in sorted(range(7), key=lambda i: IOUS[i])]
    assert seen[:7] == worst_first and seen[7] not in COLOURS  # the last cell is empty

    result = CliRunner().invoke(app, [*args, "--best-first", "--limit", "3"])
    assert result.exit_code == 0, result.output
    sheets = sorted(out.glob("*.png"))
    assert len(sheets) == 2  # the two stale sheets of the first call are gone
    seen = [c for sheet in sheets for c in tile_colours(sheet)]
    assert seen[:3] == [COLOURS[2], COLOURS[6], COLOURS[0]]  # IoU 0.9, 0.8, 0.7


def test_viz_explains_a_missing_image(tmp_path: Path) -> None:
    predictions = write_predictions(tmp_path)
    (tmp_path / "img5.png").unlink()
    result = CliRunner().invoke(app, ["viz", "--predictions", str(predictions), "--out",
                                      str(tmp_path / "sheets")])
    assert isinstance(result.exception, ImageError)
    assert "image of sample s5 not found" in str(result.exception)
    assert "--data ROOT" in str(result.exception)
    assert not (tmp_path / "sheets").exists()  # checked before anything was drawn


def test_viz_takes_images_from_the_dataset_when_paths_are_stale(synth_root: Path,
                                                                tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "--data", str(synth_root), "--method", "largest",
                                      "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    for record in records:  # as if the run was copied from another machine
        record["image_path"] = "/elsewhere/" + Path(record["image_path"]).name
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["viz", "--predictions", str(run / "predictions.jsonl"), "--out", str(tmp_path / "v")]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ImageError) and "/elsewhere/" in str(result.exception)
    # dataset, split-by and split come from the run's metrics.json
    result = CliRunner().invoke(app, [*args, "--data", str(synth_root), "--per-page", "4",
                                      "--tile-size", "96"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "v").glob("sheet-*.png"))) == -(-len(records) // 4)
    result = CliRunner().invoke(app, [*args, "--data", str(synth_root), "--split", "val"])
    assert isinstance(result.exception, DatasetError)
    assert "is not in the dataset split" in str(result.exception)


# --- report -----------------------------------------------------------------------------------

RUN_A = {"n": 120, "acc@0.5": 0.61345, "acc@0.75": 0.402, "acc@0.9": 0.1, "miou": 0.5567,
         "fallbacks": 0,
         "by_type": {"attribute": {"n": 70, "acc@0.5": 0.7, "acc@0.75": 0.5, "acc@0.9": 0.2,
                                   "miou": 0.66},
                     "relation": {"n": 50, "acc@0.5": 0.48, "acc@0.75": 0.3, "acc@0.9": 0.0,
                                  "miou": 0.41}},
         "run": {"method": "crop-rank"}}
RUN_B = {"n": 120, "acc@0.5": 0.725, "acc@0.75": 0.5, "acc@0.9": 0.25, "miou": 0.6312,
         "by_type": {"attribute": {"n": 70, "acc@0.5": 0.8143, "acc@0.75": 0.6, "acc@0.9": 0.3,
                                   "miou": 0.7}}}


def write_runs(tmp_path: Path) -> list[Path]:
    paths = []
    for name, metrics in (("crop-rank", RUN_A), ("visual-prompt", RUN_B)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "metrics.json")
        paths[-1].write_text(json.dumps(metrics))
    return paths


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the table under ``heading`` (or the first table), by first cell."""
    lines = markdown.splitlines()
    start = lines.index(heading) if heading else 0
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif rows and not line.startswith("|"):
            break
    return rows


def test_report_repeats_the_metrics_numbers(tmp_path: Path) -> None:
    paths = write_runs(tmp_path)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--metrics", str(paths[0]), str(paths[1]),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    headline = table_rows(markdown, "")
    for name, metrics in (("crop-rank", RUN_A), ("visual-prompt", RUN_B)):
        assert headline[name] == [str(metrics["n"])] + [
            f"{100 * metrics[k]:.1f}" for k in ("acc@0.5", "acc@0.75", "acc@0.9", "miou")]
    assert "| visual-prompt | 120 | **72.5** |" in markdown  # the better run in bold
    by_type = table_rows(markdown, "## Acc@0.5 by expression type")
    assert by_type["attribute (n=70)"] == ["70.0", "81.4"]
    assert by_type["relation (n=50)"] == ["48.0", "-"]  # run B has no relation samples
    assert table_rows(markdown, "## mIoU by expression type")["relation (n=50)"] == ["41.0",
                                                                                     "-"]
    assert "![by_type](by_type.png)" in markdown
    for chart in ("overall.png", "by_type.png"):
        with Image.open(out / chart) as image:
            assert image.format == "PNG" and image.width > 300
    assert table_rows(result.stdout, "") == headline  # the same table is printed


def test_report_names_a_malformed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_runs(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"n": 3, "acc@0.5": ')
    with pytest.raises(InputError, match=r"broken\.json: not valid JSON"):
        load_runs([paths[0], broken])
    broken.write_text(json.dumps({**RUN_A, "acc@0.75": "high"}))
    with pytest.raises(InputError, match=r"broken\.json: acc@0\.75 must be a number"):
        load_metrics(broken)
    broken.write_text(json.dumps({k: v for k, v in RUN_A.items() if k != "miou"}))
    with pytest.raises(InputError, match=r"broken\.json: miou is missing"):
        load_metrics(broken)
    bad_group = {**RUN_A, "by_type": {"relation": {"n": 3}}}
    broken.write_text(json.dumps(bad_group))
    with pytest.raises(InputError, match=r"by_type\.relation\.acc@0\.5 is missing"):
        load_metrics(broken)
    with pytest.raises(InputError, match="2 names for 1 metrics files"):
        load_runs([paths[0]], ["a", "b"])
    assert [r.name for r in load_runs(paths, ["A", "B"])] == ["A", "B"]
    assert "| A | 120 |" in markdown_report(load_runs(paths, ["A", "B"]))
    # from the shell: one line naming the file (brackets and all: not taken for markup),
    # exit status 2, no traceback
    bracketed = tmp_path / "run[best]" / "metrics.json"
    bracketed.parent.mkdir()
    bracketed.write_text("[1, 2]")
    code, stderr = run_cli(["report", str(bracketed)], capsys)
    assert code == 2, stderr
    assert f"{bracketed}: the file must be a JSON object" in stderr
    assert "Traceback" not in stderr


# --- curves -----------------------------------------------------------------------------------

def write_log(run: Path, lines: list[str]) -> None:
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text("\n".join(lines))


def test_curves_png_from_a_run_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lines = [json.dumps({"kind": "train", "step": s, "loss": 2.0 / s, "lr": 1e-3 * s / 100,
                         "epoch": 0}) for s in range(10, 101, 10)]
    lines.insert(5, json.dumps({"kind": "val", "step": 50, "acc@0.5": 0.4, "miou": 0.3}))
    lines.append(json.dumps({"kind": "val", "step": 100, "acc@0.5": 0.55, "miou": 0.4}))
    lines.append('{"kind": "train", "step": 110, "lo')  # still being written
    write_log(run, lines)
    result = CliRunner().invoke(app, ["curves", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "10 train and 2 val points" in result.output
    with Image.open(run / "curves.png") as image:
        assert image.format == "PNG" and image.width > 2 * image.height
    written, curves = training_curves(run, tmp_path / "elsewhere" / "c.png")
    assert written.is_file() and curves.val == ((50, 0.4), (100, 0.55))


def test_curves_name_a_malformed_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_log(run, [json.dumps({"kind": "train", "step": 1, "loss": 1.0, "lr": 0.1}),
                    "{not json", json.dumps({"kind": "train", "step": 2, "loss": 0.5}), ""])
    with pytest.raises(InputError, match=r"metrics\.jsonl:2: not a JSON record"):
        read_run_log(run / "metrics.jsonl")
    write_log(run, ['{"kind": "eval", "step": 1}', ""])
    result = CliRunner().invoke(app, ["curves", "--run", str(run)])
    assert isinstance(result.exception, InputError)
    assert "metrics.jsonl:1: a record needs kind 'train' or 'val'" in str(result.exception)
    result = CliRunner().invoke(app, ["curves", "--run", str(tmp_path / "nothing")])
    assert isinstance(result.exception, InputError) and "not found" in str(result.exception)


# --- predict ----------------------------------------------------------------------------------

def test_cli_predict_prints_json_and_draws(synth_root: Path, tmp_path: Path) -> None:
    instances = json.loads((synth_root / "synthref" / "instances.json").read_text())
    image_info = instances["images"][0]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in
             (a["bbox"] for a in instances["annotations"] if a["image_id"] == image_info["id"])]
    image = synth_root / "images" / image_info["file_name"]
    picture = tmp_path / "out" / "vis.png"
    result = CliRunner().invoke(app, ["predict", "--image", str(image), "--text",
                                      "the  largest shape", "--boxes", json.dumps(boxes),
                                      "--out", str(picture)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    x0, y0, x1, y1 = answer["box"]
    assert 0 <= x0 <= x1 <= image_info["width"] and 0 <= y0 <= y1 <= image_info["height"]
    assert answer["box"] in boxes and answer["fallback"] is None
    assert answer["text"] == "the largest shape" and answer["method"] == DEFAULT_METHOD
    assert len(answer["candidates"]) == len(boxes)
    assert answer["candidates"][0]["box"] == answer["box"]
    assert answer["score"] == answer["candidates"][0]["score"]
    with Image.open(picture) as drawn:
        assert drawn.width == image_info["width"] and drawn.height > image_info["height"]
        # the chosen box's frame, just left of the box, halfway down
        assert drawn.convert("RGB").getpixel((int(x0) - 1, int((y0 + y1) / 2))) == CHOSEN

    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({"boxes": boxes}))
    again = CliRunner().invoke(app, ["predict", "--image", str(image), "--text",
                                     "the largest shape", "--boxes-file", str(boxes_file)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["box"] == answer["box"]


@pytest.mark.parametrize(("extra", "error", "message"), [
    (["--boxes", "[[0, 0, 10"], InputError, "--boxes is not JSON"),
    (["--boxes", "[[0, 0, 10, 10]]", "--boxes-file", "b.json"], ConfigError,
     "give --boxes or --boxes-file, not both"),
    (["--boxes-file", "/nonexistent/boxes.json"], InputError, "boxes file not found"),
    (["--boxes", '{"x": 1}'], InputError, "must hold a JSON list"),
])
def test_cli_predict_input_errors(synth_root: Path, extra: list[str], error: type,
                                  message: str) -> None:
    image = next((synth_root / "images").glob("*.png"))
    result = CliRunner().invoke(app, ["predict", "--image", str(image), "--text", "a cup",
                                      *extra])
    assert isinstance(result.exception, error) and message in str(result.exception)


def test_cli_predict_missing_image_fails_before_loading_a_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", "--image", str(tmp_path / "no.png"), "--text",
                                      "a cup", "--method", "no-such-method"])
    assert isinstance(result.exception, ImageError)
    assert "image not found" in str(result.exception)


# --- matplotlib stays optional --------------------------------------------------------------

def test_matplotlib_is_imported_only_to_draw_a_chart(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    code = ("import sys, refground.cli, refground.viz.report, refground.viz.curves, "
            "refground.viz.grid; print('matplotlib' in sys.modules)")
    shell = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    assert shell.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    write_log(tmp_path, [json.dumps({"kind": "train", "step": 1, "loss": 1.0, "lr": 0.1}), ""])
    with pytest.raises(MissingDependencyError, match=r"pip install 'refground\[viz\]'"):
        training_curves(tmp_path)
