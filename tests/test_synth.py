"""Synthetic scans: the official tree, shared test images, withheld responses, ground truth, oracle, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sensorium.cli import main
from sensorium.data.format import (
    DATA_GROUPS,
    NEURON_META,
    STATISTICS,
    TIERS,
    TRIAL_META,
    data_key,
    scan_folder_name,
    statistics_of,
)
from sensorium.data.synth import SynthConfig, generate
from sensorium.data.synth.behaviour import simulate_session
from sensorium.data.synth.writer import image_statistics
from sensorium.data.normalization import response_precision
from sensorium.data.synth.responses import shifted_images
from sensorium.errors import ConfigError
from sensorium.submission import read_submission

TINY = SynthConfig.tiny(seed=0)
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _meta(path: Path, kind: str) -> dict[str, np.ndarray]:
    names = TRIAL_META if kind == "trials" else NEURON_META
    return {name: np.load(path / "meta" / kind / f"{name}.npy") for name in names}


def _stack(path: Path, group: str, n_trials: int) -> np.ndarray:
    return np.stack([np.load(path / "data" / group / f"{i}.npy") for i in range(n_trials)])


def test_official_tree_round_trip(tiny_data):
    assert [data_key(p) for p in tiny_data.scan_paths] == tiny_data.keys
    assert tiny_data.competition_keys == tiny_data.keys[:1]
    for path, key in zip(tiny_data.scan_paths, tiny_data.keys):
        assert path.name == scan_folder_name(key) and path.parent == tiny_data.data_dir
        assert re.fullmatch(r"\d{5}-\d+-\d+", key)
        trials, neurons = _meta(path, "trials"), _meta(path, "neurons")
        n_trials = len(trials["tiers"])
        assert n_trials == TINY.n_trials
        assert all(len(v) == n_trials for v in trials.values())
        assert trials["tiers"].dtype.kind == "U" and set(trials["tiers"]) <= set(TIERS)
        assert trials["frame_image_id"].dtype == np.int64 and trials["frame_trial_ts"].dtype.kind == "U"
        assert neurons["cell_motor_coordinates"].shape == (TINY.n_neurons, 3)
        assert all(len(v) == TINY.n_neurons for v in neurons.values())
        assert len(np.unique(neurons["unit_ids"])) == TINY.n_neurons
        expected_shapes = {
            "images": (1, TINY.image_height, TINY.image_width),
            "responses": (TINY.n_neurons,),
            "behavior": (3,),
            "pupil_center": (2,),
        }
        values = {}
        for group in DATA_GROUPS:
            files = sorted((path / "data" / group).iterdir())
            assert {f.name for f in files} == {f"{i}.npy" for i in range(n_trials)}
            first = np.load(files[0])
            assert first.shape == expected_shapes[group] and first.dtype == np.float32
            values[group] = _stack(path, group, n_trials)
        images = values["images"]
        assert images.min() >= 0 and images.max() <= 255 and np.all(images == np.round(images))
        assert images.std() > 10  # not blank
        assert values["responses"].min() >= 0 and np.isfinite(values["responses"]).all()
        for group in DATA_GROUPS:
            for stat in STATISTICS:
                assert (path / "meta" / "statistics" / group / "all" / f"{stat}.npy").is_file()
        stats_std = np.load(path / "meta/statistics/responses/all/std.npy")
        np.testing.assert_allclose(stats_std, values["responses"].std(axis=0), rtol=1e-5)
        image_mean = np.load(path / "meta/statistics/images/all/mean.npy")
        np.testing.assert_allclose(image_mean, images.mean(), rtol=1e-5)


def test_test_images_shared_and_ids_distinct(tiny_data):
    per_scan = []
    for path in tiny_data.scan_paths:
        trials = _meta(path, "trials")
        tiers, ids = trials["tiers"], trials["frame_image_id"]
        test_rows = np.flatnonzero(tiers == "test")
        images = {int(ids[i]): np.load(path / "data/images" / f"{i}.npy") for i in test_rows}
        counts = np.unique(ids[test_rows], return_counts=True)[1]
        assert len(counts) == TINY.n_test_images and np.all(counts == TINY.test_repeats)
        unique = ids[np.isin(tiers, ("train", "validation"))]
        assert len(np.unique(unique)) == len(unique)
        per_scan.append((images, set(unique.tolist()), set(ids[tiers == "final_test"].tolist())))
    (images_a, unique_a, final_a), (images_b, unique_b, final_b) = per_scan
    assert images_a.keys() == images_b.keys()
    assert all(np.array_equal(images_a[i], images_b[i]) for i in images_a)
    test_ids = set(images_a)
    assert not (unique_a & unique_b) and not ((unique_a | unique_b | final_a) & test_ids)


def test_competition_scan_withholds_and_hashes(tiny_data):
    competition, pretraining = tiny_data.scan_paths
    for path, is_competition in ((competition, True), (pretraining, False)):
        trials = _meta(path, "trials")
        tiers = trials["tiers"]
        n_trials = len(tiers)
        stored = _stack(path, "responses", n_trials)
        truth = np.load(tiny_data.ground_truth_dir / data_key(path) / "responses.npy")
        withheld = np.isin(tiers, ("test", "final_test"))
        assert ("final_test" in tiers) == is_competition
        assert np.array_equal(stored[~withheld], truth[~withheld])
        assert truth[withheld].sum() > 0
        if is_competition:
            assert (tiers == "final_test").sum() == TINY.n_test_trials
            assert np.all(stored[withheld] == 0)
            assert all(HEX32.match(t) for t in trials["trial_idx"])
            assert len(set(trials["trial_idx"])) == n_trials
        else:
            assert np.array_equal(stored, truth)
            assert trials["trial_idx"].dtype.kind == "i"
            assert sorted(trials["trial_idx"]) == list(range(n_trials))
            assert not np.array_equal(trials["trial_idx"], np.arange(n_trials))  # file order carries no time


def test_ground_truth_files(tiny_data):
    for path, key in zip(tiny_data.scan_paths, tiny_data.keys):
        folder = tiny_data.ground_truth_dir / key
        trials, neurons = _meta(path, "trials"), _meta(path, "neurons")
        truth = np.load(folder / "responses.npy")
        expected = np.load(folder / "expected.npy")
        assert truth.shape == expected.shape == (TINY.n_trials, TINY.n_neurons)
        assert expected.min() > 0
        precision = response_precision(np.load(path / "meta/statistics/responses/all/std.npy"))
        competition = key in tiny_data.competition_keys
        assert (folder / "ground_truth_final_test.csv").is_file() == competition
        for tier, name in (("test", "ground_truth_live_test.csv"), ("final_test", "ground_truth_final_test.csv")):
            if tier == "final_test" and not competition:
                continue
            trial_ids, image_ids, neuron_ids, values = read_submission(folder / name, column="responses")
            rows = np.flatnonzero(trials["tiers"] == tier)
            by_id = {str(t): r for r, t in zip(rows, trials["trial_idx"][rows])}
            assert set(trial_ids) == set(by_id)
            order = [by_id[t] for t in trial_ids]
            assert np.array_equal(image_ids, trials["frame_image_id"][order])
            assert np.array_equal(neuron_ids, neurons["unit_ids"])
            np.testing.assert_allclose(values, truth[order] * precision, rtol=1e-6)


def test_oracle_positive_and_saved(tiny_data):
    summary = json.loads((tiny_data.ground_truth_dir / "oracle.json").read_text())
    assert summary["scans"] == tiny_data.oracle
    for key, tiers in tiny_data.oracle.items():
        assert json.loads((tiny_data.ground_truth_dir / key / "oracle.json").read_text()) == tiers
        extra = {"final_test"} if key in tiny_data.competition_keys else set()
        assert set(tiers) == {"train", "validation", "test"} | extra
        for values in tiers.values():
            assert 0.1 < values["single_trial_correlation"] < 0.9
            assert 0.1 < values["correlation_to_average"] <= 1.0


def _digest(out: Path, cfg: SynthConfig, workers: int = 1) -> dict[str, str]:
    """Generate into ``out``; relative path (data keys replaced by the scan number) -> sha256 of the bytes."""
    result = generate(out, cfg, progress=False, workers=workers)
    digests = {}
    for f in sorted(out.rglob("*")):
        if f.is_file():
            name = str(f.relative_to(out))
            for i, key in enumerate(result.keys):
                name = name.replace(key, f"scan{i}")
            digests[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def test_same_seed_same_bytes(tmp_path):
    cfg = TINY.replace(n_neurons=12, n_trials=120, n_test_images=4, test_repeats=3)
    first = _digest(tmp_path / "a", cfg)
    second = _digest(tmp_path / "b", cfg)
    other = _digest(tmp_path / "c", cfg.replace(seed=1))
    assert first == second
    assert first.keys() == other.keys()
    changed = [name for name in first if first[name] != other[name]]
    for group in DATA_GROUPS:  # withheld (zero) and all-zero response rows may match
        assert sum(f"/data/{group}/" in name for name in changed) > 0.7 * 2 * cfg.n_trials


def test_cli_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["synth", str(out), "--tiny", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    args = ["--tiny", "--quiet", "--force", "--trials", "150", "--neurons", "8", "--image-size", "20x32"]
    assert main(["synth", str(out), *args]) == 0
    printed = capsys.readouterr().out
    assert "single-trial corr" in printed and "ground_truth" in printed
    assert (out / "keep.txt").read_text() == "mine"
    scans = sorted((out / "data").iterdir())
    assert len(scans) == 2 and np.load(scans[0] / "data/images/0.npy").shape == (1, 20, 32)


def test_config_rejects_impossible_sizes():
    with pytest.raises(ConfigError, match="n_trials"):
        SynthConfig(n_trials=1500)  # 2 x 1000 test trials leave nothing to train on
    with pytest.raises(ConfigError, match="n_competition"):
        SynthConfig.tiny().replace(n_competition=3)


def test_image_statistics_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, size=(6, 1, 5, 4), dtype=np.uint8)
    ours, reference = image_statistics(images), statistics_of(images.astype(np.float32), per_column=False)
    for name in STATISTICS:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-5)


def test_behaviour_running_bimodal_pupil_follows_running():
    behavior = simulate_session(np.random.default_rng(0), 5000).behavior
    pupil, speed = behavior[:, 0], behavior[:, 2]
    still = speed < 1.5
    assert 0.4 < still.mean() < 0.9 and np.median(speed[~still]) > 8
    assert np.corrcoef(pupil, speed)[0, 1] > 0.3
    np.testing.assert_allclose(behavior[1:, 1], np.diff(pupil), rtol=1e-4, atol=1e-4)


def test_shift_moves_what_receptive_fields_see():
    image = np.zeros((1, 10, 20), dtype=np.uint8)
    image[0, 4, 8] = 255
    moved = shifted_images(image, np.array([[2 / 10, 1 / 10]])).reshape(10, 20)  # RFs move 2 px right, 1 down
    assert np.unravel_index(moved.argmax(), moved.shape) == (3, 6)  # an RF at (3, 6) now sees pixel (4, 8)


def test_scans_simulated_in_worker_processes_are_the_same_bytes(tmp_path):
    cfg = SynthConfig(n_scans=2, n_competition=1, n_neurons=12, n_trials=120, image_height=18, image_width=32,
                      n_test_images=4, adaptation=0.5)
    assert _digest(tmp_path / "one", cfg) == _digest(tmp_path / "two", cfg, workers=2)


def test_synth_refuses_workers_below_one(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "out"), "--tiny", "--workers", "0"]) == 2
    assert "workers=0" in capsys.readouterr().err
