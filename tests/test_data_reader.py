"""Reading official scans: validation errors name the path and the expectation; zip == folder."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sensorium.config import DataConfig
from sensorium.data import load_scan, resolve_scan_paths
from sensorium.data.format import data_key, key_from_name
from sensorium.data.reader import ScanReader
from sensorium.errors import DataError


def zip_scan(folder: Path, out: Path) -> Path:
    """Zip a scan folder as the official zips are: members under ``<folder name>/``."""
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return out


MUTATIONS = {
    "missing data file": (
        lambda s: (s / "data/responses/3.npy").unlink(),
        r"data/responses/3\.npy: missing file",
    ),
    "missing meta file": (
        lambda s: (s / "meta/statistics/behavior/all/std.npy").unlink(),
        r"meta/statistics/behavior/all/std\.npy: missing file",
    ),
    "missing data folder": (
        lambda s: shutil.rmtree(s / "data/pupil_center"),
        r"data/pupil_center: missing folder, expected 40 \.npy files",
    ),
    "wrong image shape": (
        lambda s: np.save(s / "data/images/2.npy", np.zeros((1, 10, 10), np.float32)),
        r"data/images/2\.npy: shape \(1, 10, 10\), expected \(1, 36, 64\)",
    ),
    "wrong response length": (
        lambda s: np.save(s / "data/responses/7.npy", np.zeros(5, np.float32)),
        r"data/responses/7\.npy: shape \(5,\), expected \(6,\)",
    ),
    "wrong dtype": (
        lambda s: np.save(s / "data/behavior/1.npy", np.array(["a", "b", "c"])),
        r"data/behavior/1\.npy: dtype <U1, expected a real number type",
    ),
    "NaN responses": (
        lambda s: np.save(s / "data/responses/5.npy", np.array([0, 1, np.nan, 1, 1, 1], np.float32)),
        r"data/responses/5\.npy: 1 non-finite values",
    ),
    "extra data file": (
        lambda s: np.save(s / "data/behavior/40.npy", np.zeros(3, np.float32)),
        r"data/behavior: 41 files, expected 40",
    ),
    "short trial meta": (
        lambda s: np.save(s / "meta/trials/frame_image_id.npy", np.arange(39)),
        r"meta/trials/frame_image_id\.npy: shape \(39,\), expected 40 entries",
    ),
    "short neuron meta": (
        lambda s: np.save(s / "meta/neurons/cell_motor_coordinates.npy", np.zeros((5, 3))),
        r"meta/neurons/cell_motor_coordinates\.npy: shape \(5, 3\), expected 6 entries",
    ),
    "unknown tier": (
        lambda s: np.save(s / "meta/trials/tiers.npy", np.array(["train", "holdout"] * 20)),
        r"meta/trials/tiers\.npy: unknown tiers \['holdout'\]",
    ),
    "duplicate trial ids": (
        lambda s: np.save(s / "meta/trials/trial_idx.npy", np.zeros(40, np.int64)),
        r"meta/trials/trial_idx\.npy: duplicate values",
    ),
    "pickled meta": (
        lambda s: np.save(s / "meta/neurons/area.npy", np.array([object()] * 6)),
        r"meta/neurons/area\.npy: not a plain \.npy array",
    ),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_invalid_scan_raises_data_error_naming_path(make_scan, tmp_path, name):
    mutate, message = MUTATIONS[name]
    scan = make_scan()
    mutate(scan)
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=message) as err:
        load_scan(scan, cfg, progress=False)
    assert str(scan) in str(err.value)
    # nothing half-built is left behind under the final name, and no temporary folder either
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_invalid_member_inside_zip_names_zip_and_member(make_scan, tmp_path):
    scan = make_scan()
    np.save(scan / "data/responses/5.npy", np.full(6, np.nan, np.float32))
    archive = zip_scan(scan, tmp_path / f"{scan.name}.zip")
    with pytest.raises(DataError, match=rf"{archive.name}:{scan.name}/data/responses/5\.npy: 6 non-finite"):
        load_scan(archive, DataConfig(cache_dir=str(tmp_path / "cache")), progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_zip_names_the_zip(make_scan, tmp_path, damage):
    archive = zip_scan(make_scan(), tmp_path / "static9-9-9-GrayImageNet-abc.zip")
    data = archive.read_bytes()
    archive.write_bytes(b"not a zip at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{archive}: not a readable zip file"):
        load_scan(archive, DataConfig(cache_dir=str(tmp_path / "cache")), progress=False)


def test_zip_without_scan_folder(tmp_path):
    archive = tmp_path / "static1-1-1-GrayImageNet-abc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match=r"holds no scan folder; expected exactly one <name>/meta/trials/tiers\.npy"):
        ScanReader(archive)


def test_zip_and_folder_give_identical_arrays(make_scan, tmp_path):
    folder = make_scan(competition=True, image_shape=(72, 128))
    archive = zip_scan(folder, tmp_path / f"{folder.name}.zip")
    before = archive.read_bytes()
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    a, b = load_scan(folder, cfg, progress=False), load_scan(archive, cfg, progress=False)
    assert a.cache_dir != b.cache_dir and a.key == b.key == "1-2-3"
    for name in ("images", "responses", "behavior", "pupil_center", "tiers", "trial_idx", "image_ids",
                 "unit_ids", "cell_motor_coordinates"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.images.shape == (40, 1, 36, 64) and a.is_competition and a.trial_idx.dtype.kind == "U"
    assert archive.read_bytes() == before  # the user's zip is never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache", archive.name, "scans"])  # nothing extracted


def test_scan_arrays_match_the_files(make_scan, tmp_path):
    folder = make_scan()
    scan = load_scan(folder, DataConfig(cache_dir=str(tmp_path / "cache")), progress=False)
    np.testing.assert_array_equal(scan.responses[7], np.load(folder / "data/responses/7.npy"))
    np.testing.assert_array_equal(scan.images[3], np.load(folder / "data/images/3.npy"))
    np.testing.assert_array_equal(scan.trial_idx, np.load(folder / "meta/trials/trial_idx.npy"))
    np.testing.assert_array_equal(scan.stats["responses"]["std"],
                                  np.load(folder / "meta/statistics/responses/all/std.npy"))
    assert scan.stats["images"]["mean"].shape == ()
    assert (scan.n_trials, scan.n_neurons, scan.is_competition) == (40, 6, False)


def test_resolve_scan_paths(make_scan, tmp_path):
    one = make_scan(key="1-1-1")
    two = make_scan(key="2-2-2")
    zip_scan(two, two.parent / f"{two.name}.zip")  # folder and its zip side by side: the folder wins
    three = zip_scan(make_scan(key="3-3-3"), tmp_path / "static3-3-3-GrayImageNet-abc.zip")
    shutil.rmtree(one.parent / "static3-3-3-GrayImageNet-94c6ff995dac583098847cfecd43e7b6")
    assert resolve_scan_paths([three, one.parent, str(one)]) == sorted([one, two, three])
    with pytest.raises(DataError, match="no such scan folder"):
        resolve_scan_paths([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no scan folders"):
        resolve_scan_paths([tmp_path / "empty"])


# ------------------------------------------------------------------------------------------- data keys
def _set_key_meta(scan: Path, animal: object, session: object, scan_idx: object, n_neurons: int = 6) -> None:
    """Give every neuron of ``scan`` these animal id, session and scan index."""
    for name, value in (("animal_ids", animal), ("sessions", session), ("scan_idx", scan_idx)):
        np.save(scan / f"meta/neurons/{name}.npy", np.full(n_neurons, value))


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6", "27204-5-13"),
        ("static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6.zip", "27204-5-13"),
        ("static26872-17-20-ColorImageNet-0123abcd.zip", "26872-17-20"),
        ("static22564-2-13-preproc0", "22564-2-13-0"),
        ("static22564-2-13-preproc0_nobehavior.zip", "22564-2-13-0"),
        ("ds", None),
        ("static29999-1-1", None),
    ],
)
def test_key_from_name_follows_the_official_loader(name, key):
    assert key_from_name(name) == key


def test_official_name_keeps_its_key_without_reading_meta(make_scan):
    scan = make_scan(key="27204-5-13")
    _set_key_meta(scan, 29999, 1, 1)  # the name wins, as in the official loader
    (scan / "meta/neurons/animal_ids.npy").unlink()
    assert data_key(scan) == "27204-5-13"


def test_renamed_folder_and_zip_take_their_key_from_meta(make_scan, tmp_path):
    scan = make_scan()
    _set_key_meta(scan, 29999, 1, 1)
    folder = scan.rename(scan.parent / "ds")
    archive = zip_scan(folder, tmp_path / "ds.zip")
    uploaded = zip_scan(folder, tmp_path / "upload (1).zip")  # zip and inner folder named differently
    assert data_key(folder) == data_key(archive) == data_key(uploaded) == "29999-1-1"
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    for source in (folder, archive):
        loaded = load_scan(source, cfg, progress=False)
        assert loaded.key == "29999-1-1" and loaded.cache_dir.name.startswith("29999-1-1-")


def test_meta_key_accepts_strings_and_integral_floats(make_scan):
    scan = make_scan()
    _set_key_meta(scan, "mouseA", 3.0, np.uint8(7))
    assert data_key(scan.rename(scan.parent / "ds")) == "mouseA-3-7"


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_missing_key_meta_names_the_file(make_scan, tmp_path, where):
    folder = make_scan().rename(tmp_path / "scans" / "ds")
    (folder / "meta/neurons/sessions.npy").unlink()
    path = folder if where == "folder" else zip_scan(folder, tmp_path / "ds.zip")
    shown = f"{folder}/" if where == "folder" else f"{path}:ds/"
    with pytest.raises(DataError, match=rf"^{re.escape(shown)}meta/neurons/sessions\.npy: missing file; 'ds"):
        data_key(path)
    with pytest.raises(DataError, match=r"sessions\.npy: missing file"):
        load_scan(path, DataConfig(cache_dir=str(tmp_path / "cache")), progress=False)


def test_key_meta_must_be_constant_across_neurons(make_scan):
    folder = make_scan()
    np.save(folder / "meta/neurons/animal_ids.npy", np.array([1, 1, 1, 2, 2, 2]))
    folder = folder.rename(folder.parent / "ds")
    with pytest.raises(DataError, match=r"ds/meta/neurons/animal_ids\.npy: 2 different values \(1, 2\), "
                                        r"expected the same animal_ids for every neuron"):
        data_key(folder)


@pytest.mark.parametrize("name", ["static1.5-2-3-GrayImageNet-abc", "static-GrayImageNet-abc"])
def test_unusable_key_names_the_scan(name):
    with pytest.raises(DataError, match=rf"{re.escape(name)}: data key .* is unusable"):
        data_key(Path("data") / name)
