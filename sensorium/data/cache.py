"""Preprocess a scan once into a memory-mappable cache folder; later opens map it.

Cache folder: ``<cfg.cache_dir>/<data key>-<16 hex>``, the hex digest covering the source's identity
(resolved path plus size and modification time of the zip, or of every file of the scan folder) and the
preprocessing settings (model image size, cache format version). Editing or replacing the source, or
changing the image size, gives a new folder.

Building is safe when many processes (e.g. Ray trials) open the same scan at once: one process takes an
exclusive ``fcntl`` lock, builds into a temporary folder and publishes it with an atomic rename; the others
wait for the lock, then map the published folder. A half-built cache is never visible under the final
name: a failed build (a full disk: WriteError naming the cache folder) removes its temporary folder, and
leftovers of a killed build are removed by the next builder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from skimage.transform import resize
from tqdm import tqdm

from sensorium.atomic import exclusive_lock, write_error, write_text
from sensorium.config import DataConfig
from sensorium.data.format import DATA_GROUPS, data_key
from sensorium.data.reader import ScanReader
from sensorium.data.scan import MANIFEST, STAT_NAMES, Scan, stat_file
from sensorium.errors import DataError

CACHE_VERSION = 2  # bump when the cache layout or the preprocessing changes (2: trial onsets, trial_ts)


def load_scan(path: Path, cfg: DataConfig, progress: bool = True) -> Scan:
    """Validate and preprocess the scan at ``path`` (folder or zip) once, then memory-map the cache.

    Images are resampled to (cfg.image_height, cfg.image_width) as the reference does (see
    :func:`downscale`); everything else is stored as read. A call that finds a complete cache does no
    validation and no copying: it only maps files.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such scan folder or .zip file")
    root = Path(cfg.cache_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{data_key(path)}-{cache_digest(path, cfg)}"
    final = root / name
    if (final / MANIFEST).is_file():
        return Scan.open(final)
    with exclusive_lock(root / f".{name}.lock", "cache build", wait=True):
        if not (final / MANIFEST).is_file():  # another process may have built it while we waited
            for stale in root.glob(f".{name}.tmp-*"):  # we hold the lock: nobody is building these
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # a damaged cache (manifest gone): rebuild it
                shutil.rmtree(final)
            tmp = root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                build_cache(path, tmp, (cfg.image_height, cfg.image_width), progress=progress)
                os.rename(tmp, final)
            except OSError as err:  # name the cache folder, not a file in the temporary one
                raise write_error(final, err) from err
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return Scan.open(final)


def cache_digest(path: Path, cfg: DataConfig) -> str:
    """16 hex digits identifying (source identity, preprocessing settings)."""
    identity = {
        "version": CACHE_VERSION,
        "source": source_fingerprint(path),
        "image_size": [cfg.image_height, cfg.image_width],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def source_fingerprint(path: Path) -> dict:
    """Resolved path plus (size, mtime) of the zip, or of every file of a scan folder (one stat each)."""
    path = Path(path).resolve()
    if path.is_file():
        st = path.stat()
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    n_files = 0
    pending = [path / "meta", path / "data"]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue  # the reader reports missing folders
        digest.update(f"{folder.relative_to(path)}/".encode())
        for entry in entries:
            if entry.is_dir():
                pending.append(Path(entry.path))
            else:
                st = entry.stat()
                digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns};".encode())
                n_files += 1
    return {"path": str(path), "files": n_files, "digest": digest.hexdigest()}


def downscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) pixel image -> ``size`` float32, as neuralpredictors' ``ScaleInputs``.

    That is ``skimage.transform.rescale(scale, mode='reflect', anti_aliasing=False, clip=True,
    preserve_range=True)`` (bilinear); ``rescale`` is ``resize`` to ``round(scale * shape)``, so 144x256 ->
    36x64 is exactly the reference's ``scale=0.25``. Images already at ``size`` are returned unchanged.
    """
    if image.shape == size:
        return image.astype(np.float32)
    out = resize(image.astype(np.float64), size, order=1, mode="reflect", anti_aliasing=False, clip=True,
                 preserve_range=True)
    return out.astype(np.float32)


def build_cache(source: Path, out: Path, size: tuple[int, int], progress: bool = True) -> None:
    """Read and validate ``source`` and write the cache folder ``out`` (manifest last)."""
    with ScanReader(source) as reader:
        meta = reader.meta
        n, key = meta.n_trials, data_key(source)
        out.mkdir(parents=True)
        shapes = {
            "images": (n, 1, *size),
            "responses": (n, meta.n_neurons),
            "behavior": (n, 3),
            "pupil_center": (n, 2),
        }
        arrays = {g: _allocated_memmap(out / f"{g}.npy", shapes[g]) for g in DATA_GROUPS}
        start = time.perf_counter()
        for i in tqdm(range(n), desc=f"caching {key}", unit="trial", disable=not progress, file=sys.stderr):
            arrays["images"][i, 0] = downscale(reader.item("images", i)[0], size)
            for group in DATA_GROUPS[1:]:
                arrays[group][i] = reader.item(group, i)
        for array in arrays.values():
            array.flush()
        del arrays
        tiers = meta.trials["tiers"]
        small = {
            "tiers": tiers,
            "trial_idx": meta.trials["trial_idx"],
            "image_ids": meta.trials["frame_image_id"],
            "trial_ts": meta.trials["frame_trial_ts"],
            "unit_ids": meta.neurons["unit_ids"],
            "cell_motor_coordinates": meta.neurons["cell_motor_coordinates"].astype(np.float32),
        }
        for name, array in small.items():
            np.save(out / f"{name}.npy", np.ascontiguousarray(array))
        for group in DATA_GROUPS:
            for stat in STAT_NAMES:
                np.save(out / stat_file(group, stat), meta.stats[group][stat])
        manifest = {
            "key": key,
            "source": str(Path(source).resolve()),
            "is_competition": bool((tiers == "final_test").any()),
            "stored_image_shape": list(meta.image_shape),
            "image_size": list(size),
            "n_trials": n,
            "n_neurons": meta.n_neurons,
            "cache_version": CACHE_VERSION,
            "build_id": uuid.uuid4().hex,
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        write_text(out / MANIFEST, json.dumps(manifest, indent=1))  # last, and whole: it marks the cache complete


def _allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new float32 .npy file of ``shape``, memory-mapped for writing, its disk blocks reserved up front.

    open_memmap makes a sparse file; writing its pages on a full disk would kill the process with SIGBUS
    (no error, no clean-up). Reserving the blocks first turns that into an OSError (ENOSPC) here.
    """
    array = open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    if hasattr(os, "posix_fallocate"):  # not on macOS, where a full disk can still end a build with SIGBUS
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array
