"""bench/replay.py on a made-up learning-curve table: simulated-time order, Ray's ASHA and FIFO as they stop
trials, the fidelity-aware feedback against Ray's plain OptunaSearch, the nearest-configuration lookup and the
exact expectation of random search. No training: the curves are a formula of the point."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's names through sys.modules
    spec.loader.exec_module(module)
    return module


replay = _module("replay")
curves = _module("curves")
R = 9


@pytest.fixture(scope="module")
def spec():
    from search.spec.space import load_search

    return load_search(replay.SEARCH_FILE)


@pytest.fixture(scope="module")
def table(spec):
    """64 Sobol configurations; quality peaks at lr 0.009; an epoch costs more the more channels and layers;
    configurations 0-7 have 3 seeds; every 5th one's early stopping ends it after 6 epochs."""
    rng = np.random.default_rng(0)
    points = curves.sobol_points(spec, 64)
    rows = {}
    for c, p in enumerate(points):
        quality = 0.3 - 0.1 * abs(math.log(p["train.lr"] / 0.009))
        cost = 0.5 * p["model.core.hidden_channels"] / 64 * p["model.core.layers"] / 4
        for seed in ([42, 43, 44] if c < 8 else [42]):
            n = 6 if c % 5 == 0 else R
            val = quality * (1 - np.exp(-np.arange(1, n + 1) / 3)) + 0.005 * rng.normal(size=n)
            rows[(c, seed)] = [
                {"epoch": e + 1, "val_corr": v, "best_val_corr": b, "test_corr": 0.8 * b, "cpu_s": cost}
                for e, (v, b) in enumerate(zip(val, np.maximum.accumulate(val), strict=True))
            ]
    return replay.table_from_rows("made-up", dict(enumerate(points)), rows, R)


def _run(spec, table, name, workers=4, seed=0, budget=20.0):
    stack = replay.Stack(spec, replay.METHODS[name], table, replay.Lookup(spec, table), seed)
    trace = replay.simulate(spec, replay.METHODS[name], table, replay.Lookup(spec, table), workers, seed,
                            budget * table.mean_full_cost() / workers, stack=stack)
    return stack, trace


def test_table_thresholds_and_lookup(spec, table):
    th = table.thresholds()
    assert th[0.10] <= th[0.05] <= th[0.02] <= max(table.final(c) for c in table.configs)
    lookup = replay.Lookup(spec, table)
    assert all(lookup(table.points[c]) == c for c in table.configs)  # a recorded point finds itself
    near = dict(table.points[3], **{"train.lr": table.points[3]["train.lr"] * 1.0001})
    assert lookup(near) == 3


def test_fifo_trains_every_trial_to_its_end_in_simulated_time_order(spec, table):
    stack, trace = _run(spec, table, "random")
    assert len(trace) > 3 * R and np.all(np.diff(trace[:, 0]) >= -1e-9)  # results in the order they arrive
    assert np.all(np.diff(trace[:, 1]) >= 0)  # best so far
    epochs = Counter(number for number, *_ in stack.trace)
    unfinished = 0
    for number, n in epochs.items():
        curve = table.curves[stack.trials[number].config][stack.trials[number].seed]
        assert n <= len(curve.val)
        unfinished += n < len(curve.val)
    assert unfinished <= 4  # only the trials the 4 workers were running when the budget ran out


def test_asha_stops_most_trials_at_its_first_rung_and_the_study_says_pruned(spec, table):
    stack, _ = _run(spec, table, "tpe+asha")
    epochs = Counter(number for number, *_ in stack.trace)
    assert sum(n == 1 for n in epochs.values()) > len(epochs) / 3  # grace 1, reduction 3
    states = Counter(t.state for t in stack.searcher._ot_study.trials)
    assert states[optuna.trial.TrialState.PRUNED] > 0 and states[optuna.trial.TrialState.COMPLETE] > 0
    pruned = [t for t in stack.searcher._ot_study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.intermediate_values for t in pruned)  # with the epochs it trained

    old, _ = _run(spec, table, "tpe+asha (as it was)")
    states = Counter(t.state for t in old.searcher._ot_study.trials)
    assert states[optuna.trial.TrialState.PRUNED] == 0  # Ray's plain OptunaSearch: every stopped trial COMPLETE


def test_more_workers_spend_the_same_compute_in_less_time(spec, table):
    _, two = _run(spec, table, "random", workers=2)
    _, eight = _run(spec, table, "random", workers=8)
    assert eight[-1, 0] < two[-1, 0] / 3
    assert abs(len(eight) - len(two)) < 0.25 * len(two)  # about the same number of epochs within the budget


