"""The official SENSORIUM 2022 scan file tree: names, shapes, the data key, and a writer.

One scan folder (``static<KEY>-GrayImageNet-<hash>``) holds, for trial index ``i`` = 0..N-1::

    data/images/<i>.npy        (1, H, W)  grayscale stimulus, 0-255 (H, W = 144, 256 officially)
    data/responses/<i>.npy     (n,)       deconvolved activity, >= 0
    data/behavior/<i>.npy      (3,)       pupil dilation, its derivative, running speed
    data/pupil_center/<i>.npy  (2,)       horizontal, vertical eye position
    meta/trials/<name>.npy     (N,)       see TRIAL_META
    meta/neurons/<name>.npy    (n,) or (n, 3)  see NEURON_META
    meta/statistics/<images|responses|behavior|pupil_center>/all/<mean|std|min|max|median>.npy

``write_scan`` is used by the synthetic generator and by tests; the reader lives in ``sensorium.data.reader``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensorium.errors import DataError

DATA_GROUPS = ("images", "responses", "behavior", "pupil_center")
TRIAL_META = ("tiers", "frame_image_id", "frame_image_class", "trial_idx", "frame_trial_ts")
NEURON_META = (
    "unit_ids",
    "cell_motor_coordinates",
    "animal_ids",
    "sessions",
    "scan_idx",
    "area",
    "layer",
)
STATISTICS = ("mean", "std", "min", "max", "median")
TIERS = ("train", "validation", "test", "final_test")
DATASET_HASH = "94c6ff995dac583098847cfecd43e7b6"

KEY_META = ("animal_ids", "sessions", "scan_idx")  # meta/neurons files a nameless scan's key comes from
_NAME_MARKERS = ("preproc", "ColorImageNet", "GrayImageNet")  # names that carry their own data key
_BAD_KEY_CHARS = re.compile(r"[./\\\s]")  # keys name folders, and torch ModuleDict keys reject "."


def scan_folder_name(key: str, digest: str = DATASET_HASH) -> str:
    """``static<key>-GrayImageNet-<digest>``, the official folder (and zip stem) name."""
    return f"static{key}-GrayImageNet-{digest}"


def data_key(path: str | Path) -> str:
    """The data key of the scan folder or zip at ``path``, by the rule of the official ``static_loader``.

    The one place the key is decided: the cache folder name and the cache manifest use it, hence
    ``Scan.key``, the model's per-scan modules and the submission folders. The official loader applies
    the rule to the whole path string; here it applies to the folder or file name (without ``.zip``), so
    the folders above a scan do not change its key:

    - containing ``preproc``: the text after the last ``static``, up to the first ``.``, without
      ``preproc`` and ``_nobehavior`` (``static22564-2-13-preproc0`` -> ``22564-2-13-0``);
    - else containing ``ColorImageNet``: after the last ``static``, before ``-ColorImageNet``;
    - else containing ``GrayImageNet``: after the last ``static``, before ``-GrayImageNet``;
    - any other name: ``<animal_ids>-<sessions>-<scan_idx>`` from the scan's own
      ``meta/neurons/{animal_ids,sessions,scan_idx}.npy`` (each must hold one value for all neurons), so a
      renamed scan keeps its key. Only these names make this function read files.

    >>> data_key("data/static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6.zip")
    '27204-5-13'

    Raises :class:`DataError` naming the file when the key cannot be derived or would be unusable.
    """
    path = Path(path)
    key = key_from_name(path.name)
    if key is None:
        # The reader owns file access to folders and zips; it imports this module, hence the late import.
        from sensorium.data.reader import read_key_meta

        key = key_from_neurons(read_key_meta(path))
    if not key or _BAD_KEY_CHARS.search(key):
        raise DataError(
            f"{path}: data key {key!r} derived from this scan is unusable; expected a non-empty key without "
            f"'.', '/' or spaces (name the scan static<key>-GrayImageNet-<hash>)"
        )
    return key


def key_from_name(name: str) -> str | None:
    """The key the official loader reads from a scan's name, or None when the name carries none.

    ``name`` is a folder or zip file name; ``.zip`` is dropped first (the official splits drop it too
    for the names it keys). See :func:`data_key` for the rule.
    """
    if name.endswith(".zip"):
        name = name[: -len(".zip")]
    marker = next((m for m in _NAME_MARKERS if m in name), None)
    if marker is None:
        return None
    tail = name.split("static")[-1]
    if marker == "preproc":
        return tail.split(".")[0].replace("preproc", "").replace("_nobehavior", "")
    return tail.split(f"-{marker}")[0]


def key_from_neurons(columns: Mapping[str, tuple[str, np.ndarray]]) -> str:
    """``<animal_ids>-<sessions>-<scan_idx>`` from ``columns``: name -> (where it was read, array).

    Each array must be one-dimensional, non-empty, of integers (integral floats allowed) or strings, and
    hold a single value: the key identifies one recording, so every neuron must share it.
    """
    parts = []
    for name in KEY_META:
        where, array = columns[name]
        if array.ndim != 1 or len(array) == 0:
            raise DataError(f"{where}: shape {array.shape}, expected one {name} entry per neuron")
        if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
            array = array.astype(np.int64)
        elif array.dtype.kind == "S":
            array = array.astype(str)
        if array.dtype.kind not in "iuU":
            raise DataError(f"{where}: dtype {array.dtype}, expected integers or strings (part of the data key)")
        values = np.unique(array)
        if len(values) != 1:
            shown = ", ".join(str(v) for v in values[:3])
            raise DataError(
                f"{where}: {len(values)} different values ({shown}{', ...' if len(values) > 3 else ''}), "
                f"expected the same {name} for every neuron; the data key <animal_ids>-<sessions>-<scan_idx> "
                f"comes from it when the scan is not named static<key>-GrayImageNet-<hash>"
            )
        parts.append(str(values[0]))
    return "-".join(parts)


@dataclass
class ScanArrays:
    """All arrays of one scan in memory, in trial-index order (row i = file ``<i>.npy``).

    images (N, 1, H, W) float32 0-255; responses (N, n) float32 >= 0; behavior (N, 3) float32;
    pupil_center (N, 2) float32; trial meta arrays (N,); neuron meta arrays (n,) and
    cell_motor_coordinates (n, 3) float in microns.
    """

    images: np.ndarray
    responses: np.ndarray
    behavior: np.ndarray
    pupil_center: np.ndarray
    trials: dict[str, np.ndarray]
    neurons: dict[str, np.ndarray]


def statistics_of(values: np.ndarray, per_column: bool) -> dict[str, np.ndarray]:
    """mean/std/min/max/median over trials: per column for (N, k) arrays, scalars for images."""
    axis = 0 if per_column else None
    return {
        "mean": np.asarray(values.mean(axis=axis), dtype=np.float32),
        "std": np.asarray(values.std(axis=axis), dtype=np.float32),
        "min": np.asarray(values.min(axis=axis), dtype=np.float32),
        "max": np.asarray(values.max(axis=axis), dtype=np.float32),
        "median": np.asarray(np.median(values, axis=axis), dtype=np.float32),
    }


def write_scan(folder: str | Path, scan: ScanArrays, statistics: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    """Write ``scan`` as an official scan folder and return its path.

    ``statistics`` defaults to the statistics of all trials of ``scan`` (as in the released data, which
    computes them over all tiers, withheld zeros included).
    """
    folder = Path(folder)
    n_trials = scan.images.shape[0]
    for group in DATA_GROUPS:
        values = getattr(scan, group)
        out = folder / "data" / group
        out.mkdir(parents=True, exist_ok=True)
        dtype = np.float32
        for i in range(n_trials):
            np.save(out / f"{i}.npy", np.asarray(values[i], dtype=dtype))
    for kind, arrays, names in (("trials", scan.trials, TRIAL_META), ("neurons", scan.neurons, NEURON_META)):
        out = folder / "meta" / kind
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            np.save(out / f"{name}.npy", arrays[name])
    if statistics is None:
        statistics = {
            "images": statistics_of(scan.images, per_column=False),
            "responses": statistics_of(scan.responses, per_column=True),
            "behavior": statistics_of(scan.behavior, per_column=True),
            "pupil_center": statistics_of(scan.pupil_center, per_column=True),
        }
    for group, stats in statistics.items():
        out = folder / "meta" / "statistics" / group / "all"
        out.mkdir(parents=True, exist_ok=True)
        for name in STATISTICS:
            np.save(out / f"{name}.npy", stats[name])
    return folder
