"""History and state effects of the synthetic generator: off by default (bytes unchanged), causal, in session
order, measurable; the session order recoverable from frame_trial_ts; the new options validated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sensorium import metrics
from sensorium.cli import main
from sensorium.data.format import data_key
from sensorium.data.synth import SynthConfig, generate
from sensorium.data.synth.command import add_arguments, config_from_args
from sensorium.data.synth.history import History, sample_history, simulate_history
from sensorium.data.synth.trials import hashed_trial_idx
from sensorium.errors import ConfigError, UserError

TINY = SynthConfig.tiny(seed=0)
HISTORY = TINY.replace(adaptation=1.0, drift=0.4, arousal=0.4)

# sha256 over each scan's ground-truth responses and expected rates, its trial meta (tiers, trial_idx,
# frame_trial_ts, frame_image_id) and its images, behavior and pupil_center, written by the generator as it
# was before history effects existed (commit 5d0a525): the default config must keep writing exactly these.
PINNED = {
    "90001-8-16": "166566656a59cc219fdbc73a049c2ad873f1ef75e3e753a387f131f4740cac5f",
    "90002-9-12": "59a317a508bd88baef947c7fb00e6daa8dddbdb9e236b0eafe170ba72c0773f3",
}


@pytest.fixture(scope="module")
def history_data(tmp_path_factory):
    """The tiny scans with all three effects on (adaptation 1.0, drift 0.4, arousal 0.4)."""
    return generate(tmp_path_factory.mktemp("synth_history"), HISTORY, progress=False)


def _session(path: Path, cfg: SynthConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A scan's trial meta and its file indices in session order (recovered from trial_idx, hashed or not)."""
    trials = {name: np.load(path / "meta/trials" / f"{name}.npy") for name in ("tiers", "trial_idx", "frame_trial_ts")}
    if trials["trial_idx"].dtype.kind == "i":
        return trials, np.argsort(trials["trial_idx"])
    position = {h: t for t, h in enumerate(hashed_trial_idx(cfg.seed, data_key(path), np.arange(cfg.n_trials)))}
    return trials, np.argsort([position[h] for h in trials["trial_idx"]])


def _scan_digest(path: Path, truth: Path, n_trials: int) -> str:
    digest = hashlib.sha256()
    for name in ("responses", "expected"):
        digest.update(np.load(truth / f"{name}.npy").tobytes())
    for name in ("tiers", "trial_idx", "frame_trial_ts", "frame_image_id"):
        digest.update(np.load(path / "meta/trials" / f"{name}.npy").tobytes())
    for group in ("behavior", "pupil_center", "images"):
        digest.update(np.stack([np.load(path / "data" / group / f"{i}.npy") for i in range(n_trials)]).tobytes())
    return digest.hexdigest()


def test_default_writes_the_same_bytes_as_before(tmp_path):
    cfg = TINY.replace(n_neurons=12, n_trials=120, n_test_images=4, test_repeats=3)
    assert not cfg.has_history
    result = generate(tmp_path, cfg, progress=False)
    assert result.history is None
    digests = {key: _scan_digest(p, result.ground_truth_dir / key, cfg.n_trials) for p, key in zip(result.scan_paths, result.keys)}
    assert digests == PINNED
    assert not list(result.ground_truth_dir.rglob("history*"))
    assert "history" not in json.loads((result.ground_truth_dir / "oracle.json").read_text())


