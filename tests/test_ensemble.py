"""Trial ensembles: greedy selection with replacement on scripted arrays, then the command on a finished search."""

from __future__ import annotations

import json
import math
import shutil
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from search.products.ensemble import CachedPredictions, build_ensemble, select_greedy, split_candidates, trial_predictions
from search.store.results import load_trials
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


def _reference(candidates, responses, max_members, tolerance=1e-6):
    """Caruana's selection spelled out: every evaluation averages the members' predictions from scratch and
    scores the mean with the pooled metric. Returns (members in order, val corr after each step, singles)."""
    def score(members):
        return pooled_single_trial_correlation(
            [np.mean([candidates[m][s] for m in members], axis=0, dtype=np.float64) for s in range(len(responses))],
            responses)

    def finite(name_score):
        return name_score[1] if math.isfinite(name_score[1]) else -math.inf

    singles = {n: score([n]) for n in candidates}
    members, scores = [max(singles.items(), key=finite)[0]], [max(singles.items(), key=finite)[1]]
    while len(members) < max_members:
        best, value = max(((n, score(members + [n])) for n in candidates), key=finite)
        if not value - scores[-1] > tolerance:
            break
        members.append(best)
        scores.append(value)
    return members, scores, singles


def _random_candidates(seed, n_candidates, shapes=((120, 7), (80, 4))):
    """(name -> one prediction per scan, responses per scan): predictions are the signal plus a noise shared by
    all candidates, one of their own and a scale of their own, so the best mix takes several members."""
    rng = np.random.default_rng(seed)
    responses, candidates = [], {f"t{i}": [] for i in range(n_candidates)}
    for shape in shapes:
        signal = rng.gamma(2.0, 1.0, shape)
        responses.append(signal + rng.normal(size=shape))
        shared = rng.normal(size=shape)
        for i, name in enumerate(candidates):
            own = rng.normal(scale=rng.uniform(0.5, 2.0), size=shape)
            candidates[name].append((signal * rng.uniform(0.5, 2) + 0.5 * shared + own).astype(np.float32))
    return candidates, responses


def _cache(folder, candidates, keys):
    """The candidates written as trial caches (``<key>.validation.npy``); name -> memory-mapped, lazy sequence."""
    for name, preds in candidates.items():
        (folder / name).mkdir(parents=True)
        for key, pred in zip(keys, preds):
            np.save(folder / name / f"{key}.validation.npy", pred)
    return {name: CachedPredictions(folder / name).tier(keys, "validation") for name in candidates}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_selection_equals_a_straightforward_reference_on_random_data(seed, tmp_path):
    candidates, responses = _random_candidates(seed, n_candidates=6)
    members, scores, singles = _reference(candidates, responses, max_members=8)
    assert len(members) >= 3  # the data makes a real ensemble
    in_memory = select_greedy(candidates, responses, max_members=8)
    cached = select_greedy(_cache(tmp_path, candidates, ["1-1-1", "2-2-2"]), responses, max_members=8)
    for sel in (in_memory, cached):
        assert [s.member for s in sel.steps] == members
        assert [s.val_corr for s in sel.steps] == pytest.approx(scores, abs=1e-12)
        assert sel.singles == pytest.approx(singles, abs=1e-12)
        assert sel.stopped == ("max members" if len(members) == 8 else "no improvement")


def test_selection_memory_does_not_grow_with_the_number_of_candidates(tmp_path):
    """tracemalloc sees numpy's allocations (not the pages of memory maps): the peak while selecting among 12
    cached candidates is that of 3 candidates, a few (trials, neurons) arrays, not one array per candidate."""
    keys, shapes = ["1-1-1", "2-2-2"], ((400, 300), (200, 300))
    candidates, responses = _random_candidates(0, n_candidates=12, shapes=shapes)
    lazy = _cache(tmp_path, candidates, keys)
    one_candidate = sum(r * c * 8 for r, c in shapes)  # bytes of one candidate's predictions in float64

    def peak(names):
        tracemalloc.start()
        try:
            sel = select_greedy({n: lazy[n] for n in names}, responses, max_members=4, tolerance=-1.0)
            return tracemalloc.get_traced_memory()[1], sel
        finally:
            tracemalloc.stop()

    few, few_sel = peak(list(lazy)[:3])
    many, many_sel = peak(list(lazy))
    assert len(few_sel.steps) == len(many_sel.steps) == 4  # the same work per candidate
    assert many < few + one_candidate / 8  # slack: far less than one more candidate's predictions
    assert many < 5 * one_candidate  # z-scored responses, running sum, one candidate's mean and its products


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
    for trial in cache.iterdir():  # what the selection read: the cache, memory-mapped, as the files hold it
        for rel in (f"{key}.validation.npy", f"{key}.test.npy", f"{key}.final_test.npy"):
            assert isinstance(np.load(trial / rel, mmap_mode="r"), np.memmap)

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


