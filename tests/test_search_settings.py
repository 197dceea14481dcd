"""Search settings that choose the method and its budget: sampler, scheduler, compute budget.

Validation (one message style, naming the key), the Ray/Optuna objects they make, the stopper that enforces
the compute budget and the epoch cap, and one real tiny search (random sampler, FIFO, a small compute budget)
with the session's Ray on the tiny synthetic scans.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from search.raytune.driver import run_search
from search.spec.space import load_run_spec, parse_search, with_data, with_settings
from search.raytune.tuner import SearchStopper, SecondsASHA, asha_rungs, make_sampler, make_scheduler
from search.store.results import compute_spent
from search.store.schema import FIT_DONE, TRIAL_ERROR
from search.store.study import TUNE_TRIAL_ID, load_study
from sensorium.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _search(**settings) -> dict:
    return {
        "base": {"train": {"max_epochs": 6}},
        "parameters": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "role": "nuisance"}},
        "search": {"num_trials": 4, "max_concurrent": 2, "asha": {"grace_period": 1, "max_t": 6}, **settings},
    }


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"sampler": "grid"}, "search.sampler='grid': expected one of ['tpe', 'random']"),
        ({"scheduler": "hyperband"}, "search.scheduler='hyperband': expected one of ['asha', 'fifo']"),
        ({"compute_budget_s": -5}, "search.compute_budget_s=-5.0: expected > 0 or null"),
        ({"compute_budget_s": 0}, "search.compute_budget_s=0.0: expected > 0 or null"),
        ({"compute_budget_s": "an hour"}, "search.compute_budget_s='an hour': expected a number"),
        ({"asha": {"rungs_in": "minutes"}},
         "search.asha.rungs_in='minutes': expected one of ['epochs', 'training_seconds']"),
    ],
)
def test_unknown_sampler_or_scheduler_and_a_bad_budget_are_refused(settings, message):
    with pytest.raises(ConfigError) as err:
        parse_search(_search(**settings))
    assert message in str(err.value)


def test_defaults_are_tpe_and_asha_and_the_choices_build_their_objects():
    default = parse_search(_search())
    assert (default.settings.sampler, default.settings.scheduler, default.settings.compute_budget_s) == (
        "tpe", "asha", None)
    assert isinstance(make_sampler(default), optuna.samplers.TPESampler)
    assert isinstance(make_scheduler(default), ASHAScheduler)
    assert asha_rungs(default) == [1, 2, 4, 6]
    spec = parse_search(_search(sampler="random", scheduler="fifo", compute_budget_s=90))
    assert isinstance(make_sampler(spec), optuna.samplers.RandomSampler)
    assert isinstance(make_scheduler(spec), FIFOScheduler)
    assert asha_rungs(spec) == [6]  # no rungs under FIFO: only the epoch cap checkpoints
    assert parse_search(spec.to_dict()) == spec  # saved in the run's search.yaml and read back by resume
    assert with_settings(spec, sampler="tpe").settings.sampler == "tpe"


def test_rungs_in_training_seconds_judge_an_expensive_trial_after_the_compute_of_a_typical_one():
    """Three trials at 1 s an epoch reach the rungs at 1, 3 and 9 typical epochs; a trial at 10 s an epoch has
    spent 10 typical epochs after its first: ASHA on seconds compares it at rung 9 there and stops it (its
    score is below the top third), where ASHA on epochs would let it spend 30 s before its first rung."""
    spec = parse_search(_search(asha={"grace_period": 1, "reduction_factor": 3, "max_t": 6,
                                      "rungs_in": "training_seconds"}))
    scheduler = make_scheduler(spec)
    assert isinstance(scheduler, SecondsASHA) and asha_rungs(spec) == [1, 2, 3, 4, 5, 6]  # a checkpoint each epoch
    by_epochs = ASHAScheduler(time_attr="epoch", metric="val_corr", mode="max", max_t=27, grace_period=3,
                              reduction_factor=3)
    trials = {name: SimpleNamespace(trial_id=name) for name in ("a", "b", "c", "dear")}
    for sched in (scheduler, by_epochs):
        for t in trials.values():
            sched.on_trial_add(None, t)
    for name, score in (("a", 0.3), ("b", 0.2), ("c", 0.1)):
        for epoch in range(1, 10):
            result = {"epoch": epoch, "val_corr": score, "train_seconds": 1.0}
            scheduler.on_trial_result(None, trials[name], result)  # b and c stop at a rung: a passes them all
            by_epochs.on_trial_result(None, trials[name], result)
    dear = {"epoch": 1, "val_corr": 0.15, "train_seconds": 10.0}
    assert by_epochs.on_trial_result(None, trials["dear"], dear) == "CONTINUE"
    assert scheduler.on_trial_result(None, trials["dear"], dear) == "STOP"
    assert scheduler._with_units(trials["a"], {"epoch": 9, "train_seconds": 1.0})[SecondsASHA.UNITS] == 9.0
    # a restart reports epoch 9 again: counted once; the unit is the median first epoch (1, 1, 1, 10 -> 1 s)
    assert scheduler._with_units(trials["a"], {"epoch": 9, "train_seconds": 2.0})[SecondsASHA.UNITS] == 10.0
    assert SecondsASHA.UNITS not in scheduler._with_units(SimpleNamespace(trial_id="e"), {"epoch": 0})


def test_stopper_counts_each_epoch_once_caps_epochs_and_stops_the_search_at_the_budget():
    stopper = SearchStopper(max_t=3, budget_s=10.0)
    assert not stopper("a", {"epoch": 1, "train_seconds": 4.0})
    assert not stopper("a", {"epoch": 1, "train_seconds": 4.0, FIT_DONE: 1.0})  # repeats epoch 1: not counted
    assert not stopper("b", {"epoch": 0, "train_seconds": 9.0, TRIAL_ERROR: "x"})  # a failure row: not counted
    assert stopper.spent() == (4.0, 1) and not stopper.stop_all()
    assert not stopper("b", {"epoch": 1, "train_seconds": 3.0})
    assert not stopper("a", {"epoch": 1, "train_seconds": 5.0})  # epoch 1 again after a restart: replaces
    assert stopper.spent() == (8.0, 2) and not stopper.stop_all()
    assert stopper("b", {"epoch": 3, "train_seconds": 2.5})  # the epoch cap stops trial b
    assert stopper.spent() == (10.5, 3) and stopper.stop_all()
    assert not SearchStopper(max_t=3, budget_s=None).stop_all()


def test_stopper_of_a_resumed_search_counts_the_epochs_already_in_the_run_folder(tmp_path):
    trial = tmp_path / "trial_x"
    trial.mkdir()
    rows = [{"epoch": 1, "train_seconds": 6.0}, {"epoch": 2, "train_seconds": 5.0},
            {"epoch": 2, "train_seconds": 5.0, FIT_DONE: 2.0}]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stopper = SearchStopper(max_t=8, budget_s=10.0)  # as Tune restores it: counted nothing yet
    trials = [SimpleNamespace(trial_id="x", path=str(trial)), SimpleNamespace(trial_id="y", path=str(tmp_path / "y"))]
    stopper.on_step_begin(0, trials)
    assert stopper.spent() == (11.0, 2) and stopper.stop_all()
    stopper.on_step_begin(1, trials)  # read once
    assert stopper.spent() == (11.0, 2)


def test_a_random_fifo_search_ends_normally_when_its_compute_budget_is_spent(ray_session, tiny_data, tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["overrides"]["train.max_epochs"] = 6
    # FIFO: no rungs, but asha.max_t (3 < train.max_epochs) still caps every trial
    raw["search"].update(num_trials=30, max_concurrent=2, sampler="random", scheduler="fifo", compute_budget_s=1.5,
                         asha={"grace_period": 1, "reduction_factor": 2, "max_t": 3})
    spec = with_data(parse_search(raw), [str(tiny_data.data_dir)])
    run_dir = tmp_path / "run"
    records = run_search(spec, run_dir, progress=False, live_every_s=1e9)  # no SearchInterrupted: budget, not a stop
    seconds, epochs = compute_spent(records)
    assert seconds >= 1.5 and epochs >= 1
    assert 1 <= len(records) < 30  # the budget, not the trial count, ended it
    assert {r.status for r in records} <= {"done", "stopped"}, [(r.trial_id, r.status, r.error) for r in records]
    assert all(r.epochs == 3 for r in records if r.status == "done")  # no early stopping; capped at max_t
    assert load_run_spec(run_dir).settings.sampler == "random"
    study = load_study(run_dir)  # the same study as a TPE search: every trial told, none left running
    by_id = {r.trial_id: r for r in records}
    assert len(study.trials) == len(records)
    for t in study.trials:  # those the budget cut short are PRUNED, with each epoch they ran
        r = by_id[t.user_attrs[TUNE_TRIAL_ID]]
        stopped = optuna.trial.TrialState.PRUNED if r.curve else optuna.trial.TrialState.FAIL  # FAIL: never ran
        assert t.state == (optuna.trial.TrialState.COMPLETE if r.status == "done" else stopped)
        assert t.intermediate_values == pytest.approx({int(row["epoch"]): row["val_corr"] for row in r.curve})
        if r.status == "done":
            assert t.value == pytest.approx(r.best_val_corr)


def test_a_search_with_rungs_in_training_seconds_stops_trials_and_tells_the_study(ray_session, tiny_data, tmp_path):
    """The real path of ``asha.rungs_in: training_seconds``: Ray calls SecondsASHA with the trials' results; with
    6 trials of 6 epochs at grace 1 and reduction 3, some stop early (PRUNED in the study, with a
    checkpoint), the others train to the cap."""
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["overrides"]["train.max_epochs"] = 6
    raw["search"].update(num_trials=6, max_concurrent=2, asha={"grace_period": 1, "reduction_factor": 3, "max_t": 6,
                                                               "rungs_in": "training_seconds"})
    spec = with_data(parse_search(raw), [str(tiny_data.data_dir)])
    records = run_search(spec, tmp_path / "run", progress=False, live_every_s=1e9)
    assert {r.status for r in records} <= {"done", "stopped"}, [(r.trial_id, r.status, r.error) for r in records]
    stopped = [r for r in records if r.status == "stopped"]
    assert stopped and all(r.epochs < 6 for r in stopped) and any(r.status == "done" for r in records)
    assert all(any(r.path.glob("checkpoint_*")) for r in stopped)  # every epoch checkpoints, rungs or not
    states = {t.user_attrs[TUNE_TRIAL_ID]: t.state for t in load_study(tmp_path / "run").trials}
    assert all(states[r.trial_id] == optuna.trial.TrialState.PRUNED for r in stopped)


def test_every_metric_a_search_reads_is_one_of_fit_s_epoch_metrics():
    """The per-epoch metric names live in one schema (EpochMetrics); the search's choices name its fields."""
    from typing import get_args, get_type_hints

    from search.raytune.callbacks import HPARAM_METRICS
    from search.store.results import COSTS
    from search.spec.settings import SearchSettings
    from search.store.study import RANK_METRIC
    from sensorium.training.rundir import CURVE_FIELDS

    asha = get_args(get_type_hints(SearchSettings)["metric"])
    assert set(asha) | {RANK_METRIC} | set(HPARAM_METRICS) | {field for field, _ in COSTS.values()} <= set(CURVE_FIELDS)
