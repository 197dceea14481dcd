"""Normalised, batched view of scans: what models and ``fit`` consume.

Normalisation follows neuralpredictors' ``NeuroNormalizer`` with stats source ``all`` (SENSORIUM.md §1),
using ``meta/statistics/<group>/all/{mean,std}``:

- images: ``(x - mean) / std`` with scalar mean and std;
- responses: ``x / std`` per neuron, no centring; a neuron whose std is not above 1% of the mean std
  (``threshold = 0.01 * std.mean()``) is divided by that threshold instead;
- behavior: ``x / std`` per channel, no centring, no threshold;
- pupil_center: ``(x - mean) / std`` per coordinate.

One deliberate difference: where a behaviour or pupil-centre std is exactly 0 (the SENSORIUM scan has
them zeroed) the reference yields inf/NaN; here that channel is left unscaled (divided by 1).
With ``behavior_channels`` the three normalised behaviour values are appended to the image as three
constant channels (``AddBehaviorAsChannels``); the pupil centre is kept separately for the shifter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sensorium.config import DataConfig
from sensorium.data.cache import load_scan
from sensorium.data.format import TIERS
from sensorium.data.normalization import response_precision
from sensorium.data.reader import resolve_scan_paths
from sensorium.data.scan import Scan
from sensorium.errors import DataError, UserError


@dataclass
class Batch:
    """One batch of one scan, normalised, as torch tensors on the requested device."""

    images: torch.Tensor  # (B, C, H, W) float32; channels 1..3 = normalised behaviour when C == 4
    responses: torch.Tensor  # (B, n) float32, x / std per neuron (threshold rule)
    behavior: torch.Tensor  # (B, 3) float32, x / std per channel
    pupil_center: torch.Tensor  # (B, 2) float32, z-scored
    rows: np.ndarray  # (B,) row indices into the scan, ascending
    trial_ids: np.ndarray  # (B,) trial_idx values of those rows

    def __len__(self) -> int:
        return len(self.rows)


def _safe_inverse(std: np.ndarray) -> np.ndarray:
    """1 / std, with 1 where std == 0 (a constant channel is left unscaled instead of becoming NaN)."""
    std = np.asarray(std, dtype=np.float32)
    return np.where(std > 0, 1 / np.where(std > 0, std, 1), 1).astype(np.float32)


class ScanData:
    """Normalised view of one :class:`Scan`; see the module docstring for the rules.

    >>> data = ScanData(scan, behavior_channels=True)                      # doctest: +SKIP
    >>> for batch in data.batches("train", 128, rng=np.random.default_rng(0)):  # doctest: +SKIP
    ...     batch.images.shape                                             # (128, 4, 36, 64)
    """

    def __init__(self, scan: Scan, behavior_channels: bool) -> None:
        self.scan = scan
        self.key = scan.key
        self.behavior_channels = behavior_channels
        self.n_neurons = scan.n_neurons
        height, width = scan.images.shape[-2:]
        self.in_shape = (1 + 3 * int(behavior_channels), int(height), int(width))
        self.unit_ids = scan.unit_ids
        self.cell_motor_coordinates = scan.cell_motor_coordinates
        self.trial_ids = scan.trial_idx
        self.image_ids = scan.image_ids
        self.tiers = scan.tiers

        stats = scan.stats
        self._image_mean = np.float32(stats["images"]["mean"])
        self._image_std = np.float32(stats["images"]["std"])
        self._response_precision = response_precision(stats["responses"]["std"])  # (n,)
        self._behavior_precision = _safe_inverse(stats["behavior"]["std"])  # (3,)
        self._pupil_mean = stats["pupil_center"]["mean"].astype(np.float32)  # (2,)
        self._pupil_precision = _safe_inverse(stats["pupil_center"]["std"])  # (2,)

    def tier_indices(self, tiers: str | Sequence[str]) -> np.ndarray:
        """Ascending row indices of the trials in ``tiers`` (one name or several)."""
        names = [tiers] if isinstance(tiers, str) else list(tiers)
        unknown = sorted(set(names) - set(TIERS))
        if unknown:
            raise UserError(f"unknown tier {unknown[0]!r}; expected one of {', '.join(TIERS)}")
        return np.flatnonzero(np.isin(self.tiers, names))

    def n_batches(self, tiers: str | Sequence[str], batch_size: int) -> int:
        """Number of batches :meth:`batches` yields (the last one may be smaller)."""
        return -(-len(self.tier_indices(tiers)) // batch_size)

    def batches(
        self,
        tiers: str | Sequence[str],
        batch_size: int,
        rng: np.random.Generator | None = None,
        device: torch.device = torch.device("cpu"),
    ) -> Iterator[Batch]:
        """Batches of the trials in ``tiers``, the last one possibly smaller.

        ``rng`` given: the trials are permuted by ``rng`` (same generator state, same batches); rows
        inside a batch are sorted (faster reads from the memory maps). ``rng`` None: fixed ascending row
        order, for evaluation.
        """
        if batch_size <= 0:
            raise UserError(f"batch_size={batch_size}: expected a value > 0")
        rows = self.tier_indices(tiers)
        if rng is not None:
            rows = rng.permutation(rows)
        for start in range(0, len(rows), batch_size):
            yield self.batch(np.sort(rows[start : start + batch_size]), device)

    def batch(self, rows: np.ndarray, device: torch.device = torch.device("cpu")) -> Batch:
        """The normalised batch of the given rows (ascending row indices read fastest)."""
        scan = self.scan
        images = (scan.images[rows] - self._image_mean) / self._image_std  # (B, 1, H, W)
        behavior = scan.behavior[rows] * self._behavior_precision  # (B, 3)
        if self.behavior_channels:
            channels = np.broadcast_to(behavior[:, :, None, None], (len(rows), 3, *images.shape[-2:]))
            images = np.concatenate([images, channels], axis=1)  # (B, 4, H, W)
        arrays = {
            "images": images,
            "responses": scan.responses[rows] * self._response_precision,
            "behavior": behavior,
            "pupil_center": (scan.pupil_center[rows] - self._pupil_mean) * self._pupil_precision,
        }
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(device) for k, v in arrays.items()}
        return Batch(**tensors, rows=rows, trial_ids=self.trial_ids[rows])


def load_data(cfg: DataConfig, progress: bool = True) -> dict[str, ScanData]:
    """Open every scan of ``cfg.scans`` (cached after the first call), ordered by data key."""
    if not cfg.scans:
        raise DataError("data.scans is empty: give scan folders, official .zip files or directories holding them")
    scans: dict[str, Scan] = {}
    for path in resolve_scan_paths(cfg.scans):
        scan = load_scan(path, cfg, progress=progress)
        if scan.key in scans:
            other = scans[scan.key].source
            raise DataError(f"{path}: data key {scan.key} also belongs to {other}; expected unique scans")
        scans[scan.key] = scan
    return {key: ScanData(scans[key], cfg.behavior_channels) for key in sorted(scans)}