def test_a_first_build_returns_the_cache_memory_mapped_not_the_predictions(finished_run, tmp_path):
    import torch

    from sensorium.data import load_data
    from sensorium.training.checkpoint import load_model

    checkpoint = load_trials(finished_run)[0].checkpoint / "best.pt"
    _, cfg = load_model(checkpoint, torch.device("cpu"))
    scans = load_data(cfg.data, progress=False)
    cached, hit = trial_predictions(checkpoint, scans, tmp_path / "cache", torch.device("cpu"))
    assert not hit and isinstance(cached, CachedPredictions) and (tmp_path / "cache" / "key.json").is_file()
    key = next(iter(scans))
    validation = cached[key, "validation"]
    assert isinstance(validation, np.memmap) and validation.dtype == np.float32
    assert validation.shape == (len(scans[key].tier_indices("validation")), scans[key].n_neurons)


def _official_layout(tiny_data, folder):
    """The generator's ground truth of the competition scan copied under the official kit's names, side by
    side in one folder (the scan's key in the name, as two scans' files there would need)."""
    key = tiny_data.competition_keys[0]
    folder.mkdir()
    for tier, name in GROUND_TRUTH_FILES.items():
        shutil.copy(tiny_data.ground_truth_dir / key / name, folder / f"{key}_ground_truth_file_{tier}.csv")
    return key


def test_ensemble_scores_against_ground_truth_in_the_official_layout(finished_run, tiny_data, tmp_path, capsys):
    default = build_ensemble(finished_run, out=tmp_path / "default", max_members=3, device="cpu", progress=False)
    key = _official_layout(tiny_data, tmp_path / "official")
    assert main(["ensemble", str(finished_run), "--out", str(tmp_path / "e"), "--max-members", "3", "--device", "cpu",
                 "--ground-truth", str(tmp_path / "official"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert summary["scores"] == default["scores"] and summary["ground_truth"] == str(tmp_path / "official")
    assert summary["ground_truth_files"] == {
        key: {tier: str(tmp_path / "official" / f"{key}_ground_truth_file_{tier}.csv") for tier in ("test", "final_test")}}
    assert "trial_ensemble" in capsys.readouterr().out


def test_ensemble_says_when_its_ground_truth_matches_nothing(finished_run, tiny_data, tmp_path, capsys, monkeypatch):
    other = next(k for k in tiny_data.keys if k not in tiny_data.competition_keys)  # a pre-training scan's
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(tiny_data.ground_truth_dir / other / GROUND_TRUTH_FILES["test"], wrong / "ground_truth_file_test.csv")
    # given: one line, exit 2, naming the files tried, before any prediction
    assert main(["ensemble", str(finished_run), "--out", str(tmp_path / "e"), "--ground-truth", str(wrong),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ground-truth {wrong}: no ground-truth CSV there holds") and err.count("\n") == 1
    assert f"tried {wrong / 'ground_truth_file_test.csv'} (" in err and not (tmp_path / "e" / "ensemble.json").exists()
    assert main(["ensemble", str(finished_run), "--ground-truth", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
    # found next to the data: a warning line, and the submissions are written unscored
    monkeypatch.setattr("search.products.scoring.find_ground_truth", lambda cfg: wrong)
    summary = build_ensemble(finished_run, out=tmp_path / "found", max_members=1, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: ground truth found next to the data, {wrong}: no ground-truth CSV") \
        and err.count("\n") == 1 and str(wrong / "ground_truth_file_test.csv") in err
    assert summary["ground_truth"] is None and "scores" not in summary
    assert (tmp_path / "found" / tiny_data.competition_keys[0] / "submission_file_live_test.csv").is_file()


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
    monkeypatch.setattr("search.store.results.load_run", lambda run_dir: (Path(run_dir), None, failed))
    with pytest.raises(UserError, match="no finished trial with a best checkpoint .skipped: 1 failed"):
        build_ensemble(tmp_path)
