"""Early stopping on scripted scores; fit end to end on the tiny synthetic scans (files, resume, determinism,
NaN loss); the ``train`` command."""

from __future__ import annotations

import dataclasses
import json
import sys
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sensorium import cli
from sensorium.config import ExperimentConfig, load_config, set_value
from sensorium.data import ScanData, load_data
from sensorium.errors import UserError
from sensorium.training import EarlyStopper, fit, load_model
from sensorium.training.rundir import CURVE_FIELDS, RunDir

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"


# ----------------------------------------------------------------------------------- early stopping
def _drive(stopper: EarlyStopper, scores: list[float]) -> list[str]:
    actions = []
    for score in scores:
        step = stopper.step(score)
        actions.append(("+" if step.improved else "") + step.action)
        if stopper.done:
            break
    return actions


def test_early_stopping_decay_rounds_then_stop_and_best_index():
    stopper = EarlyStopper(patience=3, decay_rounds=2, tolerance=1e-6, max_epochs=100)
    stopper.start(0.0)
    scores = [0.1, 0.2, 0.2, 0.19, 0.2000005, 0.3, 0.25, 0.29, 0.3, 0.5]
    assert _drive(stopper, scores) == [
        "+continue", "+continue", "continue", "continue", "decay",  # 3 epochs without a > 1e-6 gain
        "+continue", "continue", "continue", "stop",  # second round out of patience: stop
    ]
    assert (stopper.best_epoch, stopper.best_score, stopper.epoch) == (6, 0.3, 9)
    with pytest.raises(RuntimeError):
        stopper.step(0.9)


def test_early_stopping_respects_max_epochs_initial_score_and_nan():
    stopper = EarlyStopper(patience=5, decay_rounds=4, tolerance=0.0, max_epochs=3)
    stopper.start(0.5)  # the untrained model is the first best (epoch 0)
    assert _drive(stopper, [0.1, 0.2, 0.3, 0.9]) == ["continue", "continue", "stop"]
    assert (stopper.best_epoch, stopper.best_score) == (0, 0.5)

    stopper = EarlyStopper(patience=5, decay_rounds=4, tolerance=0.0, max_epochs=100)
    stopper.start(0.0)
    assert _drive(stopper, [0.1, math.nan]) == ["+continue", "stop"]
    assert stopper.best_epoch == 1


def test_early_stopping_state_round_trip():
    a = EarlyStopper(patience=2, decay_rounds=3, tolerance=0.0, max_epochs=50)
    a.start(0.0)
    _drive(a, [0.1, 0.05, 0.04])
    b = EarlyStopper(patience=2, decay_rounds=3, tolerance=0.0, max_epochs=50)
    b.load_state_dict(a.state_dict())
    rest = [0.2, 0.1, 0.1, 0.1, 0.1]
    assert _drive(b, rest) == _drive(a, rest)


def test_batch_objective_is_the_scaled_neuralpredictors_poisson_loss_plus_penalties(tiny_scans):
    import sensorium.compat  # noqa: F401
    from neuralpredictors.measures.modules import PoissonLoss

    from sensorium.models import build_model, scan_meta
    from sensorium.training.fit import batch_objective

    key, scan = next(iter(tiny_scans.items()))
    model = build_model(load_config(TINY).model, scan_meta(tiny_scans), scan.in_shape).eval()
    batch = next(scan.batches("train", 16))
    with torch.no_grad():
        out = model(batch, key)
        expected = math.sqrt(1000 / 16) * PoissonLoss(avg=False)(out, batch.responses) + model.regularizer(key)
        got = batch_objective(model, key, batch, n_trials=1000, loss_scale=True)
        torch.testing.assert_close(got, expected)
        unscaled = batch_objective(model, key, batch, n_trials=1000, loss_scale=False)
        torch.testing.assert_close(unscaled, PoissonLoss(avg=False)(out, batch.responses) + model.regularizer(key))


