"""Split ensembles: K-fold re-splits of the pooled train + validation trials (``data.split_folds``), then
``retrain --splits K`` training one member per fold on the synthetic scans."""

from __future__ import annotations

import numpy as np
import pytest

from sensorium.config import DataConfig
from sensorium.data import load_data
from sensorium.data.dataset import VISIBLE_TIERS
from sensorium.errors import ConfigError, UserError


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

