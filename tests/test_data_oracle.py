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
import torch

from sensorium.config import DataConfig
from sensorium.data import ScanData, load_data
from sensorium.data.normalization import response_precision
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


def model_input(batch) -> torch.Tensor:
    """The full model input the core sees: the image plus the behaviour as constant channels (B, 4, H, W)."""
    channels = batch.behavior[:, :, None, None].expand(-1, -1, *batch.images.shape[-2:])
    return torch.cat([batch.images, channels], dim=1)


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
            ours_batch = {"images": model_input(batch), "responses": batch.responses, "behavior": batch.behavior,
                          "pupil_center": batch.pupil_center}
            for j, trial_id in enumerate(batch.trial_ids.tolist()):
                item = reference[position[trial_id]]
                assert ours_batch["images"].shape[1:] == item.images.shape == (4, *data.in_shape[1:])
                for name, atol in (("images", 1e-4), ("responses", 1e-5), ("behavior", 1e-5), ("pupil_center", 1e-5)):
                    np.testing.assert_allclose(ours_batch[name][j].numpy(), getattr(item, name), rtol=1e-5,
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
        assert batch.images.shape == (len(batch), 1, 36, 64) and batch.responses.shape == (len(batch), 6)
        assert batch.behavior.shape == (len(batch), 3) and batch.pupil_center.shape == (len(batch), 2)
    with pytest.raises(UserError, match="unknown tier 'val'"):
        scan_data.tier_indices("val")


def test_image_only_view_and_neuron_threshold(scan_data):
    plain = ScanData(scan_data.scan, behavior_channels=False)
    assert plain.in_shape == (1, 36, 64) and scan_data.in_shape == (4, 36, 64)
    rows = np.arange(10)
    with_channels, without = scan_data.batch(rows), plain.batch(rows)
    np.testing.assert_array_equal(with_channels.images, without.images)
    assert torch.equal(with_channels.behavior, without.behavior)  # the model decides whether it reads them
    assert np.isfinite(with_channels.responses.numpy()).all()  # neuron 0: tiny std, divided by the threshold


def plain_numpy_batch(data: ScanData, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The normalisation written out in NumPy, per batch: the plain path the torch gathering must equal."""
    scan, stats = data.scan, data.scan.stats
    inverse = {g: np.where(stats[g]["std"] > 0, 1 / np.where(stats[g]["std"] > 0, stats[g]["std"], 1), 1)
               .astype(np.float32) for g in ("behavior", "pupil_center")}
    return {
        "images": (scan.images[rows] - np.float32(stats["images"]["mean"])) / np.float32(stats["images"]["std"]),
        "responses": scan.responses[rows] * response_precision(stats["responses"]["std"]),
        "behavior": scan.behavior[rows] * inverse["behavior"],
        "pupil_center": (scan.pupil_center[rows] - stats["pupil_center"]["mean"].astype(np.float32))
        * inverse["pupil_center"],
    }


def test_batches_equal_the_plain_numpy_path_bit_for_bit(scan_data):
    seen = []
    for batch in scan_data.batches(ALL_TIERS, 16, rng=np.random.default_rng(5)):
        plain = plain_numpy_batch(scan_data, batch.rows)
        for name, values in plain.items():
            np.testing.assert_array_equal(getattr(batch, name).numpy(), values, err_msg=name)
        np.testing.assert_array_equal(batch.trial_ids, scan_data.scan.trial_idx[batch.rows])
        seen.append(batch.rows)
    # the order is the NumPy generator's permutation, sorted inside each batch
    perm = np.random.default_rng(5).permutation(scan_data.tier_indices(ALL_TIERS))
    np.testing.assert_array_equal(np.concatenate(seen), np.concatenate(
        [np.sort(perm[i : i + 16]) for i in range(0, len(perm), 16)]))
    without = next(scan_data.batches("validation", 8, responses=False))
    assert without.responses is None
    np.testing.assert_array_equal(scan_data.normalised_responses(without.rows),
                                  plain_numpy_batch(scan_data, without.rows)["responses"])


def test_device_arrays_on_the_cpu_are_the_memory_maps(scan_data):
    """The device-resident path with device=cpu: the scan's tensors share the cache's pages, no copy."""
    arrays = scan_data.on(torch.device("cpu"))
    assert arrays is scan_data.on(torch.device("cpu"))  # built once
    for name in ("images", "responses", "behavior", "pupil_center"):
        mapped = getattr(scan_data.scan, name)
        assert arrays.__dict__[name].data_ptr() == mapped.__array_interface__["data"][0], name


def test_load_data_orders_by_key_and_refuses_duplicates(make_scan, tmp_path):
    late, early = make_scan(key="9-9-9"), make_scan(key="1-1-1")
    cfg = DataConfig(scans=(str(late), str(early)), cache_dir=str(tmp_path / "cache"))
    assert list(load_data(cfg, progress=False)) == ["1-1-1", "9-9-9"]
    twin = shutil.copytree(early, tmp_path / "elsewhere" / early.name)
    with pytest.raises(DataError, match="data key 1-1-1 also belongs to"):
        load_data(DataConfig(scans=(str(early), str(twin)), cache_dir=cfg.cache_dir), progress=False)
    with pytest.raises(DataError, match="data.scans is empty"):
        load_data(DataConfig(cache_dir=cfg.cache_dir), progress=False)
