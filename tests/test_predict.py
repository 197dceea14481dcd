"""Predictions keyed by trial and neuron id, and the ``submit`` command's official CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sensorium import cli
from sensorium.config import load_config, set_value
from sensorium.data import ScanData, load_data
from sensorium.errors import UserError
from sensorium.predict import predict
from sensorium.submission import read_submission
from sensorium.training import fit

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """(run_dir, model, scans) of a one-epoch tiny fit."""
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["train.max_epochs=1"])
    cfg = set_value(cfg, "data.scans", [str(p) for p in tiny_data.scan_paths])
    cfg = set_value(cfg, "data.cache_dir", str(tmp_path_factory.mktemp("cache")))
    scans = load_data(cfg.data, progress=False)
    result = fit(cfg, tmp_path_factory.mktemp("run") / "run", data=scans, progress=False)
    return result.run_dir, result.model, scans


def test_predictions_are_keyed_by_trial_and_neuron_id(trained):
    _, model, scans = trained
    for key, scan in scans.items():
        pred = predict(model, scan, ["validation", "test"], CPU, batch_size=7)
        rows = scan.tier_indices(["validation", "test"])
        assert np.array_equal(pred.rows, rows)
        assert np.array_equal(pred.trial_ids, scan.trial_ids[rows])
        assert np.array_equal(pred.image_ids, scan.image_ids[rows])
        assert np.array_equal(pred.neuron_ids, scan.unit_ids)
        assert pred.values.shape == pred.responses.shape == (len(rows), scan.n_neurons)
        # one trial predicted alone gives the same row, whatever the chunking
        t = len(rows) // 2
        single = scan.batch(rows[t : t + 1])
        with torch.no_grad():
            alone = model.eval()(single, key).numpy()[0]
        np.testing.assert_allclose(pred.values[t], alone, rtol=1e-5, atol=1e-6)
        # a tier predicted on its own matches its rows in the joint prediction, by trial id
        test = predict(model, scan, "test", CPU)
        joint = dict(zip(pred.trial_ids.tolist(), pred.values))
        for trial, values in zip(test.trial_ids.tolist(), test.values):
            np.testing.assert_allclose(joint[trial], values, rtol=1e-5, atol=1e-6)


def test_predict_uses_eval_mode_and_restores_training_mode(trained):
    _, model, scans = trained
    scan = next(iter(scans.values()))
    model.train()
    first = predict(model, scan, "validation", CPU)
    assert model.training
    np.testing.assert_array_equal(first.values, predict(model, scan, "validation", CPU).values)
    model.eval()


def test_predict_refuses_data_with_the_wrong_channels(trained):
    _, model, scans = trained
    scan = next(iter(scans.values()))
    image_only = ScanData(scan.scan, behavior_channels=False)
    with pytest.raises(UserError, match="channels"):
        predict(model, image_only, "validation", CPU)


def test_submit_writes_both_files_for_competition_scans_only(trained, tiny_data, tmp_path, capsys):
    run_dir, model, scans = trained
    out = tmp_path / "subs"
    assert cli.main(["submit", str(run_dir), "--out", str(out), "--device", "cpu"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv"))
    assert written == sorted(
        f"{key}/{name}" for key in tiny_data.competition_keys
        for name in ("submission_file_live_test.csv", "submission_file_final_test.csv")
    )
    key = tiny_data.competition_keys[0]
    trial_ids, image_ids, neuron_ids, values = read_submission(out / key / "submission_file_final_test.csv")
    expected = predict(model, scans[key], "final_test", CPU)
    order = {t: i for i, t in enumerate(expected.trial_ids.astype(str).tolist())}
    idx = [order[str(t)] for t in trial_ids]
    assert sorted(order) == sorted(map(str, trial_ids))
    np.testing.assert_array_equal(neuron_ids, expected.neuron_ids)
    np.testing.assert_array_equal(image_ids, expected.image_ids[idx])
    np.testing.assert_allclose(values, expected.values[idx], rtol=1e-6)
    # existing files are kept unless --force
    assert cli.main(["submit", str(run_dir), "--out", str(out), "--device", "cpu"]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["submit", str(run_dir), "--out", str(out), "--device", "cpu", "--force"]) == 0
