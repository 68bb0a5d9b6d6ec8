"""The training engine: configs, checkpoints, exact resume after SIGKILL, NaN steps, accum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from refground.data.synth import generate_synthref
from refground.errors import ConfigError
from refground.train.checkpoint import (
    CheckpointError,
    join_state,
    read_trainer_state,
    resolve_checkpoint,
    split_state,
    write_checkpoint,
)
from refground.train.config import build_config, load_config
from refground.train.trainer import Trainer, TrainingDivergedError
from tests.tiny_trainable import TinyMethod, register

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthref(root, seed=3, num_images=30, workers=1)
    return root


def tiny_config(root: Path, out: Path, **train: Any) -> dict[str, Any]:
    loop = {"epochs": 2, "batch_size": 8, "num_workers": 0, "eval_every": 4,
            "checkpoint_every": 2, "log_every": 1, "seed": 5, "device": "cpu"}
    loop.update(train)
    return {"method": "tiny-test", "options": {"dropout": 0.2},
            "data": {"root": str(root), "train_limit": 64, "val_limit": 16},
            "optim": {"lr": 3e-3, "schedule": "onecycle", "warmup_fraction": 0.3},
            "train": loop, "out": str(out)}


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


# --- config ---------------------------------------------------------------------------------


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    data = tiny_config(tmp_path, tmp_path / "out")
    data["optim"]["lrr"] = 1.0
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        build_config(data)
    data = tiny_config(tmp_path, tmp_path / "out", batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match=r"multiple of train\.grad_accum"):
        build_config(data)
    (tmp_path / "bad.yaml").write_text("method: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path, tmp_path / "o")))
    config = load_config(tmp_path / "ok.yaml", {"optim.lr": 0.5, "train.epochs": 7})
    assert (config.optim.lr, config.train.epochs) == (0.5, 7)


def test_best_checkpoint_metric_is_a_train_setting(tmp_path: Path) -> None:
    data = tiny_config(tmp_path, tmp_path / "out", best_metric="acc50")
    with pytest.raises(ConfigError, match=r"train\.best_metric.*acc@0\.5, acc@0\.75"):
        build_config(data)
    data = tiny_config(tmp_path, tmp_path / "out")
    data["tune"] = {"metric": "miou"}  # an older config: tune.metric chose the best checkpoint
    with pytest.raises(ConfigError, match=r"Set train\.best_metric: miou"):
        build_config(data)
    data["train"]["best_metric"] = "miou"
    config = build_config(data)
    assert (config.train.best_metric, config.train.best_direction) == ("miou", "maximize")
    data["tune"] = {"metric": "acc@0.5"}  # the search may score trials by another metric
    default = build_config(tiny_config(tmp_path, tmp_path / "out"))
    assert default.train.best_metric == "acc@0.5"
    assert build_config(data).run_identity() == default.run_identity()


# --- checkpoint files -----------------------------------------------------------------------


def test_state_round_trips_through_safetensors_and_json(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    import random

    import numpy as np
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "python": random.getstate(), "numpy": np.random.get_state(), "step": 3}
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(split_state(state, tensors)))
    back = join_state(skeleton, tensors)
    assert back["python"] == state["python"] and back["step"] == 3
    assert back["scheduler"] == state["scheduler"]
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(back["numpy"], state["numpy"], strict=True))
    for key, value in state["optimizer"]["state"][0].items():  # int keys survive
        assert torch.equal(back["optimizer"]["state"][0][key], value)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]


def test_corrupt_or_partial_checkpoints_are_detected(tmp_path: Path) -> None:
    method = TinyMethod.from_options({})
    target = tmp_path / "checkpoints" / "last"
    write_checkpoint(target, method.save_pretrained, {"step": 1, "x": torch.arange(5)})
    assert read_trainer_state(target)["step"] == 1
    # a flipped byte in the weights
    weights_file = target / "model.safetensors"
    data = bytearray(weights_file.read_bytes())
    data[-3] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt: model\.safetensors"):
        read_trainer_state(target)
    # interrupted before the manifest was written
    write_checkpoint(target, method.save_pretrained, {"step": 2})
    (target / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        read_trainer_state(target)
    # a file missing
    write_checkpoint(target, method.save_pretrained, {"step": 3})
    (target / "trainer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"trainer\.safetensors is missing"):
        read_trainer_state(target)
    # a crash between "last -> last.old" and "last.tmp -> last": the old one is used
    write_checkpoint(target, method.save_pretrained, {"step": 4})
    target.rename(target.with_name("last.old"))
    assert read_trainer_state(resolve_checkpoint(target))["step"] == 4


# --- the loop -------------------------------------------------------------------------------


def run_child(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Train in a child process. Its output goes to files, not pipes: DataLoader workers
    inherit the child's descriptors and outlive a SIGKILL by seconds (until they notice), and
    a pipe would keep us waiting for them."""
    # as many torch threads as this process: thread count changes float sums, and the child's
    # weights are compared bit for bit with runs made here
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out, err = config.with_suffix(".stdout"), config.with_suffix(".stderr")
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run([sys.executable, str(REPO / "tests" / "tiny_trainable.py"),
                               str(config), *extra], env=env, stdout=stdout, stderr=stderr,
                              timeout=300, cwd=REPO)
    return subprocess.CompletedProcess(done.args, done.returncode, out.read_text(),
                                       err.read_text())