def _constant_drive(n_trials: int = 3000, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Feedforward rates (n_trials, n) constant per neuron, and event sizes (n,)."""
    rng = np.random.default_rng(1)
    rate = rng.uniform(0.5, 3.0, size=n)
    return np.tile(rate, (n_trials, 1)).astype(np.float32), rng.uniform(1.0, 3.0, size=n)


def _history(cfg: SynthConfig, feedforward: np.ndarray) -> History:
    return sample_history(np.random.default_rng(2), cfg, feedforward.shape[1], feedforward.shape[0])


def test_adaptation_makes_responses_anticorrelated_with_previous_ones():
    feedforward, size = _constant_drive()
    lag_corr = {}
    for adaptation in (0.0, 1.0):
        cfg = TINY.replace(adaptation=adaptation)
        history = _history(cfg, feedforward)
        _, noisy, _ = simulate_history(np.random.default_rng(3), feedforward, feedforward[0], size, history)
        lag_corr[adaptation] = metrics.corr(noisy[1:], noisy[:-1]).mean()
    assert abs(lag_corr[0.0]) < 0.02  # no history: independent trials
    assert lag_corr[1.0] < -0.05


def _lag_correlation(result, cfg: SynthConfig) -> list[float]:
    """Per scan: the mean over neurons of corr(response[t], response[t-1]), t in session order."""
    values = []
    for path, key in zip(result.scan_paths, result.keys):
        _, order = _session(path, cfg)
        responses = np.load(result.ground_truth_dir / key / "responses.npy")[order]
        values.append(float(metrics.corr(responses[1:], responses[:-1]).mean()))
    return values


def test_adaptation_in_generated_scans_lowers_lag_correlation(tmp_path, tiny_data):
    adapted = generate(tmp_path, TINY.replace(adaptation=1.0), progress=False)
    without, with_adaptation = _lag_correlation(tiny_data, TINY), _lag_correlation(adapted, TINY)
    assert all(w > a + 0.05 for w, a in zip(without, with_adaptation)), (without, with_adaptation)
    assert max(with_adaptation) < -0.03


def test_gain_falls_after_own_large_responses(history_data):
    """In session order, a neuron's gain falls after its own large responses (the drift and arousal terms
    are shared slow factors, removed by comparing each neuron with the population)."""
    for path, key in zip(history_data.scan_paths, history_data.keys):
        _, order = _session(path, HISTORY)
        truth = history_data.ground_truth_dir / key
        responses = np.load(truth / "responses.npy")[order].astype(np.float64)
        log_gain = np.log(np.load(truth / "history_gain.npy")[order].astype(np.float64))
        own = log_gain - log_gain.mean(axis=1, keepdims=True)
        previous = responses / responses.mean(axis=0)
        previous -= previous.mean(axis=1, keepdims=True)
        assert metrics.corr(own[1:], previous[:-1]).mean() < -0.2


def test_a_trial_depends_on_earlier_trials_only():
    feedforward, size = _constant_drive(n_trials=400, n=30)
    history = _history(HISTORY, feedforward)
    mean_rate = feedforward[0].astype(np.float64)
    expected, noisy, gains = simulate_history(np.random.default_rng(4), feedforward, mean_rate, size, history)
    later = feedforward.copy()
    later[200:] *= 3.0  # later trials: other rates, so other noise draws too
    expected_b, noisy_b, _ = simulate_history(np.random.default_rng(4), later, mean_rate, size, history)
    assert np.array_equal(noisy[:200], noisy_b[:200]) and np.array_equal(expected[:200], expected_b[:200])
    assert not np.array_equal(noisy[200:], noisy_b[200:])
    np.testing.assert_allclose(expected, gains * feedforward, rtol=1e-5)
    earlier = feedforward.copy()
    earlier[199] *= 3.0  # one trial changed: the next trial's gain (through adaptation) follows
    expected_c, _, _ = simulate_history(np.random.default_rng(4), earlier, mean_rate, size, history)
    assert np.array_equal(expected_c[:199], expected[:199])
    np.testing.assert_allclose(expected_c[199], 3.0 * expected[199], rtol=1e-6)  # the same gain on trial 199
    assert not np.allclose(expected_c[200], expected[200])


def test_session_order_in_the_files(history_data):
    for path in history_data.scan_paths:
        trials, order = _session(path, HISTORY)
        timestamps = trials["frame_trial_ts"][order]
        assert np.all(timestamps[1:] > timestamps[:-1])  # strictly increasing in session order
        assert np.array_equal(np.argsort(trials["frame_trial_ts"]), order)  # so the timestamps give the order
        if trials["trial_idx"].dtype.kind == "i":
            assert np.array_equal(trials["trial_idx"][order], np.arange(len(order)))
        tiers = trials["tiers"][order]
        for tier in set(tiers) - {"train"}:  # every tier spread over the session, not in blocks
            share = (tiers == tier).mean()
            for quarter in np.array_split(tiers, 4):
                assert 0.3 * share < (quarter == tier).mean() < 2.0 * share


def test_history_ground_truth(history_data):
    summary = json.loads((history_data.ground_truth_dir / "oracle.json").read_text())
    assert summary["history"] == history_data.history
    assert summary["history"]["settings"] == {"adaptation": 1.0, "drift": 0.4, "arousal": 0.4}
    for path, key in zip(history_data.scan_paths, history_data.keys):
        truth = history_data.ground_truth_dir / key
        report = json.loads((truth / "history.json").read_text())
        assert all(0.05 < report["log_gain_std"][term] < 1.0 for term in ("adaptation", "drift", "arousal"))
        for values in report["tiers"].values():
            single = values["single_trial_correlation"]
            assert single["with_history"] > single["without_history"] + 0.02
        # the oracle still predicts with the noise-free truth: the true rate given all earlier trials
        trials, order = _session(path, HISTORY)
        expected, responses = np.load(truth / "expected.npy"), np.load(truth / "responses.npy")
        gains = np.load(truth / "history_gain.npy")
        assert gains.shape == expected.shape and gains.min() > 0
        train = trials["tiers"] == "train"
        oracle = history_data.oracle[key]["train"]["single_trial_correlation"]
        assert oracle == pytest.approx(metrics.single_trial_correlation(expected[train], responses[train]))
        assert oracle == pytest.approx(report["tiers"]["train"]["single_trial_correlation"]["with_history"])


def test_pupil_carries_part_of_the_arousal_state(tmp_path):
    cfg = TINY.replace(n_scans=1, n_competition=0, arousal=0.5)
    result = generate(tmp_path, cfg, progress=False)
    path, key = result.scan_paths[0], result.keys[0]
    pupil = np.stack([np.load(path / "data/behavior" / f"{i}.npy")[0] for i in range(cfg.n_trials)])
    population_gain = np.log(np.load(result.ground_truth_dir / key / "history_gain.npy")).mean(axis=1)
    assert np.corrcoef(pupil, population_gain)[0, 1] > 0.2


def test_history_generation_is_deterministic(tmp_path):
    cfg = HISTORY.replace(n_scans=1, n_neurons=10, n_trials=120, n_test_images=4, test_repeats=3)
    first, second = (generate(tmp_path / name, cfg, progress=False) for name in ("a", "b"))
    for name in ("responses.npy", "expected.npy", "history_gain.npy"):
        a, b = (np.load(r.ground_truth_dir / r.keys[0] / name) for r in (first, second))
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "field, value", [("adaptation", -0.1), ("adaptation", 6.0), ("drift", 2.5), ("arousal", float("nan"))]
)
def test_config_rejects_bad_history_values(field, value):
    with pytest.raises(ConfigError, match=f"synth.{field}="):
        TINY.replace(**{field: value})


def test_presets_and_cli_options():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def cfg(*args: str) -> SynthConfig:
        return config_from_args(parser.parse_args(["out", *args]))

    assert not TINY.has_history and SynthConfig.demo().has_history
    assert cfg("--demo") == SynthConfig.demo()
    assert cfg("--demo", "--no-history") == SynthConfig.demo(history=False)
    assert not cfg("--demo", "--no-history").has_history
    assert cfg("--tiny", "--adaptation", "0.3", "--drift", "0.1").replace(arousal=0.2) == TINY.replace(
        adaptation=0.3, drift=0.1, arousal=0.2
    )
    with pytest.raises(UserError, match="--drift"):
        cfg("--demo", "--no-history", "--drift", "0.2")


def test_cli_reports_history(tmp_path, capsys):
    args = ["--tiny", "--quiet", "--scans", "1", "--trials", "150", "--neurons", "8", "--arousal", "0.3"]
    assert main(["synth", str(tmp_path / "out"), *args]) == 0
    printed = capsys.readouterr().out
    assert "history: adaptation 0, drift 0, arousal 0.3" in printed and "History and state gains" in printed
    assert main(["synth", str(tmp_path / "bad"), "--tiny", "--drift", "-1"]) == 2
    assert "synth.drift=-1.0" in capsys.readouterr().err