# ------------------------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def tiny_cfg(tiny_data, tmp_path_factory) -> ExperimentConfig:
    cfg = load_config(TINY)
    cfg = set_value(cfg, "data.scans", [str(p) for p in tiny_data.scan_paths])
    return set_value(cfg, "data.cache_dir", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tiny_scans(tiny_cfg) -> dict[str, ScanData]:
    return load_data(tiny_cfg.data, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tiny_cfg, tiny_scans, tmp_path_factory):
    """One uninterrupted tiny fit, with every report call recorded."""
    calls = []

    def report(epoch, metrics, checkpoint_dir):
        calls.append((epoch, dict(metrics), sorted(p.name for p in checkpoint_dir.iterdir())))  # tiny: every epoch

    run_dir = tmp_path_factory.mktemp("run") / "a"
    result = fit(tiny_cfg, run_dir, data=tiny_scans, report=report, progress=False)
    return result, calls


TIMES = ("epoch_seconds", "train_seconds", "data_seconds")


def _curves(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in RunDir(run_dir).read_curves()]


def test_fit_writes_a_self_describing_run_dir(tiny_run, tiny_cfg, tiny_data):
    result, calls = tiny_run
    run = RunDir(result.run_dir)
    for path in (run.config, run.provenance, run.curves, run.metrics, run.best, run.last):
        assert path.is_file(), path
    assert load_config(run.config) == tiny_cfg
    assert json.loads(run.provenance.read_text())["seed"] == tiny_cfg.seed
    rows = run.read_curves()
    assert [int(r["epoch"]) for r in rows] == list(range(1, result.epochs_run + 1))
    assert result.epochs_run == tiny_cfg.train.max_epochs
    assert min(r["train_loss"] for r in rows[1:]) < rows[0]["train_loss"]  # it learns (tiny data: no more)
    assert math.isfinite(result.best_val_corr) and result.best_val_corr == rows[result.best_epoch - 1]["val_corr"]

    # report: once per epoch, after both checkpoints exist, with the contract's metric keys
    assert [c[0] for c in calls] == list(range(1, result.epochs_run + 1))
    assert all(set(c[1]) == set(CURVE_FIELDS) - {"peak_gpu_memory_mb"} for c in calls)  # that one: GPUs only
    assert all(0 <= c[1]["data_seconds"] <= c[1]["train_seconds"] <= c[1]["epoch_seconds"] for c in calls)
    assert json.loads(run.provenance.read_text())["device"] == {"type": "cpu"}
    assert all({"best.pt", "last.pt"} <= set(c[2]) for c in calls)

    metrics = json.loads(run.metrics.read_text())
    assert metrics["best_val_corr"] == pytest.approx(result.best_val_corr)
    assert (metrics["best_epoch"], metrics["epochs_run"]) == (result.best_epoch, result.epochs_run)
    for key in tiny_data.keys:
        tiers = metrics["scans"][key]
        expected = {"validation"} if key in tiny_data.competition_keys else {"validation", "test"}
        assert set(tiers) == expected
        assert set(tiers["validation"]) == {"single_trial_correlation", "correlation_to_average", "feve"}


def test_best_checkpoint_loads_with_weights_only_and_rebuilds_the_model(tiny_run, tiny_cfg, tiny_scans):
    result, _ = tiny_run
    best = torch.load(RunDir(result.run_dir).best, weights_only=True)
    assert ExperimentConfig.from_dict(best["config"]) == tiny_cfg
    assert best["epoch"] == result.best_epoch
    torch.load(RunDir(result.run_dir).last, weights_only=True)

    model, cfg = load_model(result.run_dir, torch.device("cpu"))
    assert cfg == tiny_cfg and not model.training
    batch = next(tiny_scans[model.data_keys[0]].batches("validation", 16))
    with torch.no_grad():
        expected = result.model(batch, model.data_keys[0])
        assert torch.equal(model(batch, model.data_keys[0]), expected)


def test_same_seed_same_curves(tiny_run, tiny_cfg, tiny_scans, tmp_path):
    result, _ = tiny_run
    again = fit(tiny_cfg, tmp_path / "b", data=tiny_scans, progress=False)
    assert _curves(again.run_dir) == _curves(result.run_dir)
    for (name, a), b in zip(result.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_from_last_checkpoint_continues_exactly(tiny_run, tiny_cfg, tiny_scans, tmp_path, interrupted_fit):
    result, _ = tiny_run
    run_dir = tmp_path / "c"
    interrupted_fit(tiny_cfg, tiny_scans, run_dir, 1)
    assert len(RunDir(run_dir).read_curves()) == 1
    resumed = fit(tiny_cfg, run_dir, data=tiny_scans, resume=run_dir, progress=False)
    assert len(json.loads(RunDir(run_dir).provenance.read_text())["resumed"]) == 1
    assert _curves(run_dir) == _curves(result.run_dir)
    assert resumed.best_epoch == result.best_epoch
    for (name, a), b in zip(result.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_by_time_at_given_epochs_and_at_the_end(tiny_cfg, tiny_scans, tmp_path):
    """checkpoint_every_s: between checkpoints report gets None; given epochs and the last one always get one,
    and a resume from such a checkpoint replays the epochs after it to the same result."""
    cfg = set_value(set_value(tiny_cfg, "train.checkpoint_every_s", 3600.0), "train.recipe.patience", 10)  # no decay
    seen = []

    def report(epoch, metrics, checkpoint_dir):
        seen.append((epoch, checkpoint_dir is not None))
        if checkpoint_dir is not None:
            last = torch.load(checkpoint_dir / "last.pt", weights_only=True)
            best = torch.load(checkpoint_dir / "best.pt", weights_only=True)
            assert last["epoch"] == epoch and best["epoch"] == metrics["best_epoch"]
            optimizer = last["recipe"]["optimizer"]
            assert all(t.device.type == "cpu" for s in optimizer["state"].values() for t in s.values()
                       if isinstance(t, torch.Tensor))

    run_dir = tmp_path / "interval"
    again = fit(cfg, run_dir, data=tiny_scans, report=report, progress=False, checkpoint_epochs={1})
    assert seen == [(1, True), (2, False), (3, True)]

    class Killed(Exception):
        pass

    def die_in_epoch_2(epoch, metrics, checkpoint_dir):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):  # killed after epoch 2, whose state was never written: last.pt is epoch 1's
        fit(cfg, tmp_path / "k", data=tiny_scans, report=die_in_epoch_2, progress=False, checkpoint_epochs={1})
    resumed = fit(cfg, tmp_path / "k", data=tiny_scans, resume=tmp_path / "k", progress=False)
    assert _curves(tmp_path / "k") == _curves(run_dir)
    for (name, a), b in zip(again.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_a_different_config(tiny_run, tiny_cfg, tiny_scans, tmp_path):
    from sensorium.errors import ConfigError

    result, _ = tiny_run
    other = set_value(tiny_cfg, "train.lr", 0.001)
    with pytest.raises(ConfigError, match="train.lr"):
        fit(other, tmp_path / "d", data=tiny_scans, resume=result.run_dir, progress=False)


def test_nan_loss_raises_with_epoch_and_scan(tiny_cfg, tiny_scans, tmp_path):
    key, good = next(iter(tiny_scans.items()))
    responses = np.array(good.scan.responses)
    responses[good.tier_indices("train")] = np.nan
    broken = ScanData(dataclasses.replace(good.scan, responses=responses), tiny_cfg.data.behavior_channels)
    with pytest.raises(FloatingPointError, match=f"epoch 1, scan {key}"):
        fit(tiny_cfg, tmp_path / "nan", data={key: broken}, progress=False)


def test_training_on_validation_runs_exactly_max_epochs_and_keeps_the_last_weights(tiny_cfg, tiny_scans, tmp_path):
    cfg = set_value(set_value(tiny_cfg, "train.train_on_validation", True), "train.max_epochs", 3)
    cfg = set_value(cfg, "train.recipe.patience", 1)  # would stop or decay early if validation steered anything
    result = fit(cfg, tmp_path / "tov", data=tiny_scans, progress=False)
    curves = _curves(result.run_dir)
    assert (result.epochs_run, result.best_epoch) == (3, 3)
    assert [row["lr"] for row in curves] == [cfg.train.lr] * 3  # no lr decay
    last = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    for name, tensor in best["model"].items():
        assert torch.equal(tensor, last["model"][name])


def test_a_config_the_model_rejects_writes_no_run_folder(tiny_cfg, tiny_scans, tmp_path):
    cfg = set_value(tiny_cfg, "model.core.input_kern", 41)  # larger than the 36 px images
    with pytest.raises(UserError, match="does not fit the core"):
        fit(cfg, tmp_path / "bad", data=tiny_scans, progress=False)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------- command
def test_train_command_rejects_a_bad_set_key(tmp_path, capsys):
    code = cli.main(["train", str(TINY), "--set", "model.core.layerz=3", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "model.core.layerz" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_command_runs_with_data_override(tiny_data, tiny_cfg, tmp_path):
    out = tmp_path / "cli-run"
    code = cli.main([
        "train", str(TINY), "--data", *map(str, tiny_data.scan_paths), "--out", str(out), "--quiet",
        "--set", f"data.cache_dir={tiny_cfg.data.cache_dir}", "--set", "train.max_epochs=1",
    ])
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["scans"] == [str(p) for p in tiny_data.scan_paths]
    assert saved["train"]["max_epochs"] == 1
    assert (out / "checkpoints" / "best.pt").is_file()
    # a second train into the same run dir needs --resume
    assert cli.main(["train", str(TINY), "--data", *map(str, tiny_data.scan_paths), "--out", str(out), "--quiet"]) == 2


def test_a_final_scoring_failure_is_recorded_and_the_trained_run_kept(tiny_cfg, tiny_scans, tmp_path, monkeypatch):
    fit_module = sys.modules[fit.__module__]  # the module (the package exports the function under its name)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.19 GiB")

    monkeypatch.setattr(fit_module, "final_scores", out_of_memory)
    with pytest.warns(UserWarning, match="final scoring failed"):
        result = fit(tiny_cfg, tmp_path / "late", data=tiny_scans, progress=False)
    metrics = json.loads((tmp_path / "late" / "metrics.json").read_text())
    assert metrics["scoring_error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert metrics["scans"] == {} and metrics["best_epoch"] == result.best_epoch >= 1
    assert (tmp_path / "late" / "checkpoints" / "best.pt").is_file()


def test_a_loaded_model_runs_at_the_precision_it_was_trained_with(tiny_run, monkeypatch):
    import sensorium.training.checkpoint as checkpoint_module

    calls = []
    monkeypatch.setattr(checkpoint_module, "configure_backends", lambda *args: calls.append(args))
    model, cfg = checkpoint_module.load_model(tiny_run[0].run_dir, torch.device("cpu"))
    assert calls == [(torch.device("cpu"), cfg.train.deterministic, cfg.train.precision)]
