"""Hyper-parameter search with Optuna: every trial a run folder on one shared split, the best config written out.

``OUT/split.csv`` is the patient-grouped split all trials train and validate on; ``OUT/trial_NNN/`` is the run of
trial NNN; ``OUT/study.db`` the Optuna study (SQLite by default), so re-running the same command resumes it and runs
only the trials still missing; ``OUT/trials.csv`` one row per trial; ``OUT/best_config.yaml`` a full
:class:`TrainConfig` for ``lungscope train --config``. The objective is the run's best val_auc (maximised).

A search space maps training options to a list of choices or a range ``{low, high[, log][, zero]}`` (integers for
integer options, ``zero: true`` also tries 0: Optuna then records a ``NAME=0`` yes/no parameter beside ``NAME``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from lungscope.errors import ConfigError, DatasetError, LungscopeError
from lungscope.options import choices_of
from lungscope.progress import progress_bar
from lungscope.training.config import TrainConfig, read_yaml
from lungscope.training.cv import check_same_options, save_or_check_manifest
from lungscope.training.trainer import make_split, train

DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": [16, 32, 64],
    "weight_decay": {"low": 1e-6, "high": 1e-3, "log": True, "zero": True},
    "optimizer": list(choices_of(TrainConfig, "optimizer")),
}
SAMPLERS = ("tpe", "random", "grid")
_FIXED = ("data", "out", "manifest", "labels", "limit", "val_fraction", "test_fraction")  # the shared data and split
_RANGE_KEYS = {"low", "high", "log", "zero"}
_ZERO = "=0"  # suffix of the yes/no parameter of a range with zero: true
_HINTS = typing.get_type_hints(TrainConfig)


@dataclass(frozen=True)
class SearchParam:
    """One searched option: ``choices``, or a range ``low..high`` (``integer``, ``log``, ``zero`` = or 0)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    zero: bool = False
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> None:
        if self.choices is not None:
            trial.suggest_categorical(self.name, self.choices)
        elif not (self.zero and trial.suggest_categorical(self.name + _ZERO, [False, True])):
            suggest = trial.suggest_int if self.integer else trial.suggest_float
            # an integer option's bounds are whole numbers (suggest_int's stub wants ints)
            suggest(self.name, self.low, self.high, log=self.log)  # type: ignore[arg-type]


def _numeric_kind(name: str) -> type | None:
    """``int`` or ``float`` for a numeric option (``int | None`` counts), else None."""
    types = set(typing.get_args(_HINTS[name])) or {_HINTS[name]}
    return float if float in types else int if int in types else None


def _number(name: str, value: Any, kind: type) -> int | float:
    """``value`` as the option's number type (YAML reads ``1e-4`` without a dot as text, so text is parsed)."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    return int(number) if kind is int else number


def _parse_param(name: str, spec: Any) -> SearchParam:
    if name not in _HINTS:
        raise ConfigError(f"{name}: not a training option; options: {', '.join(k for k in _HINTS if k not in _FIXED)}")
    if name in _FIXED:
        raise ConfigError(f"{name}: cannot be searched, it sets the data or the split that every trial shares")
    kind = _numeric_kind(name)
    if isinstance(spec, list) and spec:
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in spec):
            raise ConfigError(f"{name}: choices must be plain values (text, numbers, true/false), not {spec!r}")
        return SearchParam(name, choices=tuple(_number(name, v, kind) if kind else v for v in spec))
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{name}: give a non-empty list of choices or a range {{low, high[, log][, zero]}}, not {spec!r}"
        )
    if unknown := sorted(map(str, set(spec) - _RANGE_KEYS)):
        raise ConfigError(f"{name}: a range has low, high and optionally log and zero, not {', '.join(unknown)}")
    if missing := sorted({"low", "high"} - set(spec)):
        raise ConfigError(f"{name}: a range needs {' and '.join(missing)}")
    if kind is None:
        raise ConfigError(f"{name}: a range needs a numeric option; give a list of choices")
    low, high = _number(name, spec["low"], kind), _number(name, spec["high"], kind)
    log, zero = spec.get("log", False), spec.get("zero", False)
    if not (isinstance(log, bool) and isinstance(zero, bool)):
        raise ConfigError(f"{name}: log and zero must be true or false")
    if not low < high:
        raise ConfigError(f"{name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{name}: a log range needs low above 0, not {low}")
    return SearchParam(name, low=low, high=high, log=log, zero=zero, integer=kind is int)


def parse_space(space: Mapping[str, Any]) -> list[SearchParam]:
    """Validate a search space (ConfigError naming the bad option) and return its parameters."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError(f"expected a mapping of option -> choices or range, not {space!r}")
    params = [_parse_param(str(name), spec) for name, spec in space.items()]
    for param in params:  # every value must make a valid config, e.g. no optimizer outside adam/sgd
        for value in param.choices if param.choices is not None else (param.low, param.high):
            try:
                TrainConfig(**{param.name: value})
            except ConfigError as error:
                raise ConfigError(f"{param.name}: {error}") from None
    return params


