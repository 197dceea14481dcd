"""What the Optuna study is told about each trial (``tuner.StudySearch``, ``study.close_orphans``).

A trial that trained to its end is COMPLETE with its best score, one stopped early (ASHA, a budget) is PRUNED
with its per-epoch validation correlations as intermediate values (step = epoch), one that failed by itself
is FAIL; with two objectives a stopped trial is PRUNED with no value at all. Scripted results drive the
searcher without Ray; one real tiny search (the session's Ray, ASHA stopping a trial) is then read back
from its journal, with TPE's split of the trials spied on, and by what reads studies back: a warm start
(one and two objectives), export's note on the best imported trial, and the report.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from search.raytune.driver import run_search
from search.products.export import _warm_start
from search.products.report import write_report
from search.store.results import TrialRecord
from search.spec.space import load_run_spec, parse_search, with_data, with_settings
from search.raytune.tuner import make_searcher
from search.store.schema import FIT_DONE, TRIAL_ERROR
from search.store.study import (
    SOURCE_TRIAL, STUDY_FILE, TUNE_TRIAL_ID, close_orphans, journal_storage, load_study, trial_best,
)
from search.store.warm_start import plan_warm_start

ROOT = Path(__file__).resolve().parent.parent
COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                          optuna.trial.TrialState.FAIL)
MAX_T = 4


def _searcher(tmp_path: Path, **settings):
    """A StudySearch (random sampler, ASHA up to MAX_T epochs) over a journal study in ``tmp_path``."""
    raw = {"base": {"train": {"max_epochs": MAX_T}},
           "parameters": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "role": "nuisance"}},
           "search": {"num_trials": 8, "max_concurrent": 2, "sampler": "random",
                      "asha": {"grace_period": 1, "max_t": MAX_T}, **settings}}
    (tmp_path / STUDY_FILE).write_text(json.dumps({"study_name": "s"}))
    return make_searcher(parse_search(raw), tmp_path, "s")


def _epoch(epoch: int, val: float, best: float, **extra) -> dict:
    return {"epoch": epoch, "val_corr": val, "best_val_corr": best, "training_iteration": epoch,
            "train_seconds": 2.0, "n_parameters": 500, **extra}


def _by_tune_id(run_dir: Path) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs[TUNE_TRIAL_ID]: t for t in load_study(run_dir).trials}


def test_one_objective_study_is_told_how_far_each_trial_trained(tmp_path):
    searcher = _searcher(tmp_path)
    for tune_id in ("stopped", "capped", "early", "failed", "pending"):
        assert searcher.suggest(tune_id) is not None
    # ASHA stopped it at epoch 3: the result it stopped on reaches only on_trial_complete
    searcher.on_trial_result("stopped", _epoch(1, 0.1, 0.1))
    searcher.on_trial_result("stopped", _epoch(2, 0.3, 0.3))
    searcher.on_trial_complete("stopped", _epoch(3, 0.2, 0.3))
    for e in range(1, MAX_T):  # reached max_t: trained to its end
        searcher.on_trial_result("capped", _epoch(e, 0.1 * e, 0.1 * e))
    searcher.on_trial_complete("capped", _epoch(MAX_T, 0.35, 0.4))
    searcher.on_trial_result("early", _epoch(1, 0.25, 0.25))  # early stopping ended its fit at epoch 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # epoch 2 again after a restart: no warning, the first value stays
        searcher.on_trial_result("early", _epoch(2, 0.2, 0.25))
        searcher.on_trial_result("early", _epoch(2, 0.9, 0.9))
    searcher.on_trial_result("early", _epoch(2, 0.2, 0.25, **{FIT_DONE: 2.0}))
    searcher.on_trial_complete("early", _epoch(2, 0.2, 0.25, **{FIT_DONE: 2.0}))
    searcher.on_trial_result("failed", _epoch(1, 0.05, 0.05))
    searcher.on_trial_complete("failed", _epoch(1, 0.05, 0.05, **{TRIAL_ERROR: "ValueError: loss is nan"}))
    searcher.on_trial_complete("pending")  # stopped before it ran (Tune passes no result): no evidence for TPE

    told = _by_tune_id(tmp_path)
    assert {k: t.state for k, t in told.items()} == {"stopped": PRUNED, "capped": COMPLETE, "early": COMPLETE,
                                                     "failed": FAIL, "pending": FAIL}
    assert told["stopped"].intermediate_values == pytest.approx({1: 0.1, 2: 0.3, 3: 0.2})
    assert told["stopped"].value == pytest.approx(0.2)  # Optuna's value of a pruned trial: its last step's
    assert trial_best(told["stopped"]) == pytest.approx(0.3)
    assert told["capped"].value == pytest.approx(0.4)  # its best epoch, not its last
    assert told["capped"].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.35})
    assert told["early"].value == pytest.approx(0.25) and told["early"].intermediate_values == pytest.approx(
        {1: 0.25, 2: 0.2})
    assert told["failed"].values is None and told["failed"].intermediate_values == pytest.approx({1: 0.05})
    assert told["pending"].values is None and not told["pending"].intermediate_values


def test_tpe_counts_pruned_trials_behind_complete_ones_by_the_epoch_they_reached(tmp_path):
    searcher = _searcher(tmp_path)
    curves = {"complete": [0.1, 0.2, 0.3, 0.3], "at_1": [0.5], "at_2_low": [0.1, 0.15], "at_2_high": [0.1, 0.2]}
    for tune_id, curve in curves.items():
        searcher.suggest(tune_id)
        for e, v in enumerate(curve[:-1], 1):
            searcher.on_trial_result(tune_id, _epoch(e, v, max(curve[:e])))
        searcher.on_trial_complete(tune_id, _epoch(len(curve), curve[-1], max(curve)))
    study = load_study(tmp_path)
    number = {t.user_attrs[TUNE_TRIAL_ID]: t.number for t in study.trials}
    below, above = optuna.samplers._tpe.sampler._split_trials(study, study.get_trials(states=(COMPLETE, PRUNED)), 3)
    # the complete trial first, then pruned ones by the last epoch reached, then their value there
    assert [t.number for t in below] == sorted(number[k] for k in ("complete", "at_2_high", "at_2_low"))
    assert [t.number for t in above] == [number["at_1"]]  # the highest score, but after one epoch only


def test_two_objective_study_prunes_stopped_trials_without_values_and_tpe_samples_past_them(tmp_path):
    searcher = _searcher(tmp_path, objective="val_corr+cost", cost="train_seconds")
    for tune_id in ("stopped", "done", "no_cost"):
        searcher.suggest(tune_id)
    searcher.on_trial_result("stopped", _epoch(1, 0.1, 0.1))
    searcher.on_trial_complete("stopped", _epoch(2, 0.2, 0.2))
    for e in range(1, MAX_T):
        searcher.on_trial_result("done", _epoch(e, 0.1 * e, 0.1 * e, train_seconds=float(e)))
    searcher.on_trial_complete("done", _epoch(MAX_T, 0.3, 0.3, train_seconds=9.0))
    searcher.on_trial_complete("no_cost", {"epoch": 1, "best_val_corr": 0.2, FIT_DONE: 1.0})
    told = _by_tune_id(tmp_path)
    assert told["stopped"].state == PRUNED and told["stopped"].values is None
    assert not told["stopped"].intermediate_values  # Optuna keeps none with two objectives
    assert told["done"].state == COMPLETE and told["done"].values == pytest.approx([0.3, 2.5])  # median 1,2,3,9
    assert told["no_cost"].state == FAIL
    # multi-objective TPE's model, with a pruned trial among those it splits
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path),
                              sampler=optuna.samplers.TPESampler(n_startup_trials=1, seed=0))
    trial = study.ask()
    assert 1e-3 <= trial.suggest_float("train.lr", 1e-3, 1e-2, log=True) <= 1e-2


def _record(tune_id: str, status: str, epochs: list[float], best: float | None, path: Path) -> TrialRecord:
    curve = [{"epoch": e, "val_corr": v, "train_seconds": 3.0} for e, v in enumerate(epochs, 1)]
    return TrialRecord(tune_id, status, {}, best, len(epochs) or None, len(epochs), path, curve=curve)


def test_trials_a_budget_stopped_are_told_from_their_records(tmp_path):
    # Tune stops the trials still running without telling the searcher; the records hold every epoch
    searcher = _searcher(tmp_path)
    for tune_id in ("cut", "whole", "unrecorded", "silent"):
        searcher.suggest(tune_id)
    searcher.on_trial_result("cut", _epoch(1, 0.05, 0.05))
    searcher.on_trial_result("whole", _epoch(1, 0.1, 0.1))
    searcher.on_trial_result("unrecorded", _epoch(1, 0.03, 0.03))
    records = [_record("cut", "stopped", [0.05, 0.08, 0.07], 0.08, tmp_path),
               _record("whole", "done", [0.1, 0.2], 0.2, tmp_path)]
    assert close_orphans(tmp_path, records, "train_seconds") == 4
    told = _by_tune_id(tmp_path)
    assert told["cut"].state == PRUNED and told["cut"].intermediate_values == pytest.approx({1: 0.05, 2: 0.08, 3: 0.07})
    assert told["whole"].state == COMPLETE and told["whole"].value == pytest.approx(0.2)
    assert told["whole"].intermediate_values == pytest.approx({1: 0.1, 2: 0.2})
    assert told["unrecorded"].state == PRUNED and told["unrecorded"].value == pytest.approx(0.03)
    assert told["silent"].state == FAIL  # reported nothing
    assert close_orphans(tmp_path, records, "train_seconds") == 0


def test_two_objective_orphans_are_pruned_or_told_score_and_cost(tmp_path):
    searcher = _searcher(tmp_path, objective="val_corr+cost", cost="train_seconds")
    for tune_id in ("cut", "whole", "whole_no_score"):
        searcher.suggest(tune_id)
    records = [_record("cut", "stopped", [0.05], 0.05, tmp_path), _record("whole", "done", [0.1, 0.2], 0.2, tmp_path),
               _record("whole_no_score", "done", [0.1], None, tmp_path)]
    assert close_orphans(tmp_path, records, "train_seconds") == 3
    told = _by_tune_id(tmp_path)
    assert told["cut"].state == PRUNED and told["cut"].values is None and not told["cut"].intermediate_values
    assert told["whole"].values == pytest.approx([0.2, 3.0])
    assert told["whole_no_score"].state == FAIL


# ------------------------------------------------------------------------------------- a real search
@pytest.fixture(scope="module")
def pruning_run(ray_session, tiny_data, tmp_path_factory):
    """configs/search_tiny.yaml, 3 trials one at a time, ASHA from epoch 1 up to 4 epochs. The first two are
    enqueued: a point that scores about 0.08 after one epoch on the tiny scans, then one that scores about
    0.015 (a large learning rate), which ASHA stops at its first rung against the first; the third is TPE's
    (after 2 startup trials), whose split of the trials is recorded."""
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["parameters"]["train.lr"]["low"] = 1e-5
    good = {"train.lr": 3e-5, "model.core.hidden_channels": 4, "model.readout.gauss_type": "isotropic"}
    poor = {"train.lr": 2e-2, "model.core.hidden_channels": 8, "model.readout.gauss_type": "full"}
    raw["search"].update(num_trials=3, max_concurrent=1, start_with=[good, poor],
                         asha={"grace_period": 1, "reduction_factor": 2, "max_t": MAX_T})
    spec = with_data(parse_search(raw), [str(tiny_data.data_dir)])
    splits: list[list[optuna.trial.TrialState]] = []
    original = optuna.samplers._tpe.sampler._split_trials

    def spy(study, trials, n_below):
        splits.append([t.state for t in trials])
        return original(study, trials, n_below)

    mp = pytest.MonkeyPatch()
    mp.setattr(optuna.samplers._tpe.sampler, "_split_trials", spy)
    try:
        run_dir = tmp_path_factory.mktemp("pruning") / "run"
        records = run_search(spec, run_dir, progress=False, live_every_s=1e9)
    finally:
        mp.undo()
    return run_dir, records, splits


def test_a_real_search_tells_stopped_trials_pruned_with_their_curves(pruning_run):
    run_dir, records, splits = pruning_run
    assert len(records) == 3 and {r.status for r in records} <= {"done", "stopped"}, [(r.trial_id, r.status, r.error)
                                                                                      for r in records]
    told = _by_tune_id(run_dir)
    assert set(told) == {r.trial_id for r in records}
    poor = next(r for r in records if r.params["train.lr"] == pytest.approx(2e-2))
    assert poor.status == "stopped" and poor.epochs == 1 and told[poor.trial_id].state == PRUNED
    for r in records:
        t = told[r.trial_id]
        # every epoch it ran, the last one (the result ASHA stopped it on) included
        assert t.intermediate_values == pytest.approx({int(row["epoch"]): row["val_corr"] for row in r.curve})
        if r.status == "done":
            assert t.state == COMPLETE and t.value == pytest.approx(r.best_val_corr)
        else:
            assert t.state == PRUNED and r.epochs < MAX_T
            assert t.value == pytest.approx(r.curve[-1]["val_corr"]) and trial_best(t) == pytest.approx(
                max(row["val_corr"] for row in r.curve))
    assert any(r.status == "done" for r in records)
    study = load_study(run_dir)
    assert len(study.get_trials(states=(COMPLETE, PRUNED))) == 3 and not study.get_trials(states=(FAIL,))
    # TPE's model ran for the trials after the 2 startup ones, with the pruned trial among those it split
    assert splits and PRUNED in splits[0] and COMPLETE in splits[0]


def test_warm_start_export_and_report_read_pruned_trials(pruning_run, tmp_path):
    run_dir, records, _ = pruning_run
    earlier, spec = _by_tune_id(run_dir), load_run_spec(run_dir)
    for objective in ("val_corr", "val_corr+cost"):
        new_spec = with_settings(spec, objective=objective, cost="parameters")
        plan = plan_warm_start(run_dir, new_spec)
        assert plan.finished == 3 and len(plan.trials) == 3 and not plan.left_out
        folder = tmp_path / objective
        folder.mkdir()
        (folder / STUDY_FILE).write_text(json.dumps({"study_name": "s", "warm_start": plan.summary()}))
        make_searcher(new_spec, folder, "s", warm_start=plan)
        imported = load_study(folder).get_trials(states=(COMPLETE, PRUNED))  # (start_with's points wait)
        assert len(imported) == 3
        for t in imported:  # as they were told there: the stopped one PRUNED, with its curve if one objective
            source = earlier[t.user_attrs[SOURCE_TRIAL]]
            assert t.state == source.state
            if objective == "val_corr":
                assert t.intermediate_values == pytest.approx(source.intermediate_values)
                assert t.values == pytest.approx(source.values)
            elif t.state == PRUNED:
                assert t.values is None and not t.intermediate_values
        assert sum(t.state == PRUNED for t in imported) == sum(r.status == "stopped" for r in records) == 1
        best = _warm_start(folder)["best_imported"]  # export's note compares this run with the best imported
        assert best["best_val_corr"] == pytest.approx(max(trial_best(t) or -1.0 for t in imported))
    out = write_report(run_dir, tmp_path / "report")
    assert (out / "history.png").stat().st_size > 0  # the pruned trial drawn as stopped early
    assert "PRUNED for one stopped early" in (out / "report.md").read_text()
    assert "not computed" not in (out / "report.md").read_text()  # importances: 2 COMPLETE trials suffice
