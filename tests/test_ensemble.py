"""Trial ensembles: greedy selection with replacement on scripted arrays, then the command on a finished search."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from search.ensemble import build_ensemble, select_greedy, split_candidates
from search.results import load_trials
from sensorium.cli import main
from sensorium.errors import UserError
from sensorium.metrics import pooled_single_trial_correlation
from sensorium.submission import GROUND_TRUTH_FILES, SUBMISSION_FILES, read_submission, score_files


def _scan(n_neurons: int, noise: dict[str, float], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(responses, name -> prediction) of one scan, (300, n_neurons): prediction = response + noise of exactly
    the given variance, the signal and every noise orthonormal and zero-mean per neuron, so the correlation
    of any average is exact: 1 / sqrt(1 + its noise variance)."""
    rng = np.random.default_rng(seed)
    t, k = 300, 1 + len(noise)
    resp, preds = np.empty((t, n_neurons)), {name: np.empty((t, n_neurons)) for name in noise}
    for j in range(n_neurons):
        raw = rng.normal(size=(t, k))
        q, _ = np.linalg.qr(raw - raw.mean(axis=0))  # orthonormal columns, each zero-mean
        q *= np.sqrt(t)  # unit population variance
        resp[:, j] = q[:, 0]
        for i, (name, var) in enumerate(noise.items(), 1):
            preds[name][:, j] = q[:, 0] + np.sqrt(var) * q[:, i]
    return resp, preds


@pytest.fixture(scope="module")
def scripted():
    """Two scans (3 and 5 neurons). a: noise variance 1; b: 2, independent of a's, so the best mix weighs
    a 2/3 and b 1/3 (a, b, then a again); c: anti-correlated."""
    noise = {"b": 2.0, "a": 1.0}
    scans = [_scan(3, noise, 0), _scan(5, noise, 1)]
    candidates = {name: [preds[name] for _, preds in scans] for name in ("b", "a")}
    candidates["c"] = [-resp for resp, _ in scans]
    return candidates, [resp for resp, _ in scans]


def test_greedy_selection_mixes_complementary_members_with_replacement(scripted):
    candidates, responses = scripted
    sel = select_greedy(candidates, responses, max_members=10)
    assert [s.member for s in sel.steps] == ["a", "b", "a"]  # a chosen twice: with replacement
    assert sel.stopped == "no improvement"  # (3a + b) / 4 and (2a + 2b) / 4 are both worse than (2a + b) / 3
    assert sel.counts == {"a": 2, "b": 1} and sel.weights == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert sum(sel.weights.values()) == pytest.approx(1.0)
    expected = [1 / np.sqrt(1 + v) for v in (1.0, 3 / 4, 6 / 9)]  # noise variance of a, (a+b)/2, (2a+b)/3
    assert [s.val_corr for s in sel.steps] == pytest.approx(expected, abs=1e-6)
    assert sel.steps[0].gain is None and all(s.gain > 0 for s in sel.steps[1:])
    assert sel.singles["c"] == pytest.approx(-1.0, abs=1e-6)
    # the score is the pooled objective of fit on the weighted mean
    mean = [(2 * a + b) / 3 for a, b in zip(candidates["a"], candidates["b"])]
    assert sel.val_corr == pytest.approx(pooled_single_trial_correlation(mean, responses))


def test_greedy_selection_respects_max_members_and_stops_when_nothing_improves(scripted):
    candidates, responses = scripted
    capped = select_greedy(candidates, responses, max_members=2)
    assert [s.member for s in capped.steps] == ["a", "b"] and capped.stopped == "max members"
    assert [s.member for s in select_greedy(candidates, responses, max_members=1).steps] == ["a"]
    perfect = {"exact": responses, "c": candidates["c"]}  # nothing beats a perfect prediction
    sel = select_greedy(perfect, responses)
    assert [s.member for s in sel.steps] == ["exact"] and sel.stopped == "no improvement"
    assert sel.weights == {"exact": 1.0}
    diverged = {"nan": [np.full_like(r, np.nan) for r in responses], **candidates}  # a model that blew up
    assert [s.member for s in select_greedy(diverged, responses).steps] == ["a", "b", "a"]
    with pytest.raises(ValueError, match="at least 1"):
        select_greedy(candidates, responses, max_members=0)


def test_candidates_are_finished_trials_with_a_best_checkpoint(tmp_path):
    with_ckpt = tmp_path / "ckpt"
    with_ckpt.mkdir()
    (with_ckpt / "best.pt").write_bytes(b"x")
    records = [SimpleNamespace(trial_id=t, status=s, checkpoint=c) for t, s, c in [
        ("done", "done", with_ckpt), ("asha", "stopped", with_ckpt), ("failed", "failed", with_ckpt),
        ("error", "error", None), ("running", "running", with_ckpt), ("empty", "done", tmp_path),
        ("none", "stopped", None)]]
    chosen, skipped = split_candidates(records)
    assert [r.trial_id for r in chosen] == ["done", "asha"]
    assert skipped == {"failed": 2, "unfinished": 1, "no_checkpoint": 2}


