"""Fault drills: what a cluster does to a search, and what must come out of it.

1. a trial's worker process SIGKILLed mid-epoch: the trial resumes from its checkpoint;
2. the worker node of a loopback two-node cluster killed mid-search: its trial resumes on the head node;
3. SIGTERM to the driver, then ``resume``: nothing restarts from epoch 0 that had a checkpoint;
4. a trial that raises and one with a non-finite loss: each recorded once, with its reason, never retried;
5. a step after training that raises: the trained trial stands (done, ranked, exported, COMPLETE in the study).

Each asserts the outcome: exactly the requested trials, none duplicated or lost, the Optuna study told each
trial once, and the retry counts. (Drills 5 and 6, full disks and truncated checkpoints, are in
test_safe_writes.py.) The tiny config checkpoints every epoch, so a restarted trial continues from its
last checkpoint Tune had registered: the epoch after its last report, or that last epoch again when the
driver stopped between logging an epoch's result and saving the experiment state that holds its
checkpoint (seen once in CI: epochs 1, 2, 3, 3, 4, ...).

The drills act on what the driver has logged, which lags the trial by a second or more on a loaded
machine, so their trials are long (``DRILL_EPOCHS`` of ~0.3 s each): a trial must still be running when
the fault hits it, or the drill proves nothing (its asserts say so before they compare retry counts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from search.raytune.driver import run_search
from search.store.results import load_trials
from search.spec.space import parse_search, with_data
from search.store.study import load_study

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cluster.local_cluster import LocalCluster  # noqa: E402

CLI = str(Path(sys.executable).parent / "sensorium-search")


DRILL_EPOCHS = 30


def _search_raw(epochs: int = DRILL_EPOCHS, **search) -> dict:
    """configs/search_tiny.yaml with trials long enough to be hit mid-run (no ASHA stop before the end)."""
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["overrides"].update(
        {"train.max_epochs": epochs, "train.recipe.patience": epochs, "train.recipe.lr_decay_steps": 1})
    raw["search"].update({"asha": {"grace_period": epochs, "reduction_factor": 2, "max_t": epochs}, **search})
    return raw


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _assert_clean_outcome(run_dir: Path, requested: int) -> list:
    """Exactly the requested trials, each ended by itself, each epoch reported in order from 1 with none
    missing (a restart from a checkpoint continues after it, or repeats the one epoch whose checkpoint the
    stopped driver had not registered, never from epoch 1 again), and the study told every trial once."""
    records = load_trials(run_dir)
    assert len(records) == requested and len({r.trial_id for r in records}) == requested
    assert all(r.status in ("done", "stopped") for r in records), [(r.trial_id, r.status, r.error) for r in records]
    for r in records:
        epochs = [int(row["epoch"]) for row in _results(r.path) if "epoch" in row and "fit_done" not in row]
        assert epochs[0] == 1 and sorted(set(epochs)) == list(range(1, max(epochs) + 1)), (r.trial_id, epochs)
        assert all(b in (a, a + 1) for a, b in zip(epochs, epochs[1:])), (r.trial_id, epochs)
        assert len(epochs) - len(set(epochs)) <= r.retries + 1, (r.trial_id, epochs)  # one repeat a restart
        assert r.epochs == max(epochs) and r.curve[-1]["epoch"] == max(epochs)
    study = load_study(run_dir)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * requested
    return records


# ------------------------------------------------------------------------------ 1. a killed worker process
def test_a_killed_trial_worker_resumes_from_its_checkpoint(ray_session, tiny_data, tmp_path):
    spec = with_data(parse_search(_search_raw(num_trials=2, max_concurrent=2)), [str(tiny_data.data_dir)])
    run_dir = tmp_path / "run"
    killed: dict[str, int] = {}

    def kill_one_worker_mid_run() -> None:
        def running_trial():
            for trial in sorted(run_dir.glob("trial_*")):
                rows = [r for r in _results(trial) if "epoch" in r]
                if rows and rows[-1]["epoch"] >= 2:
                    return trial.name, rows[-1]["pid"]
            return None

        name, pid = _wait_for(running_trial, 120, "a trial at epoch 2")
        os.kill(pid, signal.SIGKILL)  # mid-epoch 3: the actor dies, Tune sees a lost worker
        killed[name] = pid

    killer = threading.Thread(target=kill_one_worker_mid_run, daemon=True)
    killer.start()
    run_search(spec, run_dir, progress=False, live_every_s=1e9)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    records = _assert_clean_outcome(run_dir, 2)
    pids = {row["pid"] for row in _results(run_dir / next(iter(killed)))}
    assert len(pids) == 2, "the trial ended before its worker was killed"  # the rest ran in a new process
    retried = {r.path.name: r.retries for r in records}
    assert retried[next(iter(killed))] == 1 and sum(retried.values()) == 1, retried


# ---------------------------------------------------------------------------- 2. a lost worker node
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local cluster needs /proc")
def test_a_lost_node_s_trial_resumes_on_the_head_node(tiny_data, tmp_path):
    search_file = tmp_path / "search.yaml"
    search_file.write_text(yaml.safe_dump(_search_raw(num_trials=2, max_concurrent=2)))
    run_dir = tmp_path / "shared" / "run"
    with LocalCluster(nodes=2, cpus=1) as local:
        driver = subprocess.Popen(
            [CLI, "run", str(search_file), "--address", local.address, "--out", str(run_dir),
             "--data", str(tiny_data.data_dir), "--quiet"],
            env=local.env, cwd=ROOT, stdout=open(tmp_path / "run.log", "w"), stderr=subprocess.STDOUT,
        )
        try:
            def trial_on_worker_node():
                for trial in run_dir.glob("trial_*"):
                    rows = [r for r in _results(trial) if "epoch" in r]
                    if rows and rows[-1]["node_ip"] == local.node_ip(1) and rows[-1]["epoch"] >= 2:
                        return trial
                return None

            lost = _wait_for(trial_on_worker_node, 180, "a trial at epoch 2 on the worker node")
            assert local.kill_node(1), "nothing of the worker node was running"
            assert driver.wait(timeout=420) == 0, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            driver.kill()
    records = _assert_clean_outcome(run_dir, 2)
    rows = [r for r in _results(lost) if "epoch" in r]
    assert rows[-1]["node_ip"] == local.node_ip(0), "the trial ended on the worker node before the kill hit it"
    assert rows[0]["node_ip"] == local.node_ip(1)
    assert {r.path.name: r.retries for r in records}[lost.name] == 1


# ---------------------------------------------------------------- 3. SIGTERM to the driver, then resume
def test_sigterm_stops_the_search_cleanly_and_resume_finishes_it(tiny_data, tmp_path):
    search_file = tmp_path / "search.yaml"
    search_file.write_text(yaml.safe_dump(_search_raw(num_trials=3, max_concurrent=1)))
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "run.log"
    driver = subprocess.Popen(
        [CLI, "run", str(search_file), "--out", str(run_dir), "--data", str(tiny_data.data_dir), "--quiet"],
        env=env, cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        def second_trial_running():  # one at a time: a second trial at epoch 2 means the first one ended
            epochs = [len([r for r in _results(t) if "epoch" in r and "fit_done" not in r])
                      for t in run_dir.glob("trial_*")]
            return len([e for e in epochs if e > 0]) >= 2 and any(2 <= e < DRILL_EPOCHS // 2 for e in epochs)

        _wait_for(second_trial_running, 180, "the second trial at epoch 2")
        driver.send_signal(signal.SIGTERM)  # the driver only, as SLURM's TERM to the batch script's child
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text()
    assert f"sensorium-search resume {run_dir.resolve()}" in text
    before = load_trials(run_dir)
    unfinished = [r for r in before if r.status in ("running", "pending")]  # Tune pauses or leaves it running
    assert unfinished and all(any(r.path.glob("checkpoint_*")) for r in unfinished)  # with its checkpoints

    resumed = subprocess.run([CLI, "resume", str(run_dir), "--quiet"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    _assert_clean_outcome(run_dir, 3)  # includes: no epoch reported twice, so nothing restarted from 0


# ---------------------------------------------- 4. a trial's own failures: recorded once, never retried
def test_a_raising_trial_and_a_nan_trial_are_recorded_once_and_not_retried(ray_session, tiny_data, tmp_path):
    raw = _search_raw(epochs=2, num_trials=2, max_concurrent=2, max_retries=2)
    raw["parameters"]["model.core.input_kern"] = {"type": "categorical", "choices": [5, 41], "role": "scientific"}
    raw["parameters"]["model.link.offset"] = {"type": "categorical", "choices": [0.0, 1.0e38], "role": "nuisance"}
    raw["search"]["start_with"] = [
        {"model.core.input_kern": 41, "model.link.offset": 0.0},  # the model rejects it when it is built
        {"model.core.input_kern": 5, "model.link.offset": 1.0e38},  # rates of 1e38: the summed loss is inf
    ]
    spec = with_data(parse_search(raw), [str(tiny_data.data_dir)])
    run_dir = tmp_path / "run"
    records = run_search(spec, run_dir, progress=False, live_every_s=1e9)
    reasons = {r.params["model.core.input_kern"]: r for r in records}
    assert [r.status for r in records] == ["failed", "failed"] and all(r.retries == 0 for r in records)
    assert "does not fit the core" in reasons[41].error
    assert "FloatingPointError" in reasons[5].error and "not finite" in reasons[5].error
    for r in records:  # one attempt each: one worker process, one failure line
        rows = _results(r.path)
        assert len({row["pid"] for row in rows}) == 1 and sum("trial_error" in row for row in rows) == 1
    study = load_study(run_dir)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


# ----------------------------------------------------- 5. a failure after training: the trial stands
# Run as a script: its own Ray, whose workers all run ``broken_after_training`` first (a worker setup hook,
# pickled by value from this __main__), so that every trial's step after fit raises.
_AFTER_TRAINING_SCRIPT = '''
import sys
from pathlib import Path

import ray
import yaml

from search.raytune.driver import run_search
from search.spec.space import parse_search, with_data


def broken_after_training():
    import search.raytune.trainable

    def broken(run_dir):
        raise RuntimeError("injected: the step after training failed")

    search.raytune.trainable.after_training = broken


raw, data, run_dir = yaml.safe_load(Path(sys.argv[1]).read_text()), sys.argv[2], Path(sys.argv[3])
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024**2, log_to_driver=False,
         runtime_env={"worker_process_setup_hook": broken_after_training})
run_search(with_data(parse_search(raw), [data]), run_dir, progress=False, live_every_s=1e9)
'''


def test_a_failure_after_training_keeps_the_trial_done_exported_and_complete(tiny_data, tmp_path):
    from ray.tune import ExperimentAnalysis

    from search.products.export import export_best
    from search.store.schema import AFTER_TRAINING_ERROR, FIT_DONE

    search_file, script = tmp_path / "search.yaml", tmp_path / "after_training.py"
    raw = _search_raw(num_trials=2, max_concurrent=2)
    # No epoch counts as an improvement and one round has no patience left: fit ends by itself after epoch 1,
    # long before the epoch cap (where Tune would stop the trial before anything after training runs).
    raw["overrides"].update({"train.recipe.tolerance": 1.0, "train.recipe.patience": 1})
    search_file.write_text(yaml.safe_dump(raw))
    script.write_text(_AFTER_TRAINING_SCRIPT)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, str(script), str(search_file), str(tiny_data.data_dir), str(run_dir)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert [t.status for t in ExperimentAnalysis(str(run_dir)).trials] == ["TERMINATED"] * 2  # not ERROR
    records = load_trials(run_dir)
    assert [(r.status, r.ranked, r.retries) for r in records] == [("done", True, 0)] * 2
    for r in records:
        last = _results(r.path)[-1]  # after the epoch's row, the trial's last result: the reason is kept there
        assert last[FIT_DONE] == 1
        assert last[AFTER_TRAINING_ERROR] == "RuntimeError: injected: the step after training failed"
    study = load_study(run_dir)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(r.best_val_corr for r in records))
    best = yaml.safe_load(export_best(run_dir).read_text())["provenance"]
    assert best["trial_id"] == records[0].trial_id and Path(best["checkpoint"]).is_file()


def test_after_training_reports_a_final_scoring_failure_recorded_by_fit(tmp_path):
    from search.raytune.trainable import after_training
    from search.store.schema import SCORING_ERROR

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"best_val_corr": 0.3, "scans": {}, "scoring_error": "OutOfMemoryError: x"}')
    assert after_training(tmp_path) == {SCORING_ERROR: "OutOfMemoryError: x"}
    metrics.write_text('{"best_val_corr": 0.3, "scans": {"a": {}}}')
    assert after_training(tmp_path) == {}
