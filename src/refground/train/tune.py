"""Hyperparameter search with Optuna over the ``tune:`` section of a training config.

Each trial is an ordinary ``Trainer`` run in ``<out>/tune/trial-NNN`` with the sampled values
applied as dotted overrides (``optim.lr``, ``options.dropout``, ...). Validation results are
reported to Optuna after every validation so the median pruner can stop weak trials early.
The study lives in SQLite, so an interrupted search resumes where it stopped: finished trials
are kept, and trials left "running" by a crash are marked failed and replaced.

A trial's value is the best ``tune.metric`` over its validations (``tune.direction``); which
checkpoint the trial keeps as best is ``train.best_metric``'s choice, as in any run.

Trial 0 is the config's own values (when they lie in the space), so the search reports its
gain over the starting point rather than over a random draw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refground.errors import ConfigError, MissingDependencyError
from refground.train.config import ParamSpace, TrainConfig, build_config, save_config
from refground.train.trainer import Trainer


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    storage: str
    trials: list[dict[str, Any]]
    best_params: dict[str, Any]
    best_value: float
    baseline_value: float | None
    best_config: Path


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError(
            "refground tune needs Optuna: pip install 'refground[tune]'") from None
    return optuna


def current_value(config: TrainConfig, key: str) -> Any:
    """The value at dotted ``key`` in ``config`` (``None`` when absent)."""
    node: Any = config.model_dump(mode="json")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _in_space(value: Any, space: ParamSpace) -> bool:
    if value is None:
        return False
    if space.type == "categorical":
        return value in (space.choices or [])
    return space.low <= value <= space.high  # type: ignore[operator]


def suggest(trial: Any, key: str, space: ParamSpace) -> Any:
    if space.type == "categorical":
        return trial.suggest_categorical(key, space.choices)
    if space.type == "int":
        return trial.suggest_int(key, int(space.low), int(space.high),  # type: ignore[arg-type]
                                 step=int(space.step or 1), log=space.log)
    return trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)


def tune(config: TrainConfig, trials: int | None = None,
         log: Callable[[str], None] = print) -> TuneResult:
    """Run (or continue) the study described by ``config.tune``; write the best config."""
    optuna = _import_optuna()
    settings = config.tune
    if settings is None or not settings.space:
        raise ConfigError("refground tune needs a 'tune:' section with a non-empty 'space:' "
                          "(e.g. space: {optim.lr: {type: float, low: 1e-4, high: 3e-3, "
                          "log: true}})")
    for key in settings.space:
        if key.split(".")[0] not in ("options", "optim", "train"):
            raise ConfigError(f"tune.space key {key!r} must start with options., optim. or train.")
    total = trials if trials is not None else settings.trials
    tune_dir = config.out / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    storage = settings.storage or f"sqlite:///{(tune_dir / 'study.db').resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3) if settings.pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(
        study_name=settings.study_name, storage=storage, direction=settings.direction,
        pruner=pruner, sampler=optuna.samplers.TPESampler(seed=config.train.seed),
        load_if_exists=True)
    states = optuna.trial.TrialState
    for stale in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        study.tell(stale.number, state=states.FAIL)  # a crash left it running
    if not study.trials or all(t.state == states.FAIL for t in study.trials):
        defaults = {k: current_value(config, k) for k in settings.space}
        if all(_in_space(v, settings.space[k]) for k, v in defaults.items()):
            study.enqueue_trial(defaults, user_attrs={"baseline": True})
    done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
    base = config.model_dump(mode="json")

    def objective(trial: Any) -> float:
        overrides = {key: suggest(trial, key, space) for key, space in settings.space.items()}
        overrides["out"] = str(tune_dir / f"trial-{trial.number:03d}")
        trial_config = build_config(base, overrides, f"trial {trial.number}")
        values: list[float] = []

        def report(step: int, metrics: dict[str, Any]) -> None:
            values.append(float(metrics[settings.metric]))
            trial.report(values[-1], step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        shown = {k: v for k, v in overrides.items() if k != "out"}
        log(f"trial {trial.number}: {json.dumps(shown)}")
        Trainer(trial_config, on_validation=report, progress=False, log=lambda _: None).fit()
        assert values, "a Trainer run validates at least once, at its end"
        value = max(values) if settings.direction == "maximize" else min(values)
        log(f"trial {trial.number}: best {settings.metric} {value:.4f}")
        return value

    if total > done:
        study.optimize(objective, n_trials=total - done, catch=())
    finished = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    if not finished:
        raise ConfigError("no trial finished; see the log above")
    best = study.best_trial
    best_config = build_config(base, dict(best.params), "best trial")
    best_path = tune_dir / "best.yaml"
    save_config(best_config, best_path)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in study.trials]
    (tune_dir / "trials.json").write_text(json.dumps(rows, indent=2))
    baseline = next((t.value for t in finished if t.user_attrs.get("baseline")), None)
    return TuneResult(settings.study_name, storage, rows, dict(best.params), float(best.value),
                      baseline, best_path)
