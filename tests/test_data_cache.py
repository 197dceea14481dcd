"""The preprocessed cache: built once, hit afterwards, keyed by source and settings, safe under concurrency."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from sensorium.config import DataConfig
from sensorium.data import load_scan
from sensorium.data.cache import downscale
from sensorium.errors import DataError


def build_id(scan) -> str:
    return json.loads((scan.cache_dir / "manifest.json").read_text())["build_id"]


def cache_entries(cfg: DataConfig) -> list[str]:
    return sorted(p.name for p in Path(cfg.cache_dir).iterdir() if p.is_dir())


def test_second_open_hits_the_cache(make_scan, tmp_path):
    folder = make_scan()
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    first = load_scan(folder, cfg, progress=False)
    manifest = first.cache_dir / "manifest.json"
    stamp = (manifest.stat().st_mtime_ns, (first.cache_dir / "images.npy").stat().st_mtime_ns)
    second = load_scan(folder, cfg, progress=False)
    assert second.cache_dir == first.cache_dir and build_id(second) == build_id(first)
    assert (manifest.stat().st_mtime_ns, (first.cache_dir / "images.npy").stat().st_mtime_ns) == stamp
    assert cache_entries(cfg) == [first.cache_dir.name]
    for name in ("images", "responses", "behavior", "pupil_center"):
        array = getattr(second, name)
        assert isinstance(array, np.memmap) and array.mode == "r" and array.flags.c_contiguous
        assert array.dtype == np.float32


def test_cache_key_follows_source_and_settings(make_scan, tmp_path):
    folder = make_scan(image_shape=(72, 128))
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    base = load_scan(folder, cfg, progress=False)
    smaller = load_scan(folder, DataConfig(cache_dir=cfg.cache_dir, image_height=18, image_width=32), progress=False)
    assert smaller.cache_dir != base.cache_dir and smaller.images.shape == (40, 1, 18, 32)
    # rewriting one data file of the source gives a new cache holding the new values
    np.save(folder / "data/responses/4.npy", np.full(6, 7.0, np.float32))
    changed = load_scan(folder, cfg, progress=False)
    assert changed.cache_dir != base.cache_dir
    np.testing.assert_array_equal(changed.responses[4], np.full(6, 7.0, np.float32))
    assert len(cache_entries(cfg)) == 3


def test_downscale_is_reference_rescale():
    from skimage.transform import rescale

    image = np.random.default_rng(0).uniform(0, 255, (144, 256)).astype(np.float32)
    expected = rescale(image[None].astype(np.float64), 0.25, mode="reflect", anti_aliasing=False, clip=True,
                       preserve_range=True, channel_axis=0)[0]
    np.testing.assert_allclose(downscale(image, (36, 64)), expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(downscale(image, (144, 256)), image)  # already at size: untouched


def test_failed_build_leaves_nothing_and_stale_temp_is_ignored(make_scan, tmp_path):
    folder = make_scan()
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    good = np.load(folder / "data/pupil_center/39.npy")
    np.save(folder / "data/pupil_center/39.npy", np.array([np.inf, 0], np.float32))  # fails on the last trial
    with pytest.raises(DataError, match="pupil_center/39.npy"):
        load_scan(folder, cfg, progress=False)
    assert cache_entries(cfg) == []
    np.save(folder / "data/pupil_center/39.npy", good)
    name = load_scan(folder, cfg, progress=False).cache_dir.name
    # a crashed builder's temporary folder (and a final folder without manifest) are never used
    (Path(cfg.cache_dir) / name / "manifest.json").unlink()
    stale = Path(cfg.cache_dir) / f".{name}.tmp-1-deadbeef"
    stale.mkdir()
    scan = load_scan(folder, cfg, progress=False)
    assert cache_entries(cfg) == [name] and (scan.cache_dir / "manifest.json").is_file()
    np.testing.assert_array_equal(scan.pupil_center[39], good)


def _open_in_child(folder: str, cache_dir: str, start, queue) -> None:
    start.wait()
    try:
        scan = load_scan(Path(folder), DataConfig(cache_dir=cache_dir), progress=False)
        queue.put((build_id(scan), float(np.asarray(scan.responses).sum())))
    except Exception as err:  # report instead of dying silently, so the test fails fast and says why
        queue.put(("error", repr(err)))


def test_concurrent_builds_end_with_one_valid_cache(make_scan, tmp_path):
    folder = make_scan(n_trials=300, n_neurons=50, image_shape=(72, 128))
    cache_dir = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=_open_in_child, args=(str(folder), cache_dir, start, queue)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert results[0] == results[1]  # same build, same values: one process built, the other mapped it
    cfg = DataConfig(cache_dir=cache_dir)
    assert len(cache_entries(cfg)) == 1 and not list(Path(cache_dir).glob(".*.tmp-*"))
    scan = load_scan(folder, cfg, progress=False)
    assert build_id(scan) == results[0][0]