def load_space(path: str | Path) -> dict[str, Any]:
    """A search space from a YAML file, validated (ConfigError naming the file)."""
    path = Path(path)
    space = read_yaml(path, "search space file")
    try:
        parse_space(space)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return space


def config_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters as TrainConfig values (``NAME=0: true`` becomes ``NAME: 0``)."""
    values = {k: v for k, v in params.items() if not k.endswith(_ZERO)}
    off = [k.removesuffix(_ZERO) for k, v in params.items() if k.endswith(_ZERO) and v]
    values |= {name: (_numeric_kind(name) or float)(0) for name in off}
    return values


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler for the ask-and-tell loop below, which stops after the grid's size by itself:
    GridSampler's own ``Study.stop()`` once the grid is done works only inside ``Study.optimize``."""

    def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Sequence[float] | None) -> None:
        pass


def _sampler(
    name: str, params: list[SearchParam], seed: int, n_trials: int
) -> tuple[optuna.samplers.BaseSampler, int | None]:
    """The sampler, and the number of grid points for the grid sampler (None for the others).

    TPE and random samplers are seeded with ``seed`` plus the trials already in the study, so a resumed search does
    not repeat its first draws; the grid keeps ``seed``, as GridSampler numbers its shuffled points by trial number.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed + n_trials), None
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed + n_trials), None
    if ranges := [p.name for p in params if p.choices is None]:
        raise ConfigError(f"the grid sampler needs lists of choices only; ranges given: {', '.join(ranges)}")
    grid = {p.name: list(p.choices) for p in params}  # type: ignore[arg-type]
    return _GridSampler(grid, seed=seed), math.prod(len(v) for v in grid.values())


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts towards the N asked for: completed, or failed on its own (not interrupted)."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")
    )


def _run_trial(
    study: optuna.Study, config: TrainConfig, params: list[SearchParam], split: Path, progress: bool | None
) -> None:
    """Ask for a trial, train it and tell Optuna the best val_auc, or FAIL with the LungscopeError's message."""
    trial = study.ask()
    for param in params:
        param.suggest(trial)
    run = Path(config.out) / f"trial_{trial.number:03d}"
    try:
        trial_config = dataclasses.replace(config, out=str(run), manifest=str(split), **config_values(trial.params))
        value = train(trial_config, progress=progress)["best_val_auc"]
        if math.isnan(value):
            raise DatasetError(f"{run}: val_auc undefined in every epoch (a class missing from the validation split)")
    except LungscopeError as error:
        trial.set_user_attr("error", str(error))
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} failed: {error}", file=sys.stderr)
    except BaseException as error:  # Ctrl-C or a bug: record the trial as failed, then stop the search
        interrupted = isinstance(error, KeyboardInterrupt)
        trial.set_user_attr("error", "interrupted" if interrupted else repr(error))
        if interrupted:  # not counted, and queued again: a re-run tries these parameters first (in a new folder)
            trial.set_user_attr("interrupted", True)
            study.enqueue_trial(trial.params)
            print(f"\nsearch interrupted in trial {trial.number}; re-run the same command to continue", file=sys.stderr)
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


