"""Driver-side data preparation: absolute paths, then the preprocessed cache built once before any trial.

Trials then only memory-map the cache (``sensorium.data.load_scan`` finds it complete and maps its
``.npy`` files), so a second concurrent trial shares the image and response arrays through the page cache
instead of reading and preprocessing the scans again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sensorium.config import ExperimentConfig, set_value
from sensorium.errors import UserError


def absolute_data_paths(cfg: ExperimentConfig, root: Path | None = None) -> ExperimentConfig:
    """``cfg`` with data.scans and data.cache_dir made absolute (against ``root``, default the cwd).

    Ray starts each trial in its own working directory, so relative paths would point elsewhere there.
    """
    root = (root or Path.cwd()).resolve()
    if not cfg.data.scans:
        raise UserError("no data: set data.scans in the base config (or overrides) or pass --data PATH...")
    scans = [str((root / Path(s).expanduser()).resolve()) for s in cfg.data.scans]
    cache = str((root / Path(cfg.data.cache_dir).expanduser()).resolve())
    cfg = set_value(cfg, "data.scans", scans)
    return set_value(cfg, "data.cache_dir", cache)


def prepare_caches(cfg: ExperimentConfig, progress: bool = True) -> list[Path]:
    """Preprocess every scan of ``cfg.data`` into the cache (no-op where it exists); returns the scan paths."""
    from sensorium.data import load_scan, resolve_scan_paths

    paths = resolve_scan_paths(list(cfg.data.scans))
    for path in paths:
        start = time.perf_counter()
        scan = load_scan(path, cfg.data, progress=progress)
        if progress:
            print(
                f"data: {scan.key} {scan.n_trials} trials x {scan.n_neurons} neurons ready in "
                f"{time.perf_counter() - start:.1f} s (cache {cfg.data.cache_dir})",
                file=sys.stderr,
            )
    return paths