def test_exact_random_expectation_matches_the_replayed_mean(spec, table):
    """Random search without early stopping on 1 worker: the replay's mean compute to the top 10% agrees with
    the exact expectation from the table (within the Monte Carlo error of 60 seeds)."""
    lookup = replay.Lookup(spec, table)
    target = table.thresholds()[0.10]
    times = []
    for seed in range(60):  # one worker: the time to the target is the cost of every epoch told until then
        stack = replay.Stack(spec, replay.METHODS["random"], table, lookup, seed, start_with=False, until=target)
        trace = replay.simulate(spec, replay.METHODS["random"], table, lookup, 1, seed, 1e9, stack=stack)
        assert stack.reached and trace[-1, 1] >= target  # it ended there, far inside the budget
        assert trace[-1, 0] == pytest.approx(sum(cost for *_, cost in stack.trace), rel=1e-6)
        times.append(sum(cost for *_, cost in stack.trace))
    exact = replay.exact_random(spec, table, lookup, n=4000)[0.10]
    mean, sem = np.mean(times), np.std(times) / math.sqrt(len(times))
    assert abs(mean - exact) < 3 * sem + 0.05 * exact, (mean, sem, exact)


def test_speedup_interval_brackets_a_known_ratio():
    rng = np.random.default_rng(1)
    spread = -np.log(1 - (np.arange(200) + 0.5) / 200)  # exponential quantiles: the medians' ratio is exactly 4
    point, lo, hi = replay.speedup_interval(400.0 * spread, 100.0 * spread, rng, n=500)
    assert point == pytest.approx(4.0) and 2.5 < lo < 4.0 < hi < 6.5
    never = np.full(200, math.inf)
    assert replay.speedup_interval(400.0 * spread, never, rng, n=50)[0] == 0.0  # never reached: no speed-up


def test_real_search_spec_matches_the_recorded_runs(tmp_path, monkeypatch):
    """The real searches --validate runs train what the table recorded: its scans at its resolution and epoch
    count, 1 thread and 1 CPU per trial, ASHA on the table's epochs, the compute budget given."""
    monkeypatch.setattr(curves, "WORK", tmp_path)
    monkeypatch.setitem(curves.TABLES, "A", curves.TABLES["A"].replace(n_neurons=20, n_trials=80))
    spec = replay.real_spec("A", 3, 123.0, 2)
    s, base = spec.settings, spec.base
    assert (s.seed, s.compute_budget_s, s.max_concurrent, s.cpus_per_trial) == (3, 123.0, 2, 1)
    assert (s.asha.grace_period, s.asha.reduction_factor, s.asha.max_t) == (1, 3.0, curves.EPOCHS)
    assert s.asha.rungs_in == "epochs"
    assert replay.real_spec("A", 3, 123.0, 2, "training_seconds").settings.asha.rungs_in == "training_seconds"
    assert (base.data.image_height, base.data.image_width) == curves.RESOLUTION
    assert (base.train.max_epochs, base.train.threads, base.train.device) == (curves.EPOCHS, 1, "cpu")
    assert base.data.scans and all(str(tmp_path) in scan for scan in base.data.scans)
    job = curves.job_config(spec, {}, 42, Path(base.data.scans[0]).parent, tmp_path / "cache", curves.EPOCHS)
    assert job.model == base.model and job.data.image_height == base.data.image_height


def test_validation_keeps_one_section_per_method(tmp_path):
    """--validate of one method rewrites its own section of the validation file and keeps the other's."""
    path = tmp_path / "bench_search_replay_validation.md"
    assert replay.validation_sections(path) == {}
    replay.write_validation(path, "tpe+asha", ["Real searches: old", "", "| a |"])
    replay.write_validation(path, "tpe+asha on seconds", ["Real searches: seconds", "", "| b |"])
    replay.write_validation(path, "tpe+asha on seconds", ["Real searches: seconds again", "", "| c |"])
    sections = replay.validation_sections(path)
    assert list(sections) == ["tpe+asha", "tpe+asha on seconds"]
    assert "| a |" in sections["tpe+asha"] and "| c |" in sections["tpe+asha on seconds"]
    assert "| b |" not in path.read_text()


def test_the_committed_table_is_where_a_new_checkout_resumes(tmp_path):
    """collect writes the runs done so far; read back (committed_records) they give the same table again, and
    a later collect keeps them beside newer runs: nothing recorded is lost with the run folders."""
    done = tmp_path / "work" / "A" / "done"
    done.mkdir(parents=True)
    for config, seed in ((0, 42), (1, 42)):
        rows = [{"epoch": e, "val_corr": 0.1 * e, "best_val_corr": 0.1 * e, "best_epoch": e, "test_corr": 0.05 * e,
                 "lr": 0.009, "cpu_s": 1.25, "wall_s": 1.5, "train_s": 1.0} for e in (1, 2)]
        record = {"config": config, "seed": seed, "point": {"train.lr": 0.009 + config}, "flops_per_epoch": 2.5e9,
                  "n_parameters": 1000 + config, "failure": None, "epochs": rows}
        (done / f"c{config:03d}_s{seed}.json").write_text(json.dumps(record))
    results = tmp_path / "results"
    first = curves.collect("A", tmp_path / "work", results)
    text = [p.read_bytes() for p in first]
    assert set(curves.committed_records("A", results)) == {(0, 42), (1, 42)}
    for path in done.iterdir():
        path.unlink()  # a new checkout: no run folders, only the committed table
    again = curves.collect("A", tmp_path / "work", results)
    assert [p.read_bytes() for p in again] == text
    record["seed"] = 43
    (done / "c001_s43.json").write_text(json.dumps(record))
    curves.collect("A", tmp_path / "work", results)
    assert set(curves.committed_records("A", results)) == {(0, 42), (1, 42), (1, 43)}