def _write_best_config(study: optuna.Study, config: TrainConfig, path: Path) -> dict[str, Any]:
    best = study.best_trial
    values = config_values(best.params)
    header = f"# lungscope tune: trial {best.number} of {len(study.trials)}, best val_auc {best.value:.4f}\n"
    path.write_text(header + yaml.safe_dump(dataclasses.replace(config, out="", **values).to_dict(), sort_keys=False))
    return values


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (a study created, each trial finished) off while a search runs, since it reports its own
    progress, then Optuna's level as it was. Only Optuna's default, INFO, is lowered (to WARNING): a caller who
    turned it up to DEBUG sees everything. Importing this module leaves the level alone."""
    before = optuna.logging.get_verbosity()
    if before == optuna.logging.INFO:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


@_quiet_optuna()
def tune(
    config: TrainConfig,
    trials: int,
    *,
    sampler: str = "tpe",
    space: Mapping[str, Any] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Search ``space`` (default :data:`DEFAULT_SPACE`) around ``config`` until the study holds ``trials`` trials
    (completed or failed; an interrupted one is tried again; the grid sampler stops at the grid's size).

    ``storage`` defaults to ``sqlite:///OUT/study.db`` and ``study_name`` to OUT's folder name; an existing study
    is resumed, and must have been made with the same training options. A LungscopeError fails its trial and the
    search goes on; Ctrl-C fails the trial, queues its parameters for the next run and stops.
    Returns the best trial's number, value, parameters and the paths written.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"the number of trials must be a positive integer, not {trials!r}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    if not config.out:
        raise ConfigError("an output folder (--out DIR) is required")
    try:
        params = parse_space(DEFAULT_SPACE if space is None else space)
    except ConfigError as error:
        raise ConfigError(f"search space: {error}") from None
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    split = out / "split.csv"
    save_or_check_manifest(make_split(config), split)

    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = study_name or out.resolve().name
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True)
    if "config" in study.user_attrs:
        check_same_options(study.user_attrs["config"], config, f"study {study_name!r} in {storage}")
    else:
        study.set_user_attr("config", config.to_dict())
    study.sampler, grid_size = _sampler(sampler, params, config.seed, len(study.trials))
    budget = min(trials, grid_size or trials)
    done = sum(map(_counts, study.get_trials(deepcopy=False)))

    bar = progress_bar(total=budget, initial=min(done, budget), desc="tune", unit="trial", show=progress)
    try:
        for _ in range(budget - done):
            _run_trial(study, config, params, split, progress)
            bar.update()
            if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
                bar.set_postfix(best_val_auc=f"{study.best_value:.4f}")
    finally:
        bar.close()
        table = study.trials_dataframe(attrs=("number", "params", "value", "state", "user_attrs"))
        table.columns = [c.removeprefix("user_attrs_") for c in table.columns]
        table.to_csv(out / "trials.csv", index=False)

    finished = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
    completed = [t for t in finished if t.state == TrialState.COMPLETE]
    if not completed:
        raise LungscopeError(f"none of the {len(finished)} trial(s) completed; see {out / 'trials.csv'}")
    values = _write_best_config(study, config, out / "best_config.yaml")
    return {
        "study_name": study_name, "storage": storage, "sampler": sampler,
        "trials": len(finished), "completed": len(completed), "failed": len(finished) - len(completed),
        "best_trial": study.best_trial.number, "best_value": study.best_value, "best_params": values,
        "best_run": str(out / f"trial_{study.best_trial.number:03d}"),
        "best_config": str(out / "best_config.yaml"), "trials_csv": str(out / "trials.csv"),
    }
