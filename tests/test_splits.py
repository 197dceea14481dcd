"""Split ensembles: K-fold re-splits of the pooled train + validation trials (``data.split_folds``), then
``retrain --splits K`` training one member per fold on the synthetic scans."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search.products.retrain import MEMBERS_FILE, member_configs
from sensorium.cli import main
from sensorium.config import DataConfig, ExperimentConfig, load_config
from sensorium.data import load_data
from sensorium.data.dataset import VISIBLE_TIERS
from sensorium.errors import ConfigError, UserError
from sensorium.submission import read_submission


def _splits(folder, tmp_path, folds, seed=0):
    """data key -> ScanData of every fold of ``folds`` (plus the official tiers as fold None)."""
    base = DataConfig(scans=(str(folder),), cache_dir=str(tmp_path / "cache"))
    out = {None: load_data(base, progress=False)}
    for k in range(folds):
        cfg = DataConfig(scans=base.scans, cache_dir=base.cache_dir, split_folds=folds, split_fold=k, split_seed=seed)
        out[k] = load_data(cfg, progress=False)
    return {fold: next(iter(data.values())) for fold, data in out.items()}


def test_folds_partition_the_pooled_rows_by_image_and_leave_the_test_tiers_alone(make_scan, tmp_path):
    # validation images are shown 3-4 times each here (ids 0-4), so grouping by image is visible
    scan = _splits(make_scan(n_trials=120, competition=True), tmp_path, folds=3)
    official = scan[None]
    pooled = official.tier_indices(("train", "validation"))
    held_out = [scan[k].tier_indices("validation") for k in range(3)]
    assert sorted(np.concatenate(held_out).tolist()) == pooled.tolist()  # every pooled row in exactly one fold
    for k in range(3):
        assert np.array_equal(np.union1d(scan[k].tier_indices("train"), held_out[k]), pooled)
        assert not np.intersect1d(scan[k].tier_indices("train"), held_out[k]).size
        # all repeats of an image in one fold: no held-out image is seen in training
        assert not set(scan[k].image_ids[held_out[k]]) & set(scan[k].image_ids[scan[k].tier_indices("train")])
        for tier in ("test", "final_test"):
            assert np.array_equal(scan[k].tier_indices(tier), official.tier_indices(tier))
        # what the history modulator may read is the scan's own visible rows, whatever the split
        assert np.array_equal(scan[k].on("cpu").visible.numpy(), np.isin(official.tiers, VISIBLE_TIERS))
    sizes = [len(np.unique(scan[k].image_ids[held_out[k]])) for k in range(3)]
    assert max(sizes) - min(sizes) <= 1  # folds of equal image counts, to one image


def test_folds_are_a_function_of_the_split_seed(make_scan, tmp_path):
    folder = make_scan(n_trials=90)
    first, again = _splits(folder, tmp_path, 2, seed=0), _splits(folder, tmp_path, 2, seed=0)
    other = _splits(folder, tmp_path, 2, seed=1)
    assert np.array_equal(first[0].tiers, again[0].tiers)
    assert not np.array_equal(first[0].tiers, other[0].tiers)
    assert first[None].tiers is first[None].scan.tiers  # split_folds 0: the official tiers themselves


@pytest.mark.parametrize(("values", "message"), [
    ({"split_folds": 1}, "data.split_folds=1: expected 0 (the official tiers) or at least 2 folds"),
    ({"split_folds": 2, "split_fold": 2}, "data.split_fold=2: expected a fold 0 to 1"),
    ({"split_fold": 1}, "data.split_fold=1: expected a fold 0 to 0 (data.split_folds=0)"),
    ({"split_folds": -2}, "data.split_folds=-2: expected a value >= 0"),
])
def test_bad_split_settings_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataConfig(**values)


def test_more_folds_than_images_names_the_scan(make_scan, tmp_path):
    folder = make_scan(n_trials=12)  # 8 train + validation trials of 7 distinct images
    cfg = DataConfig(scans=(str(folder),), cache_dir=str(tmp_path / "cache"), split_folds=50)
    with pytest.raises(UserError, match=r"^data.split_folds=50: scan 1-2-3: only \d+ distinct train \+ validation "
                                        r"images, fewer than the 50 folds$"):
        load_data(cfg, progress=False)



def test_members_of_a_split_ensemble_pair_folds_with_seeds():
    cfg = ExperimentConfig(seed=5)
    assert list(member_configs(cfg, 2)) == ["seed_5", "seed_6"]
    per_fold = member_configs(cfg, None, 3)  # alone: fold k with seed seed + k
    assert list(per_fold) == ["split_0_seed_5", "split_1_seed_6", "split_2_seed_7"]
    assert [(c.data.split_folds, c.data.split_fold, c.seed) for c in per_fold.values()] == [(3, 0, 5), (3, 1, 6),
                                                                                              (3, 2, 7)]
    both = member_configs(cfg, 2, 2, {6: ["train.lr=0.001"]})  # every fold with every seed
    assert list(both) == ["split_0_seed_5", "split_0_seed_6", "split_1_seed_5", "split_1_seed_6"]
    assert [c.train.lr for c in both.values()] == [cfg.train.lr, 0.001, cfg.train.lr, 0.001]


def test_retrain_splits_trains_one_member_per_fold_on_its_own_validation_set(finished_run, tiny_data, tmp_path,
                                                                             capsys):
    out = tmp_path / "r"
    assert main(["retrain", str(finished_run), "--splits", "2", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "retrain.json").read_text())
    names = ["split_0_seed_0", "split_1_seed_1"]
    assert summary["ensemble_members"] == names and summary["seeds"] == [0, 1]
    assert [(m["split_fold"], m["seed"]) for m in summary["members"]] == [(0, 0), (1, 1)]
    assert summary["choices"] == {"train_on_validation": False, "splits": 2, "split_seed": 0}
    held_out = []
    for fold, name in enumerate(names):
        cfg = load_config(out / name / "config.yaml")  # the split is part of the member's config
        assert (cfg.data.split_folds, cfg.data.split_fold, cfg.seed) == (2, fold, fold)
        held_out.append({key: scan.tier_indices("validation") for key, scan in load_data(cfg.data, False).items()})
    official = load_data(DataConfig(scans=cfg.data.scans, cache_dir=cfg.data.cache_dir), False)
    for key, scan in official.items():  # the two validation sets are complementary halves of the pooled rows
        assert not np.intersect1d(held_out[0][key], held_out[1][key]).size
        assert np.array_equal(np.union1d(held_out[0][key], held_out[1][key]),
                              scan.tier_indices(("train", "validation")))
    key = tiny_data.competition_keys[0]
    beside = json.loads((out / key / MEMBERS_FILE).read_text())
    assert beside["members"] == names and beside["split_folds"] == 2
    for name in ("submission_file_live_test.csv", "submission_file_final_test.csv"):
        ensemble = read_submission(out / key / name)[3].astype(np.float32)
        members = [read_submission(out / m / "submission" / key / name)[3].astype(np.float32) for m in names]
        np.testing.assert_array_equal(ensemble, ((members[0].astype(np.float64) + members[1]) / 2).astype(np.float32))
    assert set(summary["scores"]) == {"ensemble", *names}
    assert "ensemble of split_0_seed_0, split_1_seed_1" in captured.out
    assert captured.out.splitlines()[-1].startswith("submissions (the ensemble of split_0_seed_0, split_1_seed_1)")


@pytest.mark.parametrize(("options", "message"), [
    (["--splits", "1"], "--splits 1: expected at least 2 folds"),
    (["--splits", "2", "--train-on-validation"], "--splits and --train-on-validation exclude each other"),
    (["--splits", "100000"], "--splits 100000: scan "),
])
def test_bad_splits_exit_with_one_line(finished_run, tmp_path, capsys, options, message):
    assert main(["retrain", str(finished_run), "--out", str(tmp_path / "r"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not list((tmp_path / "r").glob("split_*"))
