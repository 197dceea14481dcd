"""Searches with real Ray (the session's), real Optuna and the tiny model on the tiny synthetic scans.

One search, shared by the in-process tests: 3 trials, 2 at a time, ASHA; its first trial is enqueued with
an input kernel larger than the 36x64 images, so it raises at model build (a failure the config cannot see).
The interrupted-and-resumed search runs the real command line in subprocesses with their own Ray.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from search.raytune.driver import run_search
from search.store.results import RAY_ANALYSIS_LOGGER, best_trial, load_trials, quiet_missing_metrics
from search.spec.space import load_run_spec, parse_search, with_data
from search.store.study import TUNE_TRIAL_ID, load_study, trial_best

ROOT = Path(__file__).resolve().parent.parent
FAILING = {"model.core.input_kern": 41}


def _tiny_spec(data_dir: Path, **search):
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["parameters"]["model.core.input_kern"] = {"type": "categorical", "choices": [5, 41], "role": "scientific"}
    raw["search"].update(search)
    return with_data(parse_search(raw), [str(data_dir)])


@pytest.fixture(scope="module")
def search_run(ray_session, tiny_data, tmp_path_factory):
    spec = _tiny_spec(tiny_data.data_dir, num_trials=3, max_concurrent=2, start_with=[FAILING])
    run_dir = tmp_path_factory.mktemp("search") / "run"
    records = run_search(spec, run_dir, progress=False, live_every_s=1e9)
    return run_dir, records


def _hparams(trial_dir: Path) -> tuple[dict[str, plugin_data_pb2.HParamsPluginData], EventAccumulator]:
    """The HParams plugin entries of a TensorBoard run folder, read back as TensorBoard reads them."""
    acc = EventAccumulator(str(trial_dir))
    acc.Reload()
    try:
        content = acc.PluginTagToContent("hparams")
    except KeyError:  # nothing written yet
        return {}, acc
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}, acc


def test_search_completes_and_ranks_by_each_trials_best_epoch(search_run):
    run_dir, records = search_run
    assert len(records) == 3 and {r.trial_id for r in load_trials(run_dir)} == {r.trial_id for r in records}
    ranked = [r for r in records if r.ranked]
    assert ranked and records[: len(ranked)] == ranked  # ranked trials first
    scores = [r.best_val_corr for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for r in ranked:  # the score is the best epoch's, which is never below the last epoch's
        assert r.best_val_corr == pytest.approx(max([r.curve[-1]["best_val_corr"]] + [c["val_corr"] for c in r.curve]))
        assert r.best_val_corr >= r.curve[-1]["val_corr"]
        assert r.checkpoint is not None and (r.checkpoint / "best.pt").is_file()
    assert best_trial(records) is ranked[0]
    # Optuna was told each trial's best epoch too (COMPLETE), or its curve if ASHA stopped it (PRUNED), and the
    # study is persisted in the run folder
    study = load_study(run_dir)
    told = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    for r in ranked:
        if r.status == "done":
            assert told[r.trial_id].state == optuna.trial.TrialState.COMPLETE
            assert told[r.trial_id].value == pytest.approx(r.best_val_corr)
        else:
            assert told[r.trial_id].state == optuna.trial.TrialState.PRUNED
            assert trial_best(told[r.trial_id]) == pytest.approx(max(c["val_corr"] for c in r.curve))
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_failing_trial_is_recorded_and_the_search_goes_on(search_run):
    run_dir, records = search_run
    failed = [r for r in records if r.status == "failed"]  # its own failure: recorded, not retried
    assert failed, [(r.trial_id, r.status) for r in records]
    assert all(r.params["model.core.input_kern"] == 41 for r in failed)
    assert "does not fit the core" in failed[0].error
    assert any(r.ranked for r in records)  # the others still ran
    study = load_study(run_dir)
    assert any(t.state == optuna.trial.TrialState.FAIL and t.params["model.core.input_kern"] == 41
               for t in study.trials)


def test_tensorboard_has_curves_and_hparams_of_every_trial(search_run):
    run_dir, records = search_run
    root, _ = _hparams(run_dir)
    experiment = root["_hparams_/experiment"].experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"best_val_corr", "val_corr"}
    assert {h.name for h in experiment.hparam_infos} >= {"model.core.hidden_channels", "train.lr", "seed"}
    searched = [p.key for p in load_run_spec(run_dir).params]
    assert [h.name for h in experiment.hparam_infos][: len(searched)] == searched  # the searched keys first
    for r in records:
        plugin, acc = _hparams(r.path)
        start = plugin["_hparams_/session_start_info"].session_start_info.hparams
        assert start["train.lr"].number_value == pytest.approx(r.params["train.lr"])
        assert start["model.readout.gauss_type"].string_value == r.params["model.readout.gauss_type"]
        assert start["model.core.layers"].number_value == 2  # resolved from the base, not only the searched keys
        status = plugin["_hparams_/session_end_info"].session_end_info.status
        assert status == (2 if r.status == "failed" else 1)  # STATUS_FAILURE / STATUS_SUCCESS
        if r.ranked:
            best = acc.Scalars("best_val_corr")
            assert [e.step for e in best] == [c["epoch"] for c in r.curve]
            assert best[-1].value == pytest.approx(r.best_val_corr, abs=1e-6)


def _tensorboard_experiment(logdir: Path):
    """The HParams experiment TensorBoard's server answers for ``logdir`` (its GetExperiment handler over the
    event files, as ``tensorboard --logdir`` serves it to the HParams dashboard)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    handler = get_experiment.Handler(context.RequestContext(), backend_context.Context(tb), "",
                                     api_pb2.GetExperimentRequest())
    return handler.run()