def test_a_trial_start_cost_is_charged_once_per_trial(spec, table):
    """With a start cost, a search of the same simulated time trains fewer epochs: each trial's first epoch
    waits for its worker, data and model; later epochs of the trial do not."""
    lookup = replay.Lookup(spec, table)
    budget = 10 * table.mean_full_cost()
    free = replay.simulate(spec, replay.METHODS["random"], table, lookup, 1, 0, budget)
    stack = replay.Stack(spec, replay.METHODS["random"], table, lookup, 0)
    paid = replay.simulate(spec, replay.METHODS["random"], table, lookup, 1, 0, budget, stack=stack,
                           trial_start_s=5.0)
    seen: set[int] = set()
    charged = []
    for number, *_, cost in stack.trace:  # one worker: the time is the sum of every job it ran
        charged.append(cost + (5.0 if number not in seen else 0.0))
        seen.add(number)
    assert len(paid) < len(free)
    assert paid[:, 0] == pytest.approx(np.cumsum(charged)[: len(paid)], rel=1e-4)  # + the sampler's time / 1000


def test_a_fresh_lookup_proposes_no_configuration_twice_while_unused_ones_remain(spec, table):
    lookup = replay.Lookup(spec, table)
    near = dict(table.points[3])
    assert lookup(near, exclude={3}) != 3 and lookup(near, exclude=set(table.configs)) == 3  # all used: nearest
    stack = replay.Stack(spec, replay.METHODS["tpe+asha"], table, lookup, 0, fresh=True)
    replay.simulate(spec, replay.METHODS["tpe+asha"], table, lookup, 2, 0, 20 * table.mean_full_cost() / 2, stack=stack)
    configs = [t.config for t in stack.trials.values()]
    n = len(table.configs)
    assert len(configs) > n  # the budget outlasts the table: then repeats begin
    assert sorted(configs[:n]) == sorted(table.configs)


def test_a_replay_keeps_each_pair_and_a_later_call_reads_it_back(spec, tmp_path, monkeypatch):
    """Each (method, workers) pair is saved as it ends and the report rewritten; a second call with the same table
    and settings replays nothing and writes the same report; --cached-only reports what is there."""
    done = tmp_path / "work" / "A" / "done"
    done.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for config, point in enumerate(curves.sobol_points(spec, 16)):
        val = np.clip(0.3 - 0.1 * abs(math.log(point["train.lr"] / 0.009)), 0.01, None) * np.array([0.5, 0.8, 1.0])
        val += 0.01 * rng.normal(size=3)
        rows = [{"epoch": e + 1, "val_corr": v, "best_val_corr": b, "best_epoch": e + 1, "test_corr": 0.8 * v,
                 "lr": point["train.lr"], "cpu_s": 1.0 + config % 3, "wall_s": 1.5, "train_s": 1.0}
                for e, (v, b) in enumerate(zip(val, np.maximum.accumulate(val), strict=True))]
        record = {"config": config, "seed": 42, "point": point, "flops_per_epoch": (1 + config % 3) * 1e9,
                  "n_parameters": 1000, "failure": None, "epochs": rows}
        (done / f"c{config:03d}_s42.json").write_text(json.dumps(record))
    results = tmp_path / "results"
    curves.collect("A", tmp_path / "work", results)
    exact = replay.exact_random
    monkeypatch.setattr(replay, "exact_random", lambda *a, **k: exact(*a, **{**k, "n": 500}))  # 20,000: 20 s
    args = ["--table", "A", "--tables", str(results), "--workers", "2", "--seeds", "3", "--full-seeds", "1",
            "--budget", "6", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out.md")]
    assert replay.main([*args, "--methods", "random", "tpe+asha", "--jobs", "2"]) == 0  # spawned processes
    first = (tmp_path / "out.md").read_text()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2 and "| tpe+asha | 3 |" in first

    def replayed(*_args, **_kwargs):
        raise AssertionError("a cached pair was replayed again")

    monkeypatch.setattr(replay, "run_method", replayed)
    assert replay.main([*args, "--methods", "random", "tpe+asha", "--jobs", "1"]) == 0
    assert (tmp_path / "out.md").read_text() == first
    assert replay.main([*args, "--methods", "random", "tpe", "tpe+asha", "--cached-only"]) == 0
    text = (tmp_path / "out.md").read_text()
    assert "| tpe+asha | 3 |" in text and "| tpe | 3 |" not in text
