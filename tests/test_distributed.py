"""Two CPU processes (Accelerate, gloo) train and evaluate like one process on the same data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from refground.data.synth import synthref_dataset
from refground.evaluate.runner import evaluate
from refground.methods import build_method
from refground.train.config import load_config
from refground.train.trainer import Trainer
from tests.conftest import synthref_root
from tests.tiny_trainable import register

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent))


def launch(config: Path, processes: int) -> None:
    """Train ``config`` in one process (this one) or in ``processes`` launched by Accelerate."""
    if processes == 1:  # the reference: the same Trainer, here, on one thread as each child is
        register()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            Trainer(load_config(config), progress=False, log=lambda _: None).fit()
        finally:
            torch.set_num_threads(threads)
        return
    # --multi_gpu selects torchrun; without a GPU the processes use gloo on the CPU
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517", str(REPO / "tests" / "tiny_trainable.py"),
               str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    assert ACCELERATE is not None, "the accelerate command is missing: pip install '.[dist]'"
    root = synthref_root(tmp_path_factory, seed=3, images=30)
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        config = {"method": "tiny-test", "options": {"dropout": 0.0},
                  "data": {"root": str(root), "train_limit": 64, "val_limit": 11},
                  "optim": {"lr": 1e-2},
                  "train": {"epochs": 2, "batch_size": 8, "grad_accum": 2, "num_workers": 1,
                            "eval_every": 4, "device": "cpu", "seed": 5, "log_every": 1},
                  "out": str(out)}
        path = tmp_path / f"p{processes}.yaml"
        path.write_text(yaml.safe_dump(config))
        launch(path, processes)
        runs[processes] = json.loads((out / "summary.json").read_text())
    assert (runs[1]["processes"], runs[2]["processes"]) == (1, 2)
    # the gradients are averaged over the same global batches: same weights up to float sums
    one = load_file(str(tmp_path / "p1" / "checkpoints" / "last" / "model.safetensors"))
    two = load_file(str(tmp_path / "p2" / "checkpoints" / "last" / "model.safetensors"))
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)
    # validation (sharded 6 + 5 over two processes) gives the same numbers at every step
    for a, b in zip(runs[1]["history"], runs[2]["history"], strict=True):
        assert a["step"] == b["step"] and a["n"] == b["n"] == 11
        assert a["acc@0.5"] == b["acc@0.5"]
        assert a["miou"] == pytest.approx(b["miou"], abs=1e-5)
    # and the sharded evaluation equals a plain one-process evaluation of the same weights
    register()
    method = build_method("tiny-test", checkpoint=str(tmp_path / "p2" / "checkpoints" / "last"))
    samples = synthref_dataset(root).split("val").samples[:11]
    plain = evaluate(method, samples, progress=False).metrics
    sharded = runs[2]["last_metrics"]
    assert plain["n"] == sharded["n"] and plain["acc@0.5"] == sharded["acc@0.5"]
    assert plain["miou"] == pytest.approx(sharded["miou"], abs=1e-6)
    assert plain["by_type"].keys() == sharded["by_type"].keys()
