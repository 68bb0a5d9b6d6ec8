"""The offline CenterNet detector: targets, decoding, files, training, resume, proposing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from refground.api import Grounder
from refground.data.synth import generate_synthref
from refground.errors import ConfigError, InputError, ModelLoadError
from refground.evaluate.proposal_recall import referent_recall
from refground.train.detector import DetectorTrainer, export_detector, load_detector_config
from refground.vision.centernet import (
    CenterNet,
    CenterNetConfig,
    build_targets,
    centernet_loss,
    decode,
    load_centernet,
    save_centernet,
)
from refground.vision.proposals import build_proposer

TINY = CenterNetConfig(image_size=64, widths=(8, 8, 16, 16, 16), output_level=2, head_width=16)


def test_targets_put_a_unit_peak_and_the_regression_at_each_centre_cell() -> None:
    box = torch.tensor([[0.05, 0.20, 0.95, 0.30]])  # centre (0.5, 0.25), 0.9 x 0.1
    targets = build_targets([box], TINY)  # 8 x 8 grid
    cx, cy = 0.5 * 8, 0.25 * 8
    cell = (int(cy), int(cx))
    assert targets.heatmap[0, 0][cell] == 1.0
    assert int((targets.heatmap == 1.0).sum()) == 1
    assert targets.index[0, 0] == cell[0] * 8 + cell[1]
    assert targets.log_size[0, 0].tolist() == pytest.approx([math.log(0.9), math.log(0.1)])
    assert targets.offset[0, 0].tolist() == pytest.approx([cx - cell[1], cy - cell[0]])
    # the Gaussian is wider along the box's longer side
    row, column = targets.heatmap[0, 0, cell[0]], targets.heatmap[0, 0, :, cell[1]]
    assert row[cell[1] + 1] > column[cell[0] + 1]


def perfect_outputs(boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network outputs that are exactly the targets of ``boxes`` (logits of the heatmap)."""
    targets = build_targets([boxes], TINY)
    grid = TINY.grid
    size = torch.zeros(1, 2, grid, grid)
    offset = torch.zeros(1, 2, grid, grid)
    for slot in range(len(boxes)):
        row, column = divmod(int(targets.index[0, slot]), grid)
        size[0, :, row, column] = targets.log_size[0, slot]
        offset[0, :, row, column] = targets.offset[0, slot]
    peaks = targets.heatmap.clamp(1e-4, 1 - 1e-4)
    return {"heatmap": torch.log(peaks / (1 - peaks)), "size": size, "offset": offset}


BOXES = torch.tensor([[0.05, 0.05, 0.30, 0.40], [0.55, 0.50, 0.95, 0.90]])


def test_decoding_perfect_outputs_gives_back_the_boxes() -> None:
    decoded, scores = decode(perfect_outputs(BOXES), TINY, top_k=2)
    assert scores[0].tolist() == pytest.approx([1 - 1e-4] * 2)
    found = sorted(decoded[0].tolist())
    for got, want in zip(found, sorted(BOXES.tolist()), strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_the_loss_is_near_zero_for_perfect_outputs_and_large_for_an_untrained_net() -> None:
    targets = build_targets([BOXES], TINY)
    perfect = centernet_loss(perfect_outputs(BOXES), targets)
    assert float(perfect["size"]) == pytest.approx(0.0, abs=1e-6)
    assert float(perfect["offset"]) == pytest.approx(0.0, abs=1e-6)
    assert float(perfect["heatmap"]) < 0.01
    with torch.no_grad():
        untrained = centernet_loss(CenterNet(TINY)(torch.rand(1, 3, 64, 64)), targets)
    assert float(untrained["heatmap"]) > 100 * float(perfect["heatmap"])


def test_a_detector_directory_round_trips_in_float16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CenterNet(TINY).eval()
    save_centernet(model, tmp_path / "det", torch.float16)
    loaded = load_centernet(tmp_path / "det")
    assert loaded.config == TINY
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours, theirs = model(images), loaded(images)
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=2e-2), key


