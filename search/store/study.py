"""A search's Optuna study as the run folder persists it, read and closed without Ray.

The study lives in ``optuna_journal.log`` (Optuna's JournalStorage file: safe on NFS; optuna-dashboard opens
it); ``study.json`` names it and records its objectives and the warm start it had. Only the driver writes the
journal (the searcher runs in the driver), so one file suffices. Here: the names and user attributes the study
uses, the Optuna distributions of a search space's parameters, opening the study, a trial's best value as the
study holds it, and ``close_orphans``, which tells the study about trials a budget stopped. The searcher that
writes it during a search is ``search.raytune.tuner.StudySearch``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna

from search.spec.space import Param, SearchSpec, active_params
from search.store.results import TrialRecord, is_finite_number

STUDY_FILE = "study.json"
JOURNAL_FILE = "optuna_journal.log"
TUNE_TRIAL_ID = "tune_trial_id"  # the Optuna trial's user attribute naming its Tune trial
RANK_METRIC = "best_val_corr"  # trials are ranked (and Optuna is told) by their best epoch, not their last
EPOCH_METRIC = "val_corr"  # each epoch's score: the study's intermediate value at step = epoch
# user attributes of a trial imported by a warm start: the run it was trained in, its Tune trial id there
WARM_START_FROM = "warm_start_from"
SOURCE_TRIAL = "source_trial"


def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one searched parameter (a choice with branches: its options)."""
    if p.type == "categorical":
        return optuna.distributions.CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1))
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.type == "loguniform", step=p.step)


def distributions_for(spec: SearchSpec, params: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions of one point's keys in ``spec``'s space: what a trial with these ``params`` is added
    to the study with (a warm start): only the parameters of the options it chooses (``space.active_params``);
    every key of ``params`` must be one of them (``space.point_problem``)."""
    space = {p.key: distribution(p) for p in active_params(spec, params)}
    return {key: space[key] for key in params}


def study_directions(spec: SearchSpec) -> list[str]:
    """Optuna directions of the study: best_val_corr up, and with ``objective: val_corr+cost`` the cost down."""
    return ["maximize", "minimize"] if spec.settings.with_cost else ["maximize"]


def journal_storage(run_dir: Path) -> optuna.storages.JournalStorage:
    """The Optuna storage of a run: a journal file in the run folder."""
    backend = optuna.storages.journal.JournalFileBackend(str(run_dir / JOURNAL_FILE))
    return optuna.storages.JournalStorage(backend)


def load_study(run_dir: Path, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The persisted Optuna study of a run (for the report, importances and the dashboard); ``storage``: the
    run's journal storage when the caller holds it already (default: a new one)."""
    info = json.loads((run_dir / STUDY_FILE).read_text())
    return optuna.load_study(study_name=info["study_name"], storage=storage or journal_storage(run_dir))


def trial_best(trial: optuna.trial.FrozenTrial) -> float | None:
    """A finished trial's best validation correlation as its study holds it: a COMPLETE trial's first value
    (best_val_corr, in a two-objective study too), a PRUNED trial's best intermediate value (its best epoch's
    val_corr; a two-objective study holds none); None for other states, or when not finite.

    >>> pruned = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.2, 2: 0.1})
    >>> trial_best(pruned)
    0.2
    """
    if trial.state == optuna.trial.TrialState.COMPLETE and trial.values:
        value: float | None = trial.values[0]
    elif trial.state == optuna.trial.TrialState.PRUNED:
        value = max((v for v in trial.intermediate_values.values() if math.isfinite(v)), default=None)
    else:
        return None
    return value if value is not None and math.isfinite(value) else None


def close_orphans(run_dir: Path, records: list[TrialRecord], cost: str) -> int:
    """Close the Optuna trials still RUNNING after the whole search ended; returns how many.

    ``records``: the run's Tune trials (``results.load_trials``); ``cost``: ``search.cost``, read in a
    two-objective study. A time or compute budget stops the trials still running without telling the
    searcher; each is told here what ``StudySearch`` would have told it: the epochs of its results that the
    study lacks become intermediate values (one objective: the result that spent the budget may have reached
    no searcher), then COMPLETE with its best (and, with two objectives, its cost; FAIL without both) if it
    had trained to its end (record status ``done``), else PRUNED. One that reported nothing, or that failed,
    is marked FAIL: a driver killed right after the sampler proposed a trial, but before Tune saved that
    trial, leaves such a trial in the journal (on resume the restored sampler proposes it again under a new
    number). Call only when every Tune trial has ended (an interrupted run's RUNNING trials are still live).
    Trials a warm start imported are finished: never touched.
    """
    storage = journal_storage(run_dir)
    study = load_study(run_dir, storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    two = len(study.directions) > 1
    by_id = {r.trial_id: r for r in records}
    orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in orphans:
        record = by_id.get(trial.user_attrs.get(TUNE_TRIAL_ID, ""))
        curve = record.curve if record is not None else []
        if not two:  # Optuna keeps no intermediate values in a multi-objective study
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            for epoch, value in epoch_scores(curve):
                if epoch not in trial.intermediate_values:
                    storage.set_trial_intermediate_value(trial_id, epoch, value)
        values = _complete_values(record, cost if two else None) if record is not None else None
        if record is not None and record.status == "done" and values is not None:
            study.tell(trial.number, values)
        elif (record is None or record.status == "stopped") and (curve or trial.intermediate_values):
            study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


def epoch_scores(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(epoch, val_corr) of the per-epoch results ``rows`` that hold both (NaN kept: Optuna ranks it last)."""
    return [(int(row["epoch"]), float(row[EPOCH_METRIC])) for row in rows
            if is_number(row.get("epoch")) and is_number(row.get(EPOCH_METRIC))]


def _complete_values(record: TrialRecord, cost: str | None) -> list[float] | None:
    """What a trial that trained to its end is told: [best_val_corr], or with ``cost`` (two objectives)
    [best_val_corr, its cost]; None when one is missing or not finite."""
    values = [record.best_val_corr] if cost is None else [record.best_val_corr, record.cost(cost)]
    return values if all(is_finite_number(v) for v in values) else None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def trial_folder(trial_id: str) -> str:
    """The folder of Tune trial ``trial_id`` in its run folder."""
    return f"trial_{trial_id}"
