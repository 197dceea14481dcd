"""Official SENSORIUM scans: open (folder or zip), validate, cache once, normalise and batch.

    >>> from sensorium.data import load_data
    >>> data = load_data(cfg.data)            # doctest: +SKIP  (dict data key -> ScanData)

Data flow: ``reader`` (validate the official file tree) -> ``cache`` (preprocess once into memory-mapped
``.npy`` files) -> ``scan.Scan`` (raw units, model resolution) -> ``dataset.ScanData`` (normalised batches).

The names below are imported on first use, so ``import sensorium.data.format`` (the synthetic generator,
``inspect``) does not pay for importing torch and scikit-image.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Batch": "sensorium.data.dataset",
    "History": "sensorium.data.dataset",
    "ScanData": "sensorium.data.dataset",
    "load_data": "sensorium.data.dataset",
    "load_scan": "sensorium.data.cache",
    "resolve_scan_paths": "sensorium.data.reader",
    "Scan": "sensorium.data.scan",
}
__all__ = ["Batch", "History", "Scan", "ScanData", "load_data", "load_scan", "resolve_scan_paths"]  # = _EXPORTS

if TYPE_CHECKING:
    from sensorium.data.cache import load_scan
    from sensorium.data.dataset import Batch, History, ScanData, load_data
    from sensorium.data.reader import resolve_scan_paths
    from sensorium.data.scan import Scan


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sensorium.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
