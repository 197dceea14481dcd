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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

_NAME = re.compile(r"^static(?P<key>.+?)-GrayImageNet-(?P<hash>[0-9a-f]+)$")


def scan_folder_name(key: str, digest: str = DATASET_HASH) -> str:
    """``static<key>-GrayImageNet-<digest>``, the official folder (and zip stem) name."""
    return f"static{key}-GrayImageNet-{digest}"


def data_key(path: str | Path) -> str:
    """The data key of a scan folder or zip, as the official code derives it.

    >>> data_key("data/static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6.zip")
    '27204-5-13'

    Names that do not follow the official pattern keep their stem (minus a leading ``static``).
    """
    stem = Path(path).name
    if stem.endswith(".zip"):
        stem = stem[: -len(".zip")]
    match = _NAME.match(stem)
    if match:
        return match.group("key")
    return stem[len("static") :] if stem.startswith("static") else stem


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
