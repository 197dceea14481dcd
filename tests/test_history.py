"""The history and state modulator: features from earlier trials only (never the trial itself, never a withheld
response), the modulator as a component family (off: the baseline; on: the identity at the start, then trained
and searched), and the behaviour scaling choice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sensorium.config import ExperimentConfig, apply_overrides
from sensorium.data import ScanData
from sensorium.data.cache import load_scan
from sensorium.errors import ConfigError
from sensorium.models import build_model, scan_meta

HISTORY = ["model.modulator.kind=history", "model.modulator.history_length=3"]


@pytest.fixture(scope="module")
def scans(tiny_data, tmp_path_factory):
    """The tiny competition scan and pre-training scan (raw Scan objects)."""
    from sensorium.data import resolve_scan_paths

    cfg = apply_overrides(ExperimentConfig(), [f"data.cache_dir={tmp_path_factory.mktemp('cache')}"]).data
    return [load_scan(path, cfg, progress=False) for path in resolve_scan_paths([str(tiny_data.data_dir)])]


def _history(scan, rows, h=3):
    return ScanData(scan, behavior_channels=True).batch(rows, history=h).history


def test_previous_rows_follow_the_session_order_of_frame_trial_ts(scans):
    for scan in scans:
        data = ScanData(scan, behavior_channels=True)
        order = np.argsort(scan.trial_ts, kind="stable")
        rows = np.arange(scan.n_trials)
        previous = data.previous_rows(rows, 2)
        place = {row: i for i, row in enumerate(order)}
        for row in rows[:50]:
            i = place[row]
            expected = [order[i - 1] if i >= 1 else -1, order[i - 2] if i >= 2 else -1]
            assert previous[row].tolist() == expected


@pytest.mark.parametrize("which", ["competition", "pretraining"])
def test_history_features_use_only_earlier_trials_and_no_withheld_responses(scans, which):
    """Change the trial's own responses, every later trial's, and every test-tier trial's: the history of the
    trial is the same, bit for bit."""
    scan = scans[0] if which == "competition" else scans[1]
    assert scan.is_competition == (which == "competition")
    order = np.argsort(scan.trial_ts, kind="stable")
    rows = np.sort(order[len(order) // 2 :: 7])  # trials from the second half of the session
    before = _history(scan, rows)
    for row in rows:
        place = int(np.flatnonzero(order == row)[0])
        changed = np.array(scan.responses)
        changed[order[place:]] += 100.0  # the trial itself and everything after it
        changed[np.isin(scan.tiers, ["test", "final_test"])] += 50.0  # withheld responses
        after = _history(dataclasses.replace(scan, responses=changed), np.array([row]))
        i = int(np.flatnonzero(rows == row)[0])
        for field in ("responses", "mask", "behavior", "behavior_mask", "time"):
            assert torch.equal(getattr(after, field)[0], getattr(before, field)[i]), field
    # and the earlier public responses do enter: change one, the history changes
    row = rows[-1]
    place = int(np.flatnonzero(order == row)[0])
    previous = order[place - 1]
    changed = np.array(scan.responses)
    changed[previous] += 1.0
    visible = scan.tiers[previous] in ("train", "validation")
    after = _history(dataclasses.replace(scan, responses=changed), np.array([row]))
    assert torch.equal(after.responses[0, 0], before.responses[-1, 0]) != visible
    assert after.mask[0, 0].item() == float(visible)


def test_the_first_trial_of_the_session_has_an_empty_past(scans):
    scan = scans[1]
    first = int(np.argmin(scan.trial_ts))
    history = _history(scan, np.array([first]))
    assert history.mask.sum() == 0 and history.responses.abs().sum() == 0
    assert history.behavior_mask.item() == 0 and history.behavior.abs().sum() == 0 and history.time.item() == 0


def test_the_modulator_off_is_the_baseline_and_on_starts_as_the_identity(scans):
    data = {s.key: ScanData(s, behavior_channels=True) for s in scans}
    meta = scan_meta(data)
    rows = np.arange(20)
    key = scans[1].key
    torch.manual_seed(0)
    plain = build_model(ExperimentConfig().model, meta, (4, 36, 64)).eval()
    torch.manual_seed(0)
    cfg = apply_overrides(ExperimentConfig(), HISTORY)
    modulated = build_model(cfg.model, meta, (4, 36, 64)).eval()
    assert plain.history_length == 0 and modulated.history_length == 3
    batch = data[key].batch(rows, history=3)
    with torch.no_grad():
        assert torch.equal(plain(batch, key), modulated(batch, key))  # all gains start at 1
        with pytest.raises(ValueError, match="needs batch.history"):
            modulated(data[key].batch(rows), key)
    for module in modulated.modulator.values():
        torch.nn.init.normal_(module.history, 0.0, 0.5)
    with torch.no_grad():
        assert not torch.equal(plain(batch, key), modulated(batch, key))
    assert modulated.regularizer(key) > plain.regularizer(key)


def test_history_features_and_the_time_term_are_centred(scans):
    """Every input of the modulator averages to 0 over the session, so a trained modulator moves gains around
    the mean rate and cannot stand in for the readout's bias."""
    scan = scans[1]
    data = ScanData(scan, behavior_channels=True)
    history = data.batch(np.arange(scan.n_trials), history=1).history
    # the previous trial's features: centred over all trials (the session's first trial has none, mask 0, and
    # the last trial is no trial's previous one, hence the tolerance of one trial's share)
    assert history.behavior_mask.sum() == scan.n_trials - 1
    largest = float(history.behavior.abs().max())
    assert largest > 0.1
    np.testing.assert_allclose(history.behavior.sum(0) / scan.n_trials, 0.0, atol=2 * largest / scan.n_trials)
    # the past responses: minus the neuron's mean from the files' statistics (in model units)
    response_mean, _ = data.history_centres(torch.device("cpu"))
    precision = data.on(torch.device("cpu")).response_precision
    expected = np.asarray(scan.stats["responses"]["mean"], np.float32) * precision.numpy()
    np.testing.assert_allclose(response_mean.numpy(), expected, rtol=1e-6)
    visible = history.mask[:, 0] > 0
    raw = data.batch(data.previous_rows(np.arange(scan.n_trials), 1)[visible.numpy(), 0]).responses
    np.testing.assert_allclose(history.responses[visible, 0], raw - response_mean, rtol=1e-5, atol=1e-5)
    # the time term: zero-mean over the session whatever its weights
    cfg = apply_overrides(ExperimentConfig(), HISTORY).model
    model = build_model(cfg, scan_meta({scan.key: data}), (4, 36, 64))
    module = model.modulator[scan.key]
    torch.nn.init.normal_(module.time, 0.0, 1.0)
    grid = torch.linspace(0.0, 1.0, 10001)
    with torch.no_grad():
        term = (module._bumps(grid) - module.bump_means) @ module.time.T  # (T, n)
    assert term.std(0).min() > 0.1
    np.testing.assert_allclose(term.mean(0), 0.0, atol=5e-3)  # (the bumps' means are taken on a coarser grid)