@pytest.mark.slow
def test_resume_after_sigkill_ends_with_identical_weights(synth_root: Path,
                                                          tmp_path: Path) -> None:
    """A run killed mid-epoch and resumed equals an uninterrupted one, bit for bit.

    Only the killed run needs a process of its own; the uninterrupted run and the resume
    run here, as `refground train` runs them (the same Trainer, DataLoader workers and all)."""
    register()
    configs = {}
    for name in ("straight", "killed"):
        data = tiny_config(synth_root, tmp_path / name, num_workers=2)
        data["options"]["cache_pixels"] = True  # the cache in use, built by the first run
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(data))
    Trainer(load_config(configs["straight"]), progress=False, log=lambda _: None).fit()
    assert list((synth_root / "synthref" / "features").glob("tiny-pixels-*.json"))
    killed = run_child(configs["killed"], "--kill-at-step", "12")
    assert killed.returncode == -9, killed.stderr  # SIGKILL
    saved = read_trainer_state(tmp_path / "killed" / "checkpoints" / "last")["counters"]
    assert saved["step"] == 10 and saved["epoch"] == 1 and saved["step_in_epoch"] == 2
    said: list[str] = []
    Trainer(load_config(configs["killed"]), progress=False, log=said.append).fit(resume=True)
    assert any(line.startswith("resumed from") for line in said), said
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((tmp_path / n / "summary.json").read_text())
                 for n in ("straight", "killed")]
    assert summaries[0]["last_metrics"] == summaries[1]["last_metrics"]
    # the log has each step once: lines the killed run wrote after its checkpoint were dropped
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == sorted(set(steps)) == list(range(1, 17))


def test_refuses_to_overwrite_or_resume_a_different_run(synth_root: Path,
                                                        tmp_path: Path) -> None:
    register()
    config = build_config(tiny_config(synth_root, tmp_path / "run", epochs=1))
    Trainer(config, progress=False, log=lambda _: None).fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(config, progress=False, log=lambda _: None).fit()
    changed = build_config(tiny_config(synth_root, tmp_path / "run", epochs=1, seed=6))
    with pytest.raises(CheckpointError, match="different config"):
        Trainer(changed, progress=False, log=lambda _: None).fit(resume=True)


