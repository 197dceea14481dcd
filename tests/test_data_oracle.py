"""ScanData against the real library as oracle, and batching (seeded shuffling, fixed eval order, ids).

The oracle is neuralpredictors' own loading chain as the SENSORIUM code builds it: ``FileTreeDataset`` ->
``NeuroNormalizer`` -> ``AddBehaviorAsChannels`` -> ``ScaleInputs`` (only when stored images are larger
than the model size). FileTreeDataset writes ``config.json`` into the scan folder, so it reads a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sensorium.config import DataConfig
from sensorium.data import ScanData, load_data
from sensorium.errors import DataError, UserError

ALL_TIERS = ("train", "validation", "test", "final_test")


def reference_dataset(folder: Path, scale: float):
    import sensorium.compat  # noqa: F401  (must come before neuralpredictors)
    from neuralpredictors.data.datasets import FileTreeDataset
    from neuralpredictors.data.transforms import AddBehaviorAsChannels, NeuroNormalizer, ScaleInputs

    dat = FileTreeDataset(str(folder), "images", "responses", "behavior", "pupil_center")
    dat.transforms.extend([NeuroNormalizer(dat), AddBehaviorAsChannels()])
    if scale != 1:
        dat.transforms.append(ScaleInputs(scale=scale))
    return dat


def assert_matches_reference(folders: list[Path], tmp_path: Path, scale: float = 1.0) -> None:
    copies = [shutil.copytree(f, tmp_path / "oracle" / f.name) for f in folders]
    ours = load_data(DataConfig(scans=tuple(map(str, folders)), cache_dir=str(tmp_path / "cache")), progress=False)
    assert len(ours) == len(folders)
    for copy in copies:
        data = ours[copy.name.split("static")[1].split("-GrayImageNet")[0]]
        reference = reference_dataset(copy, scale)
        position = {tid: i for i, tid in enumerate(reference.trial_info.trial_idx.tolist())}
        seen = 0
        for batch in data.batches(ALL_TIERS, 64, rng=np.random.default_rng(1)):
            for j, trial_id in enumerate(batch.trial_ids.tolist()):
                item = reference[position[trial_id]]
                assert batch.images.shape[1:] == item.images.shape == (4, *data.in_shape[1:])
                for name, atol in (("images", 1e-4), ("responses", 1e-5), ("behavior", 1e-5), ("pupil_center", 1e-5)):
                    np.testing.assert_allclose(getattr(batch, name)[j].numpy(), getattr(item, name), rtol=1e-5,
                                               atol=atol, err_msg=f"{data.key} trial {trial_id}: {name}")
                seen += 1
        assert seen == len(reference) == data.scan.n_trials


def test_normalisation_matches_neuralpredictors_at_model_size(make_scan, tmp_path):
    assert_matches_reference([make_scan(key="1-1-1"), make_scan(key="2-2-2", competition=True, seed=1)], tmp_path)


def test_normalisation_matches_neuralpredictors_with_rescale(make_scan, tmp_path):
    folder = make_scan(n_trials=24, image_shape=(144, 256))
    assert_matches_reference([folder], tmp_path, scale=0.25)


def test_normalisation_matches_neuralpredictors_on_synthetic_scans(tiny_data, tmp_path):
    assert_matches_reference(list(tiny_data.scan_paths), tmp_path)


# ------------------------------------------------------------------------------------------- batching
@pytest.fixture
def scan_data(make_scan, tmp_path) -> ScanData:
    cfg = DataConfig(scans=(str(make_scan(n_trials=100, competition=True)),), cache_dir=str(tmp_path / "cache"))
    return load_data(cfg, progress=False)["1-2-3"]


def rows_of(data: ScanData, tiers, rng=None) -> list[list[int]]:
    return [b.rows.tolist() for b in data.batches(tiers, 8, rng=rng)]


def test_train_batches_are_shuffled_by_the_seed(scan_data):
    first = rows_of(scan_data, "train", np.random.default_rng(3))
    assert first == rows_of(scan_data, "train", np.random.default_rng(3))
    assert first != rows_of(scan_data, "train", np.random.default_rng(4))
    assert sorted(sum(first, [])) == scan_data.tier_indices("train").tolist()
    assert sum(first, []) != sorted(sum(first, []))  # actually shuffled across batches
    assert all(rows == sorted(rows) for rows in first)  # sorted inside a batch (fast memmap reads)
    assert len(first) == scan_data.n_batches("train", 8) == 4  # 25 train trials: 8 + 8 + 8 + 1


def test_eval_batches_have_fixed_order_and_carry_trial_ids(scan_data):
    order = rows_of(scan_data, ["test", "validation"])
    assert order == rows_of(scan_data, ["validation", "test"])
    assert sum(order, []) == scan_data.tier_indices(["validation", "test"]).tolist()
    for batch in scan_data.batches("final_test", 8):
        np.testing.assert_array_equal(batch.trial_ids, scan_data.scan.trial_idx[batch.rows])
        assert set(scan_data.tiers[batch.rows]) == {"final_test"}
        assert batch.images.shape == (len(batch), 4, 36, 64) and batch.responses.shape == (len(batch), 6)
        assert batch.behavior.shape == (len(batch), 3) and batch.pupil_center.shape == (len(batch), 2)
    with pytest.raises(UserError, match="unknown tier 'val'"):
        scan_data.tier_indices("val")


def test_image_only_view_and_neuron_threshold(scan_data):
    plain = ScanData(scan_data.scan, behavior_channels=False)
    assert plain.in_shape == (1, 36, 64) and scan_data.in_shape == (4, 36, 64)
    rows = np.arange(10)
    with_channels, without = scan_data.batch(rows), plain.batch(rows)
    np.testing.assert_array_equal(with_channels.images[:, :1], without.images)
    np.testing.assert_array_equal(with_channels.images[:, 1:, 5, 7], with_channels.behavior)
    assert np.isfinite(with_channels.responses.numpy()).all()  # neuron 0: tiny std, divided by the threshold


def test_load_data_orders_by_key_and_refuses_duplicates(make_scan, tmp_path):
    late, early = make_scan(key="9-9-9"), make_scan(key="1-1-1")
    cfg = DataConfig(scans=(str(late), str(early)), cache_dir=str(tmp_path / "cache"))
    assert list(load_data(cfg, progress=False)) == ["1-1-1", "9-9-9"]
    twin = shutil.copytree(early, tmp_path / "elsewhere" / early.name)
    with pytest.raises(DataError, match="data key 1-1-1 also belongs to"):
        load_data(DataConfig(scans=(str(early), str(twin)), cache_dir=cfg.cache_dir), progress=False)
    with pytest.raises(DataError, match="data.scans is empty"):
        load_data(DataConfig(cache_dir=cfg.cache_dir), progress=False)