def test_ensemble_of_a_finished_search_writes_scored_submissions_and_caches_predictions(
        finished_run, tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ens"
    assert main(["ensemble", str(finished_run), "--out", str(out), "--max-members", "3", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "ensemble: predict 1/2" in captured.err and "(cached)" not in captured.err
    assert "trial_ensemble" in captured.out and "best_trial" in captured.out and "oracle" in captured.out
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["candidates"] == 2 and summary["predicted"] == 2 and summary["cached"] == 0
    assert summary["skipped"] == {"failed": 0, "unfinished": 0, "no_checkpoint": 0}
    assert 1 <= len(summary["steps"]) <= 3 and sum(m["count"] for m in summary["members"]) == len(summary["steps"])
    assert sum(m["weight"] for m in summary["members"]) == pytest.approx(1.0)
    # a trial's own validation score is the one the search recorded for its best epoch: same pooling
    for record in load_trials(finished_run):
        assert summary["singles"][record.trial_id] == pytest.approx(record.best_val_corr, abs=1e-5)
    assert summary["val_corr"] >= max(summary["singles"].values())
    key = tiny_data.competition_keys[0]
    for name, tier in SUBMISSION_FILES.items():
        truth = tiny_data.ground_truth_dir / key / GROUND_TRUTH_FILES[tier]
        trials, _, neurons, _ = read_submission(out / key / name)
        assert sorted(trials) == sorted(read_submission(truth)[0]) and len(neurons) > 0
        assert score_files(out / key / name, truth) == summary["scores"]["trial_ensemble"][key][tier]
        assert (out / "best_trial" / key / name).is_file()
    assert {"trial_ensemble", "best_trial"} <= set(summary["scores"]) and key in summary["oracle"]
    md = (out / "ensemble.md").read_text()
    assert "| step | member added |" in md and summary["best_trial"] in md
    cache = finished_run / "ensemble" / "cache"
    assert {p.name for p in cache.iterdir()} == {r.trial_id for r in load_trials(finished_run)}

    # a second call reads every prediction from the cache and builds no model
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although the predictions are cached")

    monkeypatch.setattr("sensorium.training.checkpoint.load_model", no_model)
    again = build_ensemble(finished_run, out=tmp_path / "again", max_members=3, device="cpu")
    assert again["cached"] == 2 and again["predicted"] == 0 and "(cached)" in capsys.readouterr().err
    assert again["steps"] == summary["steps"]
    assert (tmp_path / "again" / key / "submission_file_live_test.csv").read_text() == \
        (out / key / "submission_file_live_test.csv").read_text()
    monkeypatch.undo()

    # a changed checkpoint (here: its recorded mtime) is predicted again
    stale = next(cache.iterdir()) / "key.json"
    key_json = json.loads(stale.read_text())
    stale.write_text(json.dumps({**key_json, "mtime_ns": key_json["mtime_ns"] - 1}))
    third = build_ensemble(finished_run, out=tmp_path / "third", max_members=3, device="cpu", progress=False)
    assert third["predicted"] == 1 and third["cached"] == 1 and third["steps"] == summary["steps"]
    assert json.loads(stale.read_text()) == key_json


def test_ensemble_compares_with_a_retrain_folder(finished_run, tmp_path):
    first = build_ensemble(finished_run, out=tmp_path / "ens", max_members=1, device="cpu", progress=False)
    retrained = tmp_path / "retrain"  # a stand-in for retrain's output: its ensemble is the best trial alone
    retrained.mkdir()
    (retrained / "retrain.json").write_text(json.dumps({"seeds": [0, 1], "ensemble_files": first["best_trial_files"]}))
    summary = build_ensemble(finished_run, out=tmp_path / "ens", max_members=1, device="cpu", progress=False,
                             retrain_dir=retrained)
    assert summary["cached"] == 2 and summary["retrain"] == str(retrained) and summary["retrain_seeds"] == [0, 1]
    assert summary["scores"]["seed_ensemble"] == summary["scores"]["best_trial"] == summary["scores"]["trial_ensemble"]
    assert "retrain's 2 seeds of the best config" in (tmp_path / "ens" / "ensemble.md").read_text()
    with pytest.raises(UserError, match="no retrain.json there"):
        build_ensemble(finished_run, out=tmp_path / "x", retrain_dir=tmp_path / "missing", progress=False)


@pytest.mark.parametrize(("options", "message"), [
    (["--max-members", "0"], "--max-members 0: expected at least 1"),
    (["--device", "gpu"], "gpu"),
])
def test_ensemble_refuses_bad_options_with_one_line(finished_run, tmp_path, capsys, options, message):
    assert main(["ensemble", str(finished_run), "--out", str(tmp_path / "e"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "e").exists()


def test_ensemble_refuses_a_folder_that_is_no_search_or_has_no_candidate(tmp_path, capsys, monkeypatch):
    assert main(["ensemble", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: not a search run folder (search.yaml is missing)\n"
    failed = [SimpleNamespace(trial_id="t1", status="failed", checkpoint=None)]
    monkeypatch.setattr("search.results.load_run", lambda run_dir: (Path(run_dir), None, failed))
    with pytest.raises(UserError, match="no finished trial with a best checkpoint .skipped: 1 failed"):
        build_ensemble(tmp_path)
