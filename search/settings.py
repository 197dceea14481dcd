"""Search settings: trial count, concurrency, resources per trial, budgets, seed, sampler, scheduler, ASHA, TPE.

The ``search:`` section of a search file. Plain dataclasses, checked when built; no Ray or Optuna here.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from sensorium.errors import ConfigError


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping on epochs: rungs at grace_period * reduction_factor**k, up to max_t epochs.

    ``max_t`` is every trial's epoch cap under either scheduler (with ``scheduler: fifo`` there are no rungs,
    but a trial still stops at max_t epochs, or earlier by its own early stopping or train.max_epochs).
    """

    grace_period: int = 2
    reduction_factor: float = 2.0
    max_t: int = 20


@dataclass(frozen=True)
class TpeSettings:
    """Optuna TPE settings, pinned because Optuna 5.0 changed its defaults."""

    n_startup_trials: int = 5  # random trials before TPE models the history
    multivariate: bool = True
    constant_liar: bool = True  # running trials count as pessimistic results, so parallel trials differ


@dataclass(frozen=True)
class SearchSettings:
    num_trials: int = 12
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # a fraction lets several trials share one GPU
    time_budget_s: float | None = None  # stop starting/continuing trials after this many seconds
    # Stop the search once the trials' summed training time (train_seconds of every epoch of every trial)
    # reaches this: a budget in compute, not wall time, so it means the same at any concurrency and is fair
    # between cheap and expensive architectures. Trials still running are stopped, like the time budget.
    compute_budget_s: float | None = None
    seed: int = 0  # seeds the sampler (trials themselves use the config's seed)
    # Who proposes trials: Optuna's TPE, or Optuna's uniform RandomSampler (the baseline a search must beat);
    # both go through the same Optuna study, so the report and resume work alike.
    # asha: stop weak trials early at the rungs; fifo: no early stopping, every trial runs to asha.max_t
    # epochs (or its own early stopping).
    # Defaults tpe + asha, from bench/bench_search.py (results/bench_search.md: 180 s of training per search,
    # 3 seeds, best val corr mean ± sd): tpe+asha 0.2891 ± 0.0049, tpe+fifo 0.2588 ± 0.0430, random+asha
    # 0.2532 ± 0.0361, random+fifo 0.2532 ± 0.0361, Ray Tune's BOHB 0.2500 ± 0.0178; only tpe+asha reached
    # random+fifo's final best in every seed. Neither half alone helped (our reading: ASHA's cheap extra
    # trials feed TPE's model; random search draws more configs with them but no better ones).
    sampler: Literal["tpe", "random"] = "tpe"
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: Literal["val_corr", "best_val_corr"] = "val_corr"  # what ASHA compares at its rungs
    # restarts of a trial from its latest checkpoint after its worker or node died (a trial's own failure,
    # e.g. a non-finite loss, is never retried)
    max_retries: int = 3
    asha: AshaSettings = field(default_factory=AshaSettings)
    tpe: TpeSettings = field(default_factory=TpeSettings)
    # Parameter sets evaluated first (Optuna enqueues them), e.g. the untuned baseline's values;
    # searched keys left out of a set are sampled.
    start_with: tuple[dict[str, Any], ...] = ()


def build_settings(raw: Any) -> SearchSettings:
    """Validate the ``search:`` mapping of a search file; errors name the key (``search.asha.max_t``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"search: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(SearchSettings)
    check_keys(raw, set(hints), "search.")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"search.{name}"
        if name in ("asha", "tpe"):
            cls = AshaSettings if name == "asha" else TpeSettings
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping, got {value!r}")
            check_keys(value, set(typing.get_type_hints(cls)), where + ".")
            sub = {k: _typed(v, typing.get_type_hints(cls)[k], f"{where}.{k}") for k, v in value.items()}
            kwargs[name] = cls(**sub)
        elif name == "start_with":
            if not isinstance(value, list) or any(not isinstance(v, dict) for v in value):
                raise ConfigError(f"{where}: expected a list of mappings from searched keys to values")
            kwargs[name] = tuple(dict(v) for v in value)
        else:
            kwargs[name] = _typed(value, hints[name], where)
    s = SearchSettings(**kwargs)
    checks = [
        (s.num_trials >= 1, "num_trials", s.num_trials, ">= 1"),
        (s.max_concurrent >= 1, "max_concurrent", s.max_concurrent, ">= 1"),
        (s.cpus_per_trial > 0, "cpus_per_trial", s.cpus_per_trial, "> 0"),
        (s.gpus_per_trial >= 0, "gpus_per_trial", s.gpus_per_trial, ">= 0"),
        (s.time_budget_s is None or s.time_budget_s > 0, "time_budget_s", s.time_budget_s, "> 0 or null"),
        (s.compute_budget_s is None or s.compute_budget_s > 0, "compute_budget_s", s.compute_budget_s, "> 0 or null"),
        (s.asha.grace_period >= 1, "asha.grace_period", s.asha.grace_period, ">= 1"),
        (s.asha.reduction_factor > 1, "asha.reduction_factor", s.asha.reduction_factor, "> 1"),
        (s.asha.max_t >= s.asha.grace_period, "asha.max_t", s.asha.max_t, ">= asha.grace_period"),
        (s.tpe.n_startup_trials >= 0, "tpe.n_startup_trials", s.tpe.n_startup_trials, ">= 0"),
        (s.max_retries >= 0, "max_retries", s.max_retries, ">= 0"),
    ]
    for ok, name, value, expected in checks:
        if not ok:
            raise ConfigError(f"search.{name}={value}: expected {expected}")
    if s.gpus_per_trial > 1 and s.gpus_per_trial != int(s.gpus_per_trial):
        raise ConfigError(f"search.gpus_per_trial={s.gpus_per_trial}: above 1 it must be a whole number")
    return s


def plain_settings(s: SearchSettings) -> dict[str, Any]:
    """Plain data that ``build_settings`` reads back."""
    out = dataclasses.asdict(s)
    out["start_with"] = [dict(p) for p in s.start_with]
    return out


def _typed(value: Any, tp: Any, where: str) -> Any:
    """Check a settings value against its annotation (no coercion beyond int -> float)."""
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}={value!r}: expected one of {list(get_args(tp))}")
        return value
    if get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected true or false")
        return value
    parsed = number(value, where, integer=tp is int)
    if parsed is None:
        raise ConfigError(f"{where}: expected a value")
    return parsed


def number(value: Any, where: str, integer: bool) -> Any:
    """``value`` as int/float (YAML's '1e-3' strings included), or None; anything else is an error."""
    if value is None:
        return None
    if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r}: expected a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}={value!r}: expected a number")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}={value!r}: expected an integer")
        return int(value)
    return float(value)


def check_keys(raw: dict[str, Any], allowed: set[str], prefix: str) -> None:
    """Unknown keys are an error naming the first one and listing the valid ones."""
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}'; valid keys here: {', '.join(sorted(allowed))}")