def test_broken_detector_directories_are_refused_with_their_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a refground detector"):
        load_centernet(tmp_path)
    save_centernet(CenterNet(TINY), tmp_path / "det")
    record = json.loads((tmp_path / "det" / "detector.json").read_text())
    (tmp_path / "det" / "detector.json").write_text(json.dumps({**record, "head_width": 32}))
    with pytest.raises(ModelLoadError, match=r"does not fit detector\.json"):
        load_centernet(tmp_path / "det")
    (tmp_path / "det" / "detector.json").write_text(json.dumps({**record,
                                                                "architecture": "yolo"}))
    with pytest.raises(ModelLoadError, match="does not describe a centernet"):
        load_centernet(tmp_path / "det")
    (tmp_path / "det" / "detector.json").write_text(json.dumps(record))
    (tmp_path / "det" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot read detector weights"):
        load_centernet(tmp_path / "det")


def test_referent_recall_counts_a_hit_only_within_the_first_k() -> None:
    referent = (10.0, 10.0, 50.0, 50.0)
    proposals = torch.tensor([[100.0, 100, 150, 150], [12.0, 10, 50, 50]])
    result = referent_recall([proposals], [referent], ks=(1, 2), thresholds=(0.5,))
    assert result["recall@0.5@1"] == 0.0
    assert result["recall@0.5@2"] == 1.0
    assert result["mean_proposals"] == 2.0


# --- training -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("det-synth")
    generate_synthref(root, seed=5, num_images=24)
    return root


def write_config(path: Path, root: Path, out: Path, epochs: int, lr: float = 5e-3) -> Path:
    path.write_text(json.dumps({
        "data": {"root": str(root), "val_limit": 12},
        "model": {"image_size": 64, "widths": [8, 8, 16, 16, 16], "head_width": 16},
        "optim": {"lr": lr, "schedule": "constant"},
        "train": {"epochs": epochs, "batch_size": 4, "seed": 1, "log_every": 1},
        "out": str(out),
    }))
    return path


def test_training_lowers_the_loss_and_writes_curve_checkpoints_and_summary(
        synth_root: Path, tmp_path: Path) -> None:
    config = load_detector_config(write_config(tmp_path / "c.yaml", synth_root,
                                               tmp_path / "run", epochs=3))
    summary = DetectorTrainer(config, log=lambda _: None).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert sum(losses[-3:]) < sum(losses[:3])
    vals = [r for r in records if r["kind"] == "val"]
    assert [v["epoch"] for v in vals] == [1, 2, 3]
    assert summary["best_metric"] == max(v["recall@0.5@50"] for v in vals)
    assert (tmp_path / "run" / "checkpoints" / "best" / "manifest.json").is_file()


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(synth_root: Path,
                                                                       tmp_path: Path) -> None:
    straight = DetectorTrainer(load_detector_config(
        write_config(tmp_path / "a.yaml", synth_root, tmp_path / "a", epochs=2)),
        log=lambda _: None)
    straight.fit()
    config = load_detector_config(write_config(tmp_path / "b.yaml", synth_root, tmp_path / "b",
                                               epochs=2))
    stop_after_one_epoch(DetectorTrainer(config, log=lambda _: None))
    resumed = DetectorTrainer(config, log=lambda _: None)
    resumed.fit(resume=True)
    assert resumed.epoch == 2 and resumed.step == straight.step
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    vals = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert [v["epoch"] for v in vals if v["kind"] == "val"] == [1, 2]
    other = load_detector_config(write_config(tmp_path / "c.yaml", synth_root, tmp_path / "b",
                                              epochs=3))
    with pytest.raises(ConfigError, match="another configuration"):
        DetectorTrainer(other, log=lambda _: None).fit(resume=True)


def stop_after_one_epoch(trainer: DetectorTrainer) -> None:
    """Run ``trainer`` as if killed right after its first checkpoint."""
    original = trainer.save

    class Killed(Exception):
        pass

    def save_then_die(name: str) -> None:
        original(name)
        if name == "last":
            raise Killed

    trainer.save = save_then_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        trainer.fit()


def test_export_proposer_and_grounder_from_text_alone(synth_root: Path, tmp_path: Path) -> None:
    config = load_detector_config(write_config(tmp_path / "c.yaml", synth_root,
                                               tmp_path / "run", epochs=1))
    DetectorTrainer(config, log=lambda _: None).fit()
    record = export_detector(tmp_path / "run", tmp_path / "det", data_recipe="recipe",
                             command="cmd", splits=["val"])
    assert record["test"]["val"]["n"] > 0 and 0.0 <= record["test"]["val"]["recall@0.5@50"] <= 1
    saved = json.loads((tmp_path / "det" / "training.json").read_text())
    assert saved["command"] == "cmd" and len(saved["val_curve"]) == 1
    assert load_centernet(tmp_path / "det").stages[0][0][0].weight.dtype == torch.float32

    proposer = build_proposer("centernet", model=str(tmp_path / "det"), top_k=7,
                              score_threshold=0.0, device="cpu")
    image = Image.new("RGB", (200, 120), (90, 90, 90))
    from refground.types import Sample

    sample = Sample("0", tmp_path / "x.png", 200, 120, "the red circle")
    [proposals] = proposer.propose([image], [sample])
    assert len(proposals) == 7 and set(proposals.labels) == {"object"}
    assert float(proposals.boxes[:, 2].max()) <= 200 and float(proposals.boxes[:, 3].max()) <= 120

    grounder = Grounder.load("largest", detector="centernet",
                             detector_options={"model": str(tmp_path / "det"), "top_k": 5,
                                               "score_threshold": 0.0})
    image.save(tmp_path / "x.png")
    prediction = grounder.ground(tmp_path / "x.png", "the big one")
    areas = [(c.box[2] - c.box[0]) * (c.box[3] - c.box[1]) for c in prediction.candidates]
    assert len(prediction.candidates) == 5
    assert prediction.box == prediction.candidates[areas.index(max(areas))].box
    given = grounder.ground(tmp_path / "x.png", "the big one", boxes=[[0, 0, 10, 10]])
    assert given.box == (0.0, 0.0, 10.0, 10.0)
    no_detector = Grounder.load("largest", detector=None)
    with pytest.raises(InputError, match="has no detector"):
        no_detector.ground(tmp_path / "x.png", "the big one")