def test_non_finite_steps_are_skipped_then_stop_the_run(synth_root: Path,
                                                        tmp_path: Path) -> None:
    register()
    data = tiny_config(synth_root, tmp_path / "nan", epochs=1, batch_size=4, max_bad_steps=100)
    data["options"]["nan_word"] = "left"  # some batches hold an expression with "left"
    before = TinyMethod.from_options({})
    summary = Trainer(build_config(data), progress=False, log=lambda _: None).fit()
    assert 0 < summary.bad_steps < summary.steps
    final = weights(tmp_path / "nan")
    assert all(torch.isfinite(v).all() for v in final.values())
    assert any(not torch.equal(final[k], v) for k, v in before.state_to_save().items())
    data = tiny_config(synth_root, tmp_path / "nan2", epochs=1, batch_size=4, max_bad_steps=1)
    data["options"]["nan_word"] = "left"
    with pytest.raises(TrainingDivergedError, match="max_bad_steps=1"):
        Trainer(build_config(data), progress=False, log=lambda _: None).fit()


def test_gradient_accumulation_matches_one_big_batch(synth_root: Path, tmp_path: Path) -> None:
    register()
    results = []
    for accum in (1, 4):
        data = tiny_config(synth_root, tmp_path / f"acc{accum}", epochs=1, grad_accum=accum)
        data["options"]["dropout"] = 0.0
        Trainer(build_config(data), progress=False, log=lambda _: None).fit()
        results.append(weights(tmp_path / f"acc{accum}"))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5)


def test_logs_checkpoints_and_best_model_are_usable(synth_root: Path, tmp_path: Path) -> None:
    register()
    from refground.methods import build_method

    config = build_config(tiny_config(synth_root, tmp_path / "run", mixed_precision="bf16"))
    summary = Trainer(config, progress=False, log=lambda _: None).fit()
    assert summary.steps == 2 * (64 // 8)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    val = [x for x in lines if x["kind"] == "val"]
    assert [x["step"] for x in val] == [4, 8, 12, 16]
    assert all(x["lr"] > 0 and x["samples_per_s"] > 0 and "grad_norm" in x for x in train)
    # OneCycle: the lr rises, then falls
    lrs = [x["lr"] for x in train]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[-1] < lrs[peak] / 10
    assert summary.best_metric == max(x["acc@0.5"] for x in val)
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    best = build_method("tiny-test", checkpoint=str(tmp_path / "run" / "checkpoints" / "best"))
    assert isinstance(best, TinyMethod)


def test_best_checkpoint_follows_train_best_metric_and_direction(synth_root: Path,
                                                                 tmp_path: Path) -> None:
    register()
    config = build_config(tiny_config(synth_root, tmp_path / "run", epochs=1,
                                      best_metric="miou", best_direction="minimize"))
    summary = Trainer(config, progress=False, log=lambda _: None).fit()
    assert [x["step"] for x in summary.history] == [4, 8]
    assert summary.best_metric == min(x["miou"] for x in summary.history)
    assert summary.best_step == min(summary.history, key=lambda x: x["miou"])["step"]


def test_a_resume_with_another_best_criterion_does_not_compare_across_metrics(
        synth_root: Path, tmp_path: Path) -> None:
    """The best value is kept with what it measures: after a resume that switched
    train.best_metric, the old metric's number is not the new one's yardstick."""
    register()
    config = build_config(tiny_config(synth_root, tmp_path / "run", epochs=1,
                                      best_metric="miou", best_direction="minimize"))
    trainer = Trainer(config, progress=False, log=lambda _: None)
    trainer.state.best_metric, trainer.state.best_for = 0.01, "maximize acc@0.5"
    assert trainer._improves(0.9)
    trainer.state.best_for = "minimize miou"
    assert not trainer._improves(0.9) and trainer._improves(0.001)
    trainer.state.best_for = None  # a checkpoint from before best_for: its criterion held
    assert not trainer._improves(0.9)
    trainer.state = type(trainer.state)()
    trainer.fit()
    saved = read_trainer_state(tmp_path / "run" / "checkpoints" / "best")["counters"]
    assert saved["best_for"] == "minimize miou"