def test_the_modulator_has_its_own_learning_rate(scans):
    data = {s.key: ScanData(s, behavior_channels=True) for s in scans}
    meta = scan_meta(data)
    plain = build_model(ExperimentConfig().model, meta, (4, 36, 64))
    assert [len(g["params"]) for g in plain.param_groups(0.01)] == [len(list(plain.parameters()))]
    cfg = apply_overrides(ExperimentConfig(), [*HISTORY, "model.modulator.lr_scale=0.1"])
    model = build_model(cfg.model, meta, (4, 36, 64))
    rest, own = model.param_groups(0.01)
    assert own["lr"] == pytest.approx(0.001) and rest["lr"] == 0.01
    assert {id(p) for p in own["params"]} == {id(p) for p in model.modulator.parameters()}
    assert len(rest["params"]) + len(own["params"]) == len(list(model.parameters()))


def test_a_model_with_the_modulator_trains_and_predicts(tiny_data, tmp_path):
    from sensorium.config import load_config
    from sensorium.training.fit import fit

    cfg = apply_overrides(load_config("configs/tiny.yaml"), [
        *HISTORY, "train.max_epochs=2", f"data.scans=[{tiny_data.data_dir}]",
        f"data.cache_dir={tmp_path / 'cache'}", "data.behavior_scaling=minmax",
    ])
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result.epochs_run == 2 and np.isfinite(result.best_val_corr)
    # every term of the modulator gets a gradient from the training objective
    from sensorium.data import load_data
    from sensorium.training.fit import batch_objective

    model = result.model.train()
    key, data = next(iter(load_data(cfg.data, progress=False).items()))
    batch = next(data.batches("train", 16, np.random.default_rng(0), history=model.history_length))
    batch_objective(model, key, batch, data.scan.n_trials, True).backward()
    module = model.modulator[key]
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in (module.history, module.loadings, module.time))  # (the state map: once loadings move)


def test_minmax_behaviour_scaling_and_bad_modulator_values(scans):
    scan = scans[1]
    data = ScanData(scan, behavior_channels=True, behavior_scaling="minmax")
    behavior = data.batch(np.arange(scan.n_trials)).behavior
    assert behavior[:, 0].min() == pytest.approx(0.0, abs=1e-6) and behavior[:, 0].max() == pytest.approx(1.0)
    assert behavior[:, 2].min() >= 0 and behavior[:, 2].max() == pytest.approx(1.0)
    reference = ScanData(scan, behavior_channels=True).batch(np.arange(5)).behavior
    np.testing.assert_allclose(behavior[:5, 1], reference[:, 1])  # the derivative: x / std in both
    for override, message in (("model.modulator.history_length=0", "history_length=0: expected a value > 0"),
                              ("model.modulator.time_kernel_width=2", "time_kernel_width=2.0"),
                              ("model.modulator.lr_scale=0", "lr_scale=0.0: expected a value > 0"),
                              ("data.behavior_scaling=zscore", "expected one of ['reference', 'minmax']")):
        with pytest.raises(ConfigError, match=message.replace("[", "\\[").replace("]", "\\]")):
            apply_overrides(ExperimentConfig(), [*HISTORY, override])


def test_trial_onsets_are_read_from_official_timestamp_strings(make_scan, tmp_path):
    from sensorium.errors import DataError

    folder = make_scan(n_trials=12)
    stamps = [f"Timestamp('2019-08-15 13:{57 + i // 6}:{(i % 6) * 10:02d}.5')" for i in range(12)][::-1]
    np.save(folder / "meta" / "trials" / "frame_trial_ts.npy", np.array(stamps))
    cfg = apply_overrides(ExperimentConfig(), [f"data.cache_dir={tmp_path / 'cache'}"]).data
    scan = load_scan(folder, cfg, progress=False)
    assert scan.trial_ts[-1] == 0.0 and scan.trial_ts[0] == pytest.approx(60 + 50)  # seconds after the first
    np.save(folder / "meta" / "trials" / "frame_trial_ts.npy", np.array(["soon"] * 12))
    with pytest.raises(DataError, match="frame_trial_ts.npy: 'soon' is not a timestamp"):
        load_scan(folder, apply_overrides(ExperimentConfig(), [f"data.cache_dir={tmp_path / 'c2'}"]).data,
                  progress=False)