def test_tensorboard_lists_the_searched_keys_first_and_no_machine_paths(search_run):
    run_dir, _ = search_run
    columns = [h.name for h in _tensorboard_experiment(run_dir).hparam_infos]
    searched = load_run_spec(run_dir).keys()
    assert set(columns[: len(searched)]) == set(searched), columns[:8]
    assert "train.lr" in searched and {"seed", "model.core.layers", "train.max_epochs"} <= set(columns)
    assert not {"data.scans", "data.cache_dir"} & set(columns)


def _session_started(trial_dir: Path) -> bool:
    if not trial_dir.is_dir():
        return False
    return "_hparams_/session_start_info" in _hparams(trial_dir)[0]


def _run_cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-m", "sensorium.cli", *args], cwd=log.parent, env=env,
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def test_interrupted_search_resumes_to_exactly_the_requested_trials(tiny_data, tmp_path):
    """Kill the driver (and its private Ray) after the first trial ended, resume, count distinct trials."""
    search_file = tmp_path / "search.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    # trials long enough (12 epochs, none stopped early) that the second one is still running when it is killed
    raw["overrides"]["train.max_epochs"] = 12
    raw["search"]["asha"] = {"grace_period": 12, "reduction_factor": 2, "max_t": 12}
    search_file.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    args = ["run", str(search_file), "--data", str(tiny_data.data_dir), "--out", str(run_dir),
            "--trials", "3", "--concurrent", "1", "--quiet"]
    driver = _run_cli(args, tmp_path / "run.log")
    running = None  # the trial that is running when the driver dies, once TensorBoard shows it
    try:
        deadline = time.monotonic() + 120
        while running is None and time.monotonic() < deadline and driver.poll() is None:
            text = (tmp_path / "run.log").read_text()
            if " ended at epoch " in text or " stopped early at epoch " in text:
                started = [line.split()[2] for line in text.splitlines() if line.endswith(" started")]
                if len(started) >= 2 and _session_started(run_dir / f"trial_{started[1]}"):
                    running = started[1]
            time.sleep(0.2)
        assert running is not None and driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, like a lost node
        driver.wait()
    # TensorBoard lists the trial that was running with all its hyperparameters, and no end status
    plugin, _ = _hparams(run_dir / f"trial_{running}")
    assert "model.core.layers" in plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert "_hparams_/session_end_info" not in plugin
    before = {r.trial_id: r for r in load_trials(run_dir)}
    finished = {tid for tid, r in before.items() if r.status in ("done", "stopped")}
    assert finished and len(finished) < 3
    results_before = {tid: (run_dir / f"trial_{tid}" / "result.json").read_text() for tid in finished}

    resumed = _run_cli(["resume", str(run_dir), "--quiet"], tmp_path / "resume.log")
    assert resumed.wait(timeout=180) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    after = load_trials(run_dir)
    assert len(after) == 3 and len({r.trial_id for r in after}) == 3
    assert all(r.status in ("done", "stopped") for r in after), [(r.trial_id, r.status, r.error) for r in after]
    for tid in finished:  # completed trials were neither rerun nor lost
        assert (run_dir / f"trial_{tid}" / "result.json").read_text() == results_before[tid]
    for r in after:  # one result per epoch, no epoch trained twice
        epochs = [c["epoch"] for c in r.curve]
        assert epochs == list(range(1, len(epochs) + 1))
    study = load_study(run_dir)  # the searcher kept its history: every trial told once, nothing left running
    told = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials}
    assert len(study.trials) == 3 and set(told) == {r.trial_id for r in after}
    for r in after:  # trained to its end: COMPLETE with its best; stopped by ASHA: PRUNED with every epoch
        t = told[r.trial_id]
        assert t.state == (optuna.trial.TrialState.COMPLETE if r.status == "done" else optuna.trial.TrialState.PRUNED)
        assert sorted(t.intermediate_values) == [int(c["epoch"]) for c in r.curve]  # the killed one's too
        if r.status == "done":
            assert t.value == pytest.approx(r.best_val_corr)


def test_search_file_errors_stop_the_command_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {}\nparameters:\n  model.core.layerz: {type: int, low: 2, high: 4, role: scientific}\n")
    cmd = [sys.executable, "-m", "sensorium.cli", "run", str(bad)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert "unknown key 'model.core.layerz'" in out.stderr
    assert "Started a local Ray" not in out.stderr


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_trial_without_results_is_read_back_without_ray_s_missing_metrics_warning(finished_run, tmp_path):
    """A trial a time budget stopped before its first result has no result file: Ray's reader warns "Failed to
    fetch metrics" about it (Tune at the end of the search, then every read); ours reads it quietly, and the
    quieting reaches neither Ray's errors nor anything outside the read."""
    from ray.tune import ExperimentAnalysis

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    trial = sorted(run.glob("trial_*"))[0]
    for name in ("result.json", "progress.csv"):
        (trial / name).unlink()
    logger, handler = logging.getLogger(RAY_ANALYSIS_LOGGER), _Records()
    logger.addHandler(handler)
    try:
        ExperimentAnalysis(str(run))  # Ray's own reader: the warning this is about
        assert any("Failed to fetch metrics for 1 trial" in r.getMessage() for r in handler.records)
        handler.records.clear()
        records = load_trials(run)
        assert not handler.records, [r.getMessage() for r in handler.records]
        assert trial.name.removeprefix("trial_") in {r.trial_id for r in records if r.epochs == 0}
        with quiet_missing_metrics():
            logger.error("a real error")
        assert [r.getMessage() for r in handler.records] == ["a real error"]
        assert logger.level == logging.NOTSET  # restored after the read
    finally:
        logger.removeHandler(handler)
