"""Optuna tuning: the study is stored in SQLite, resumes, starts from the config's values."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from refground.data.synth import generate_synthref
from refground.errors import ConfigError
from refground.train.config import build_config, load_config
from refground.train.tune import tune
from tests.tiny_trainable import register


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthref(root, seed=4, num_images=20, workers=1)
    return root


def tune_config(root: Path, out: Path) -> dict:
    return {
        "method": "tiny-test", "options": {"dropout": 0.1},
        "data": {"root": str(root), "train_limit": 32, "val_limit": 8},
        "optim": {"lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "num_workers": 0, "device": "cpu", "seed": 1},
        "out": str(out),
        "tune": {"trials": 2, "space": {
            "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "options.dropout": {"type": "categorical", "choices": [0.0, 0.1, 0.3]}}},
    }


def test_tune_resumes_from_sqlite_and_writes_the_best_config(synth_root: Path,
                                                             tmp_path: Path) -> None:
    register()
    config = build_config(tune_config(synth_root, tmp_path / "run"))
    first = tune(config, log=lambda _: None)
    assert len(first.trials) == 2
    # trial 0 is the starting config
    assert first.trials[0]["params"] == {"optim.lr": 3e-3, "options.dropout": 0.1}
    assert first.baseline_value == first.trials[0]["value"]
    more = tune(config, trials=4, log=lambda _: None)  # continues the same study
    assert len(more.trials) == 4
    assert more.trials[:2] == first.trials
    with sqlite3.connect(tmp_path / "run" / "tune" / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 4
    values = [t["value"] for t in more.trials if t["state"] == "COMPLETE"]
    assert more.best_value == max(values)
    best = load_config(more.best_config)
    assert best.optim.lr == pytest.approx(more.best_params["optim.lr"])
    assert best.options["dropout"] == more.best_params["options.dropout"]
    assert (tmp_path / "run" / "tune" / "trial-003" / "summary.json").is_file()


def test_tune_needs_a_search_space(synth_root: Path, tmp_path: Path) -> None:
    data = tune_config(synth_root, tmp_path / "run")
    data["tune"]["space"] = {}
    with pytest.raises(ConfigError, match="non-empty 'space:'"):
        tune(build_config(data))
    data["tune"]["space"] = {"lr": {"type": "float", "low": 1.0, "high": 2.0}}
    with pytest.raises(ConfigError, match="must start with options"):
        tune(build_config(data))
    data["tune"]["space"] = {"optim.lr": {"type": "float", "low": 2.0, "high": 1.0}}
    with pytest.raises(ConfigError, match="low < high"):
        build_config(data)
