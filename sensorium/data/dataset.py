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
With ``behavior_channels`` the model input is the image plus the three normalised behaviour values as
three constant channels (``AddBehaviorAsChannels``); batches carry the image (B, 1, H, W) and the behaviour
(B, 3) apart, and the model's core appends the channels without building them (``sensorium.models.Core``).
The pupil centre is kept separately for the shifter.
"""

from __future__ import annotations

import warnings
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
    """One batch of one scan, normalised, as torch tensors on the device the batch was asked for (the model's
    ``BatchInputs``: a model built for behaviour channels appends ``behavior`` to the image itself)."""

    images: torch.Tensor  # (B, 1, H, W) float32, normalised image
    responses: torch.Tensor | None  # (B, n) float32, x / std per neuron (threshold rule); None if not asked for
    behavior: torch.Tensor  # (B, 3) float32, x / std per channel
    pupil_center: torch.Tensor  # (B, 2) float32, z-scored
    rows: np.ndarray  # (B,) row indices into the scan, ascending
    trial_ids: np.ndarray  # (B,) trial_idx values of those rows

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class _DeviceArrays:
    """One scan's per-trial arrays (raw units) and normalisation constants as tensors on one device.

    On the CPU the arrays are the cache's memory maps themselves (no copy: every process shares the page
    cache); on a GPU they are copied there once, so batches are gathered and normalised on the device.
    """

    images: torch.Tensor  # (N, 1, H, W)
    responses: torch.Tensor  # (N, n)
    behavior: torch.Tensor  # (N, 3)
    pupil_center: torch.Tensor  # (N, 2)
    image_mean: float
    image_std: float
    response_precision: torch.Tensor  # (n,)
    behavior_precision: torch.Tensor  # (3,)
    pupil_mean: torch.Tensor  # (2,)
    pupil_precision: torch.Tensor  # (2,)


def _safe_inverse(std: np.ndarray) -> np.ndarray:
    """1 / std, with 1 where std == 0 (a constant channel is left unscaled instead of becoming NaN)."""
    std = np.asarray(std, dtype=np.float32)
    return np.where(std > 0, 1 / np.where(std > 0, std, 1), 1).astype(np.float32)


def _to_device(array: np.ndarray, device: torch.device, chunk_rows: int = 1024) -> torch.Tensor:
    """A (read-only, memory-mapped) array as a tensor on ``device``: zero-copy on the CPU, else copied
    there in chunks of rows (host memory stays bounded by one chunk)."""
    with warnings.catch_warnings():  # the memory maps are read-only; nothing here writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        host = torch.from_numpy(array)
    if device.type == "cpu":
        return host
    out = torch.empty(host.shape, dtype=host.dtype, device=device)
    for start in range(0, host.shape[0], chunk_rows):
        out[start : start + chunk_rows].copy_(host[start : start + chunk_rows].contiguous())
    return out


class ScanData:
    """Normalised view of one :class:`Scan`; see the module docstring for the rules.

    Batches are gathered and normalised with torch on the requested device, from the scan's arrays held
    there once (:meth:`on`): no per-batch NumPy work and, on a GPU, no per-batch host-to-device copy.

    >>> data = ScanData(scan, behavior_channels=True)                      # doctest: +SKIP
    >>> for batch in data.batches("train", 128, rng=np.random.default_rng(0)):  # doctest: +SKIP
    ...     batch.images.shape, batch.behavior.shape                      # (128, 1, 36, 64), (128, 3)
    """

    def __init__(self, scan: Scan, behavior_channels: bool) -> None:
        self.scan = scan
        self.key = scan.key
        self.behavior_channels = behavior_channels
        self.n_neurons = scan.n_neurons
        height, width = scan.images.shape[-2:]
        self.in_shape = (1 + 3 * int(behavior_channels), int(height), int(width))  # the model's input
        self.unit_ids = scan.unit_ids
        self.cell_motor_coordinates = scan.cell_motor_coordinates
        self.trial_ids = scan.trial_idx
        self.image_ids = scan.image_ids
        self.tiers = scan.tiers
        self._response_precision = response_precision(scan.stats["responses"]["std"])  # (n,)
        self._on: dict[torch.device, _DeviceArrays] = {}

    def on(self, device: torch.device) -> _DeviceArrays:
        """The scan's arrays and constants on ``device`` (built on first use, then kept)."""
        device = torch.device(device)
        if device not in self._on:
            scan, stats = self.scan, self.scan.stats

            def const(values: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.asarray(values, dtype=np.float32)).to(device)

            self._on[device] = _DeviceArrays(
                images=_to_device(scan.images, device),
                responses=_to_device(scan.responses, device),
                behavior=_to_device(scan.behavior, device),
                pupil_center=_to_device(scan.pupil_center, device),
                image_mean=float(np.float32(stats["images"]["mean"])),
                image_std=float(np.float32(stats["images"]["std"])),
                response_precision=const(self._response_precision),
                behavior_precision=const(_safe_inverse(stats["behavior"]["std"])),
                pupil_mean=const(stats["pupil_center"]["mean"]),
                pupil_precision=const(_safe_inverse(stats["pupil_center"]["std"])),
            )
        return self._on[device]

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
        responses: bool = True,
    ) -> Iterator[Batch]:
        """Batches of the trials in ``tiers``, the last one possibly smaller.

        ``rng`` given: the trials are permuted by ``rng`` (same generator state, same batches); rows
        inside a batch are sorted (faster reads from the memory maps). ``rng`` None: fixed ascending row
        order, for evaluation. The row order of the whole pass goes to ``device`` once; each batch then
        slices it there. ``responses=False`` leaves ``Batch.responses`` None (prediction needs none).
        """
        if batch_size <= 0:
            raise UserError(f"batch_size={batch_size}: expected a value > 0")
        rows = self.tier_indices(tiers)
        if rng is not None:
            rows = rng.permutation(rows)
            for start in range(0, len(rows), batch_size):
                rows[start : start + batch_size].sort()
        index = torch.from_numpy(rows).to(device)
        for start in range(0, len(rows), batch_size):
            stop = start + batch_size
            yield self._gather(rows[start:stop], index[start:stop], device, responses)

    def batch(self, rows: np.ndarray, device: torch.device = torch.device("cpu"), responses: bool = True) -> Batch:
        """The normalised batch of the given rows (ascending row indices read fastest)."""
        rows = np.asarray(rows)
        return self._gather(rows, torch.from_numpy(rows).to(device), device, responses)

    def normalised_responses(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n) float32 responses of the given rows in model units, computed on the host."""
        return np.asarray(self.scan.responses[rows] * self._response_precision, dtype=np.float32)

    def _gather(self, rows: np.ndarray, index: torch.Tensor, device: torch.device, responses: bool) -> Batch:
        a = self.on(device)
        return Batch(
            images=(a.images.index_select(0, index) - a.image_mean) / a.image_std,  # (B, 1, H, W)
            responses=a.responses.index_select(0, index) * a.response_precision if responses else None,
            behavior=a.behavior.index_select(0, index) * a.behavior_precision,  # (B, 3)
            pupil_center=(a.pupil_center.index_select(0, index) - a.pupil_mean) * a.pupil_precision,
            rows=rows,
            trial_ids=self.trial_ids[rows],
        )


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
