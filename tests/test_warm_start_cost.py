"""Warm start (``run --warm-start``) and the cost-aware search (``search.objective: val_corr+cost``).

Two real tiny searches with the session's Ray, both warm-started from conftest's ``finished_run`` (2 trials):
a one-objective one whose lr range is narrowed so that one earlier point falls outside it, and a
two-objective one (cost: parameters). Pure parts (costs, the front, ``--pick``) and the searcher's and
``close_orphans``' handling of two objectives are tested without Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from search.raytune.driver import resume_search, run_search
from search.products.export import export_best, read_best_config
from search.products.report import pareto_front, write_report
from search.store.results import TrialRecord, load_trials, parse_pick, pick_trial, trial_cost
from search.spec.space import parse_search, with_data
from search.raytune.tuner import make_searcher
from search.store.schema import FIT_DONE
from search.store.study import (
    SOURCE_TRIAL, STUDY_FILE, TUNE_TRIAL_ID, WARM_START_FROM, close_orphans, journal_storage, load_study,
)
from search.store.warm_start import OUTSIDE, plan_warm_start
from sensorium.cli import main
from sensorium.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
FINISHED = (COMPLETE, PRUNED)  # trained to their end, or stopped early by ASHA


def _raw(**search) -> dict:
    """configs/search_tiny.yaml (the keys ``finished_run`` searched) with 2-epoch trials."""
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["overrides"]["train.max_epochs"] = 2
    raw["search"].update(asha={"grace_period": 1, "reduction_factor": 2, "max_t": 2}, **search)
    return raw


def _spec(raw: dict, data_dir: Path):
    return with_data(parse_search(raw), [str(data_dir)])


def _earlier_lrs(run_dir: Path) -> list[float]:
    return sorted(t.params["train.lr"] for t in load_study(run_dir).get_trials(states=FINISHED))


# ------------------------------------------------------------------------------------------ warm start
@pytest.fixture(scope="module")
def warm_run(ray_session, tiny_data, finished_run, tmp_path_factory):
    """A 2-trial search warm-started from ``finished_run``, whose lowest lr is outside the new lr range;
    every call of TPE's model (``TPESampler._sample``) is recorded with the study's finished trials then (COMPLETE
    and PRUNED: TPE counts both)."""
    lrs = _earlier_lrs(finished_run)
    assert len(lrs) == 2 and lrs[0] < lrs[1]
    raw = _raw(num_trials=2, max_concurrent=1, tpe={"n_startup_trials": 1, "multivariate": True, "constant_liar": True})
    raw["parameters"]["train.lr"]["low"] = (lrs[0] * lrs[1]) ** 0.5  # between the two earlier values
    spec = _spec(raw, tiny_data.data_dir)
    plan = plan_warm_start(finished_run, spec)
    calls: list[tuple[int, int]] = []
    original = optuna.samplers.TPESampler._sample

    def spy(self, study, trial, search_space):
        calls.append((trial.number, len(study.get_trials(deepcopy=False, states=FINISHED))))
        return original(self, study, trial, search_space)

    mp = pytest.MonkeyPatch()
    mp.setattr(optuna.samplers.TPESampler, "_sample", spy)
    try:
        run_dir = tmp_path_factory.mktemp("warm") / "run"
        records = run_search(spec, run_dir, progress=False, live_every_s=1e9, warm_start=plan)
    finally:
        mp.undo()
    return run_dir, records, plan, calls


def test_imported_trials_come_first_and_tpe_makes_the_first_proposal(warm_run, finished_run):
    run_dir, records, plan, calls = warm_run
    assert plan.finished == 2 and len(plan.trials) == 1 and plan.left_out == {OUTSIDE: 1}
    assert "train.lr=" in plan.example and "outside its search range" in plan.example
    study = load_study(run_dir)
    imported = [t for t in study.trials if WARM_START_FROM in t.user_attrs]
    own = [t for t in study.trials if TUNE_TRIAL_ID in t.user_attrs]
    assert [t.number for t in imported] == [0] and len(own) == 2 == len(records)
    assert min(t.number for t in own) == 1
    assert max(t.datetime_start for t in imported) <= min(t.datetime_start for t in own)
    earlier = {t.user_attrs[TUNE_TRIAL_ID]: t for t in load_study(finished_run).trials}
    source = earlier[imported[0].user_attrs[SOURCE_TRIAL]]  # marked with the run and trial it came from
    assert imported[0].user_attrs[WARM_START_FROM] == str(finished_run.resolve())
    assert imported[0].params == source.params and imported[0].value == pytest.approx(source.value)
    assert imported[0].state == source.state  # stopped early there: PRUNED here too, with its curve
    assert imported[0].intermediate_values == pytest.approx(source.intermediate_values)
    # n_startup_trials (1) <= imported (1): the first new trial is already TPE's model's proposal
    assert calls and calls[0] == (1, 1)
    info = json.loads((run_dir / STUDY_FILE).read_text())["warm_start"]
    assert info["imported"] == 1 and info["left_out"] == {OUTSIDE: 1} and info["from"] == str(finished_run.resolve())
    by_id = {r.trial_id: r for r in records}
    assert all(t.state == (COMPLETE if by_id[t.user_attrs[TUNE_TRIAL_ID]].status == "done" else PRUNED) for t in own)


def test_export_report_and_resume_of_a_warm_started_run(warm_run, finished_run):
    run_dir, records, _, _ = warm_run
    _, prov = read_best_config(export_best(run_dir))
    assert prov["trial_id"] in {r.trial_id for r in records} and prov["origin"] == "this run"
    ws = prov["warm_start"]
    assert ws["from"] == str(finished_run.resolve()) and ws["imported"] == 1
    assert ws["best_imported"]["run"] == str(finished_run.resolve())
    report = (write_report(run_dir) / "report.md").read_text()
    assert "## Warm start" in report and "1 of its 2 finished trials imported" in report
    resume_search(run_dir, progress=False)  # a finished run: nothing to run, and nothing imported twice
    study = load_study(run_dir)
    assert sum(WARM_START_FROM in t.user_attrs for t in study.trials) == 1 and len(study.trials) == 3


def test_a_space_with_other_keys_is_refused_before_ray_starts(finished_run, tiny_data, tmp_path):
    raw = _raw()
    raw["parameters"]["model.core.hidden_kern"] = {"type": "int", "low": 3, "high": 5, "step": 2, "role": "scientific"}
    with pytest.raises(UserError, match=r"only there: none; only here: model.core.hidden_kern"):
        plan_warm_start(finished_run, _spec(raw, tiny_data.data_dir))
    with pytest.raises(UserError, match="not a search run folder"):
        plan_warm_start(tmp_path, _spec(_raw(), tiny_data.data_dir))
    search_file = tmp_path / "search.yaml"
    search_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sensorium.cli", "run", str(search_file), "--data", str(tiny_data.data_dir),
           "--out", str(out), "--warm-start", str(finished_run)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --warm-start ") and "hidden_kern" in lines[0]
    assert not out.exists()  # refused before Ray and before the run folder


# ------------------------------------------------------------------------------------ cost-aware search
@pytest.fixture(scope="module")
def cost_run(ray_session, tiny_data, finished_run, tmp_path_factory):
    """A 3-trial two-objective search (cost: parameters), warm-started from the one-objective ``finished_run``."""
    spec = _spec(_raw(num_trials=3, max_concurrent=2, objective="val_corr+cost", cost="parameters"), tiny_data.data_dir)
    plan = plan_warm_start(finished_run, spec)
    run_dir = tmp_path_factory.mktemp("cost") / "run"
    return run_dir, run_search(spec, run_dir, progress=False, live_every_s=1e9, warm_start=plan)


def test_two_objective_study_is_told_score_and_cost(cost_run, finished_run):
    run_dir, records = cost_run
    study = load_study(run_dir)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    by_id = {r.trial_id: r for r in records}
    own = [t for t in study.trials if TUNE_TRIAL_ID in t.user_attrs]
    assert len(own) == 3 and {r.status for r in records} <= {"done", "stopped"}
    for t in own:  # trained to its end: score and cost; stopped early: PRUNED with no values at all
        r = by_id[t.user_attrs[TUNE_TRIAL_ID]]
        assert t.state == (COMPLETE if r.status == "done" else PRUNED) and not t.intermediate_values
        if r.status == "done":
            assert t.values == pytest.approx([r.best_val_corr, r.cost("parameters")])
        else:
            assert t.values is None
    assert len({r.cost("parameters") for r in records}) >= 1 and all(r.cost("parameters") > 100 for r in records)
    # the one-objective earlier run's trials came in with their parameter counts from their results
    earlier = {r.trial_id: r for r in load_trials(finished_run)}
    imported = [t for t in study.trials if WARM_START_FROM in t.user_attrs]
    assert len(imported) == 2 and max(t.number for t in imported) < min(t.number for t in own)
    for t in imported:  # its PRUNED ones as PRUNED, without the curve a two-objective study cannot hold
        r = earlier[t.user_attrs[SOURCE_TRIAL]]
        assert t.state == (COMPLETE if r.status == "done" else PRUNED) and not t.intermediate_values
        if r.status == "done":
            assert t.values == pytest.approx([r.best_val_corr, r.cost("parameters")])


def test_report_draws_the_pareto_front_and_export_picks_the_cheapest_near_best(cost_run, capsys):
    run_dir, records = cost_run
    out = write_report(run_dir)
    report = (out / "report.md").read_text()
    assert (out / "pareto.png").stat().st_size > 0 and "![pareto.png](pareto.png)" in report
    assert "## Pareto front: validation correlation vs cost" in report
    points = [(r.best_val_corr, r.cost("parameters")) for r in records if r.ranked]
    front = [r for r in records if r.ranked][pareto_front(points)[0]]  # the cheapest of the front
    assert f"| `{front.trial_id}` | {front.best_val_corr:.4f} |" in report

    path = export_best(run_dir, tmp := run_dir / "cheap.yaml", pick="cheapest:0.05")
    assert path == tmp
    _, prov = read_best_config(path)
    top = max(r.best_val_corr for r in records if r.ranked)
    near = [r for r in records if r.ranked and r.best_val_corr >= top - 0.05]
    cheapest = min(near, key=lambda r: (r.cost("parameters"), -r.best_val_corr))
    assert prov["trial_id"] == cheapest.trial_id and prov["pick"] == "cheapest:0.05"
    assert prov["cost"] == {"kind": "parameters", "value": cheapest.cost("parameters"), "unit": "parameters"}
    assert all(r.cost("parameters") >= cheapest.cost("parameters") for r in near)

    capsys.readouterr()
    assert main(["export", str(run_dir), "--pick", "cheapest:x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --pick 'cheapest:x': expected best, cheapest or cheapest:TOL")


# ------------------------------------------------------------------------------------------ pure parts
@pytest.mark.parametrize("text", ["cheap", "cheapest:", "cheapest:-0.1", "cheapest:x", "cheapest:nan", "best:0.1", ""])
def test_bad_pick_values_are_refused_naming_the_value(text):
    with pytest.raises(UserError, match=r"--pick .*: expected best, cheapest or cheapest:TOL"):
        parse_pick(text)


def test_pick_costs_and_the_front():
    assert parse_pick("best") == ("best", 0.0) and parse_pick("cheapest") == ("cheapest", 0.01)
    assert parse_pick("cheapest:0.05") == ("cheapest", 0.05)
    rows = [{"train_seconds": 9.0, "n_parameters": 50}, {"train_seconds": 1.0, "n_parameters": 50},
            {"train_seconds": 2.0, "n_parameters": 50}]
    assert trial_cost(rows, "train_seconds") == 2.0 and trial_cost(rows, "parameters") == 50
    assert trial_cost([{"train_seconds": 1.0}], "parameters") is None
    assert pareto_front([(0.30, 5.0), (0.20, 2.0), (0.25, 6.0), (0.30, 4.0), (0.20, 2.0)]) == [1, 3]
    def rec(tid, score, params):
        return TrialRecord(tid, "done", {}, score, 1, 1, Path("."), curve=[{"n_parameters": params}])

    records = [rec("a", 0.30, 900), rec("b", 0.295, 400), rec("c", 0.25, 100)]
    assert pick_trial(records, ("best", 0.0), "parameters").trial_id == "a"
    assert pick_trial(records, ("cheapest", 0.01), "parameters").trial_id == "b"
    assert pick_trial(records, ("cheapest", 0.1), "parameters").trial_id == "c"
    with pytest.raises(UserError, match="no trial reported its train_seconds cost"):
        pick_trial(records, ("cheapest", 0.1), "train_seconds")


def test_two_objective_searcher_and_orphans_need_both_values(tmp_path):
    raw = {"base": {"train": {"max_epochs": 6}},
           "parameters": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "role": "nuisance"}},
           "search": {"num_trials": 4, "max_concurrent": 2, "asha": {"grace_period": 1, "max_t": 6},
                      "objective": "val_corr+cost", "sampler": "random"}}
    spec = parse_search(raw)
    (tmp_path / STUDY_FILE).write_text(json.dumps({"study_name": "s"}))
    searcher = make_searcher(spec, tmp_path, "s")
    for tune_id in ("a", "b", "c", "d"):
        assert searcher.suggest(tune_id) is not None
    for epoch, seconds in ((1, 5.0), (2, 1.0), (3, 2.0), (2, 3.0)):  # epoch 2 again after a restart: replaces
        searcher.on_trial_result("a", {"epoch": epoch, "best_val_corr": 0.1 * epoch, "train_seconds": seconds,
                                       "training_iteration": epoch})
    searcher.on_trial_complete("a", {"epoch": 3, "best_val_corr": 0.3, "training_iteration": 3, FIT_DONE: 3.0})
    searcher.on_trial_complete("b", {"best_val_corr": 0.2})  # no epoch reported: no cost
    searcher.on_trial_result("c", {"epoch": 1, "best_val_corr": 0.05, "train_seconds": 4.0, "training_iteration": 1})
    records = [TrialRecord("c", "done", {}, 0.07, 1, 1, tmp_path, curve=[{"epoch": 1, "train_seconds": 4.0}]),
               TrialRecord("d", "done", {}, 0.1, 1, 1, tmp_path, curve=[{"epoch": 1}])]
    assert close_orphans(tmp_path, records, "train_seconds") == 2
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    by_id = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    assert by_id["a"].values == pytest.approx([0.3, 3.0])  # median of 5, 3, 2 s
    assert by_id["b"].state == optuna.trial.TrialState.FAIL
    assert by_id["c"].values == pytest.approx([0.07, 4.0])
    assert by_id["d"].state == optuna.trial.TrialState.FAIL  # a score but no cost


def test_objective_and_cost_settings_are_checked():
    from search.spec.settings import build_settings
    from sensorium.errors import ConfigError

    with pytest.raises(ConfigError, match=r"search.objective='cost': expected one of \['val_corr', 'val_corr\+cost'\]"):
        build_settings({"objective": "cost"})
    with pytest.raises(ConfigError, match=r"search.cost='flops': expected one of \['train_seconds', 'parameters'\]"):
        build_settings({"cost": "flops"})
    assert build_settings({"objective": "val_corr+cost"}).with_cost and not build_settings({}).with_cost
