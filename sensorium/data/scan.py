"""One preprocessed scan in raw units at model resolution, memory-mapped from its cache folder.

A cache folder (written by :mod:`sensorium.data.cache`) holds one contiguous ``.npy`` file per array and a
``manifest.json`` written last. The four large per-trial arrays are opened with ``mmap_mode='r'``, so
every process that opens the same cache shares one copy in the page cache; the small meta arrays are
read into memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensorium.data.format import DATA_GROUPS
from sensorium.errors import DataError

MANIFEST = "manifest.json"
TRIAL_ARRAYS = ("tiers", "trial_idx", "image_ids", "trial_ts")  # (N,) each
NEURON_ARRAYS = ("unit_ids", "cell_motor_coordinates")  # (n,), (n, 3)
STAT_NAMES = ("mean", "std")


def stat_file(group: str, name: str) -> str:
    """File name of one statistic in a cache folder, e.g. ``stats-responses-std.npy``."""
    return f"stats-{group}-{name}.npy"


@dataclass
class Scan:
    """All arrays of one scan, rows in the stored trial order (row i = ``data/<group>/<i>.npy``).

    Raw units (not normalised); images already at the model resolution. The four per-trial data arrays
    are read-only memory maps.
    """

    key: str  # data key, e.g. '27204-5-13'
    source: Path  # the scan folder or zip it was built from
    images: np.ndarray  # (N, 1, H, W) float32, pixel units 0-255, at (cfg.image_height, cfg.image_width)
    responses: np.ndarray  # (N, n) float32
    behavior: np.ndarray  # (N, 3) float32: pupil dilation, its derivative, running speed
    pupil_center: np.ndarray  # (N, 2) float32: horizontal, vertical eye position
    tiers: np.ndarray  # (N,) str 'train' | 'validation' | 'test' | 'final_test'
    trial_idx: np.ndarray  # (N,) int64, or str (32-hex hashes in the competition scans)
    image_ids: np.ndarray  # (N,) int64 frame_image_id; a repeated id is a repeated presentation
    trial_ts: np.ndarray  # (N,) float64 onset in seconds after the session's first trial (frame_trial_ts)
    unit_ids: np.ndarray  # (n,) int64
    cell_motor_coordinates: np.ndarray  # (n, 3) float32, cortical x, y, z in microns
    stats: dict[str, dict[str, np.ndarray]]  # group -> {'mean', 'std'} from meta/statistics/<group>/all
    is_competition: bool  # True when the scan has a 'final_test' tier (test responses withheld)
    cache_dir: Path  # the cache folder the arrays are mapped from

    @property
    def n_trials(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_neurons(self) -> int:
        return int(self.responses.shape[1])

    @classmethod
    def open(cls, folder: Path) -> Scan:
        """Map a complete cache folder (one holding ``manifest.json``)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            big = {g: np.load(folder / f"{g}.npy", mmap_mode="r") for g in DATA_GROUPS}
            small = {n: np.load(folder / f"{n}.npy") for n in TRIAL_ARRAYS + NEURON_ARRAYS}
            stats = {
                g: {s: np.load(folder / stat_file(g, s)) for s in STAT_NAMES} for g in DATA_GROUPS
            }
        except (OSError, ValueError) as err:
            raise DataError(f"{folder}: broken scan cache ({err}); delete this folder to rebuild it") from err
        return cls(
            key=manifest["key"],
            source=Path(manifest["source"]),
            stats=stats,
            is_competition=bool(manifest["is_competition"]),
            cache_dir=folder,
            **big,
            **small,
        )
