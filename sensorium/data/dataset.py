"""Normalised, batched view of scans: what models and ``fit`` consume.

Normalisation follows neuralpredictors' ``NeuroNormalizer`` with stats source ``all`` (SENSORIUM.md §1),
using ``meta/statistics/<group>/all/{mean,std}``:

- images: ``(x - mean) / std`` with scalar mean and std;
- responses: ``x / std`` per neuron, no centring; a neuron whose std is not above 1% of the mean std
  (``threshold = 0.01 * std.mean()``) is divided by that threshold instead;
- behavior: ``x / std`` per channel, no centring, no threshold (``data.behavior_scaling: reference``); or, with
  ``minmax`` (the winning SENSORIUM+ entry's scaling), pupil dilation min-max scaled to [0, 1], its derivative
  ``x / std``, running ``|x| / max |x|`` (min and max over the scan's trials);
- pupil_center: ``(x - mean) / std`` per coordinate.

One deliberate difference: where a behaviour or pupil-centre std is exactly 0 (the SENSORIUM scan has
them zeroed) the reference yields inf/NaN; here that channel is left unscaled (divided by 1).
With ``behavior_channels`` the model input is the image plus the three normalised behaviour values as
three constant channels (``AddBehaviorAsChannels``); batches carry the image (B, 1, H, W) and the behaviour
(B, 3) apart, and the model's core appends the channels without building them (``sensorium.models.Core``).
The pupil centre is kept separately for the shifter.

History (:class:`History`, for the model's history modulator, only when asked for with ``history=H``): per
trial, what came *before it in the session* (``frame_trial_ts`` order) and nothing else: the normalised
responses of the H previous trials, each minus the neuron's mean (from the files' response statistics, as the
normaliser's std) — masked (zero, mask 0) where that trial is in a test tier, whose responses the competition
files withhold (in every scan alike, so training sees what inference sees) or before the session's start —,
the previous trial's normalised behaviour and pupil centre minus their means over the scan's trials (the files
hold these for every trial), and the trial's own onset as a fraction of the session. A trial's own responses
never enter. Centred, every feature is 0 on average, so the modulator moves gains around the mean rate and
cannot stand in for the readout's bias.
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
from sensorium.data.splits import split_tiers
from sensorium.errors import DataError, UserError


VISIBLE_TIERS = ("train", "validation")  # tiers whose responses the competition files hold


@dataclass
class History:
    """What a batch's trials may know of their past (see the module docstring); B trials, H previous ones."""

    responses: torch.Tensor  # (B, H, n) normalised responses of the H previous trials minus the neuron's mean
    #                          (j=0: the last one); 0 where masked
    mask: torch.Tensor  # (B, H) 1 where that previous trial exists and its responses are public, else 0
    behavior: torch.Tensor  # (B, 5) the previous trial's normalised behaviour (3) and pupil centre (2), centred
    behavior_mask: torch.Tensor  # (B,) 0 for the session's first trial
    time: torch.Tensor  # (B,) onset in the session, 0 (first trial) to 1 (last)


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
    history: History | None = None  # only when asked for (``history=H``)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class _DeviceArrays:
    """One scan's per-trial arrays (raw units) and normalisation constants as tensors on one device.

    On the CPU the arrays are the cache's memory maps themselves (no copy: every process shares the page
    cache). On a GPU the images, behaviour and pupil centre of every trial are copied there once (about 10 KB
    a trial), so batches are gathered and normalised on the device; the responses (the bulk: 4 bytes x
    neurons a trial) stay in host memory and each batch's rows cross through pinned buffers without
    blocking (:class:`_StagedRows`), or, with ``responses_on_device``, those of the train and validation rows
    (the only ones a trial reads; the others are test tiers, withheld in competition scans) are copied there.
    """

    images: torch.Tensor  # (N, 1, H, W)
    responses: torch.Tensor | _StagedRows  # (N, n) on the CPU; (V, n) of the V visible rows; or staged
    response_slot: torch.Tensor | None  # (N,) row -> its row in ``responses`` (V rows), 0 for the others
    behavior: torch.Tensor  # (N, 3)
    pupil_center: torch.Tensor  # (N, 2)
    position: torch.Tensor  # (N,) int64 row -> its place in the session
    session: torch.Tensor  # (N,) int64 place in the session -> row
    visible: torch.Tensor  # (N,) bool: the row's responses are public (train, validation)
    time: torch.Tensor  # (N,) float32 onset in the session, 0-1
    image_mean: float
    image_std: float
    response_precision: torch.Tensor  # (n,)
    behavior_offset: torch.Tensor  # (3,): behaviour = (transformed raw - offset) * precision
    behavior_precision: torch.Tensor  # (3,)
    behavior_abs: torch.Tensor  # (3,) bool: channels taken as |x| first (running, with minmax scaling)
    pupil_mean: torch.Tensor  # (2,)
    pupil_precision: torch.Tensor  # (2,)


def _safe_inverse(std: np.ndarray) -> np.ndarray:
    """1 / std, with 1 where std == 0 (a constant channel is left unscaled instead of becoming NaN)."""
    std = np.asarray(std, dtype=np.float32)
    return np.where(std > 0, 1 / np.where(std > 0, std, 1), 1).astype(np.float32)


def _to_device(array: np.ndarray, device: torch.device, chunk_rows: int = 1024,
               rows: np.ndarray | None = None) -> torch.Tensor:
    """A (read-only, memory-mapped) array, or its ``rows``, as a tensor on ``device``: zero-copy on the CPU
    (all rows), else copied there in chunks of rows (host memory stays bounded by one chunk)."""
    with warnings.catch_warnings():  # the memory maps are read-only; nothing here writes to them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        host = torch.from_numpy(array)
    if device.type == "cpu":
        return host
    rows = np.arange(host.shape[0]) if rows is None else rows
    out = torch.empty((len(rows), *host.shape[1:]), dtype=host.dtype, device=device)
    for start in range(0, len(rows), chunk_rows):
        part = torch.from_numpy(np.ascontiguousarray(rows[start : start + chunk_rows], dtype=np.int64))
        out[start : start + chunk_rows].copy_(host.index_select(0, part))
    return out


class _StagedRows:
    """Rows of a host array (a read-only memory map) sent to a GPU one batch at a time.

    Each call gathers the rows into one of ``RING`` pinned buffers and copies it to the device without
    blocking the host; a buffer is reused only after the copy that last read it has finished (a CUDA event),
    so the host can assemble the next batch while the device computes.
    """

    RING = 3

    def __init__(self, host: torch.Tensor) -> None:
        self.host = host  # (N, n)
        self.buffers: list[torch.Tensor] = []
        self.events: list[torch.cuda.Event] = []
        self.turn = 0

    def gather(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """(len(rows), n) of the given rows, on ``device``."""
        i, self.turn = self.turn, (self.turn + 1) % self.RING
        if i < len(self.events):
            self.events[i].synchronize()
        if i >= len(self.buffers) or self.buffers[i].shape[0] < len(rows):
            buffer = torch.empty((len(rows), *self.host.shape[1:]), dtype=self.host.dtype, pin_memory=True)
            if i < len(self.buffers):
                self.buffers[i] = buffer
            else:
                self.buffers.append(buffer)
                self.events.append(torch.cuda.Event())
        staged = self.buffers[i][: len(rows)]
        torch.index_select(self.host, 0, torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)), out=staged)
        out = staged.to(device, non_blocking=True)
        self.events[i].record(torch.cuda.current_stream(device))
        return out


class ScanData:
    """Normalised view of one :class:`Scan`; see the module docstring for the rules.

    Batches are gathered and normalised with torch on the requested device, from the scan's arrays held
    there once (:meth:`on`): no per-batch NumPy work and, on a GPU, no per-batch host-to-device copy.

    >>> data = ScanData(scan, behavior_channels=True)                      # doctest: +SKIP
    >>> for batch in data.batches("train", 128, rng=np.random.default_rng(0)):  # doctest: +SKIP
    ...     batch.images.shape, batch.behavior.shape                      # (128, 1, 36, 64), (128, 3)
    """

    def __init__(self, scan: Scan, behavior_channels: bool, behavior_scaling: str = "reference",
                 responses_on_device: bool = False, tiers: np.ndarray | None = None) -> None:
        """``tiers``: (N,) the tier of each row as batches and scores see it; None: the scan's own (a
        ``data.split_folds`` re-split: ``sensorium.data.splits.split_tiers``). What the history modulator may
        read (``VISIBLE_TIERS``) always follows the scan's own tiers."""
        self.scan = scan
        self.responses_on_device = responses_on_device
        self.key = scan.key
        self.behavior_channels = behavior_channels
        self.n_neurons = scan.n_neurons
        height, width = scan.images.shape[-2:]
        self.in_shape = (1 + 3 * int(behavior_channels), int(height), int(width))  # the model's input
        self.unit_ids = scan.unit_ids
        self.cell_motor_coordinates = scan.cell_motor_coordinates
        self.trial_ids = scan.trial_idx
        self.image_ids = scan.image_ids
        self.tiers = scan.tiers if tiers is None else tiers
        self._response_precision = response_precision(scan.stats["responses"]["std"])  # (n,)
        self._behavior = behavior_transform(scan, behavior_scaling)  # (offset, precision, abs)
        order = np.argsort(scan.trial_ts, kind="stable")  # rows in session order
        self._position = np.empty(len(order), dtype=np.int64)
        self._position[order] = np.arange(len(order))  # row -> its place in the session
        self._session = order
        span = float(scan.trial_ts.max() - scan.trial_ts.min())
        self._time = ((scan.trial_ts - scan.trial_ts.min()) / (span if span > 0 else 1.0)).astype(np.float32)
        self._visible = np.isin(scan.tiers, VISIBLE_TIERS)
        self._on: dict[torch.device, _DeviceArrays] = {}
        self._centres: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def on(self, device: torch.device) -> _DeviceArrays:
        """The scan's arrays and constants on ``device`` (built on first use, then kept)."""
        device = torch.device(device)
        if device not in self._on:
            scan, stats = self.scan, self.scan.stats

            def const(values: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.asarray(values, dtype=np.float32)).to(device)

            responses: torch.Tensor | _StagedRows = _to_device(scan.responses, torch.device("cpu"))
            slot = None
            if device.type != "cpu" and self.responses_on_device:
                visible = np.flatnonzero(self._visible)
                responses = _to_device(scan.responses, device, rows=visible)
                slot = np.zeros(scan.n_trials, np.int64)
                slot[visible] = np.arange(len(visible))
                slot = torch.from_numpy(slot).to(device)
            elif device.type != "cpu":
                responses = _StagedRows(responses)
            self._on[device] = _DeviceArrays(
                images=_to_device(scan.images, device),
                responses=responses,
                response_slot=slot,
                behavior=_to_device(scan.behavior, device),
                pupil_center=_to_device(scan.pupil_center, device),
                position=torch.from_numpy(self._position).to(device),
                session=torch.from_numpy(self._session).to(device),
                visible=torch.from_numpy(self._visible).to(device),
                time=torch.from_numpy(self._time).to(device),
                image_mean=float(np.float32(stats["images"]["mean"])),
                image_std=float(np.float32(stats["images"]["std"])),
                response_precision=const(self._response_precision),
                behavior_offset=const(self._behavior[0]),
                behavior_precision=const(self._behavior[1]),
                behavior_abs=torch.from_numpy(self._behavior[2]).to(device),
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
        history: int = 0,
    ) -> Iterator[Batch]:
        """Batches of the trials in ``tiers``, the last one possibly smaller.

        ``rng`` given: the trials are permuted by ``rng`` (same generator state, same batches); rows
        inside a batch are sorted (faster reads from the memory maps). ``rng`` None: fixed ascending row
        order, for evaluation. The row order of the whole pass goes to ``device`` once; each batch then
        slices it there. ``responses=False`` leaves ``Batch.responses`` None (prediction needs none);
        ``history=H`` > 0 adds each trial's :class:`History` of its H previous trials.
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
            yield self._gather(rows[start:stop], index[start:stop], device, responses, history)

    def batch(self, rows: np.ndarray, device: torch.device = torch.device("cpu"), responses: bool = True,
              history: int = 0) -> Batch:
        """The normalised batch of the given rows (ascending row indices read fastest)."""
        rows = np.asarray(rows)
        return self._gather(rows, torch.from_numpy(rows).to(device), device, responses, history)

    def previous_rows(self, rows: np.ndarray, history: int) -> np.ndarray:
        """(len(rows), H) rows of the H trials before each row's trial in the session (column j: j + 1 trials
        before), -1 before the session's start."""
        positions = self._position[np.asarray(rows)][:, None] - np.arange(1, history + 1)  # (B, H)
        return np.where(positions >= 0, self._session[np.maximum(positions, 0)], -1)

    def normalised_responses(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n) float32 responses of the given rows in model units, computed on the host."""
        return np.asarray(self.scan.responses[rows] * self._response_precision, dtype=np.float32)

    def _gather(
        self, rows: np.ndarray, index: torch.Tensor, device: torch.device, responses: bool, history: int = 0
    ) -> Batch:
        a = self.on(device)
        return Batch(
            images=(a.images.index_select(0, index) - a.image_mean) / a.image_std,  # (B, 1, H, W)
            responses=self._rows_of_responses(a, rows, index) * a.response_precision if responses else None,
            behavior=self._scaled_behavior(a, index),  # (B, 3)
            pupil_center=(a.pupil_center.index_select(0, index) - a.pupil_mean) * a.pupil_precision,
            rows=rows,
            trial_ids=self.trial_ids[rows],
            history=self._history(a, rows, index, history) if history > 0 else None,
        )

    def _rows_of_responses(self, a: _DeviceArrays, rows: np.ndarray, index: torch.Tensor) -> torch.Tensor:
        """Raw responses (len(rows), n) of ``rows`` (``index``: the same rows on the device), on the device.

        With the responses on the device only visible rows are there: others read as row 0, so callers ask
        only for visible rows or mask the others (a trial's history)."""
        if isinstance(a.responses, _StagedRows):
            return a.responses.gather(rows, index.device)
        if a.response_slot is not None:
            return a.responses.index_select(0, a.response_slot.index_select(0, index))
        return a.responses.index_select(0, index)

    def _scaled_behavior(self, a: _DeviceArrays, index: torch.Tensor) -> torch.Tensor:
        raw = a.behavior.index_select(0, index)
        raw = torch.where(a.behavior_abs, raw.abs(), raw)
        return (raw - a.behavior_offset) * a.behavior_precision

    def history_centres(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """What :class:`History` subtracts, on ``device``: each neuron's mean response in model units (n,), from
        the files' response statistics (``meta/statistics/responses/all/mean``, as the normaliser's std), and
        the mean over all the scan's trials of the previous-trial features (5,): scaled behaviour and pupil
        centre (the files hold these for every trial)."""
        device = torch.device(device)
        if device not in self._centres:
            a = self.on(torch.device("cpu"))
            every = torch.arange(self.scan.n_trials)
            features = torch.cat([self._scaled_behavior(a, every),
                                  (a.pupil_center - a.pupil_mean) * a.pupil_precision], dim=1)  # (N, 5)
            response_mean = np.asarray(self.scan.stats["responses"]["mean"], np.float32) * self._response_precision
            self._centres[device] = (torch.from_numpy(response_mean).to(device),
                                     features.double().mean(0).float().to(device))
        return self._centres[device]

    def _history(self, a: _DeviceArrays, rows: np.ndarray, index: torch.Tensor, history: int) -> History:
        """The :class:`History` of ``rows`` (``index``: the same rows on the device); everything but staged past
        responses is computed on the device from per-scan constants held there (no blocking copy)."""
        device = index.device
        offsets = torch.arange(1, history + 1, device=device)
        positions = a.position.index_select(0, index)[:, None] - offsets  # (B, H) places in the session
        exists = positions >= 0
        previous = a.session.index_select(0, positions.clamp(min=0).flatten())  # (B * H,) rows, row of 0 if none
        mask = (exists & a.visible.index_select(0, previous).view_as(exists)).float()  # withheld ones never enter
        if isinstance(a.responses, _StagedRows):  # host rows: the same previous rows, worked out on the host
            past = a.responses.gather(self.previous_rows(rows, history).clip(min=0).ravel(), device)
        else:
            past = self._rows_of_responses(a, rows, previous)
        response_mean, feature_mean = self.history_centres(device)
        past = past.view(*positions.shape, -1) * a.response_precision  # (B, H, n)
        last = previous.view(positions.shape)[:, 0]
        behavior = torch.cat([self._scaled_behavior(a, last),
                              (a.pupil_center.index_select(0, last) - a.pupil_mean) * a.pupil_precision], dim=1)
        first = exists[:, 0].float()  # (B,)
        return History(
            responses=(past - response_mean) * mask[:, :, None],
            mask=mask,
            behavior=(behavior - feature_mean) * first[:, None],
            behavior_mask=first,
            time=a.time.index_select(0, index),
        )


def load_data(cfg: DataConfig, progress: bool = True) -> dict[str, ScanData]:
    """Open every scan of ``cfg.scans`` (cached after the first call), ordered by data key; with
    ``cfg.split_folds`` each scan's train and validation tiers are those of fold ``cfg.split_fold``
    (``sensorium.data.splits``)."""
    if not cfg.scans:
        raise DataError("data.scans is empty: give scan folders, official .zip files or directories holding them")
    scans: dict[str, Scan] = {}
    for path in resolve_scan_paths(cfg.scans):
        scan = load_scan(path, cfg, progress=progress)
        if scan.key in scans:
            other = scans[scan.key].source
            raise DataError(f"{path}: data key {scan.key} also belongs to {other}; expected unique scans")
        scans[scan.key] = scan
    return {key: ScanData(scans[key], cfg.behavior_channels, cfg.behavior_scaling, cfg.responses_on_device,
                          _tiers(scans[key], cfg)) for key in sorted(scans)}


def _tiers(scan: Scan, cfg: DataConfig) -> np.ndarray | None:
    """The scan's tiers re-split as ``cfg`` asks (None: the official ones); UserError naming the setting and
    the scan when it has fewer distinct train + validation images than folds."""
    if not cfg.split_folds:
        return None
    try:
        return split_tiers(scan.tiers, scan.image_ids, cfg.split_folds, cfg.split_fold, cfg.split_seed)
    except UserError as err:
        raise UserError(f"data.split_folds={cfg.split_folds}: scan {scan.key}: {err}") from None


def behavior_transform(scan: Scan, scaling: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offset, precision, abs) of the behaviour channels (pupil dilation, its derivative, running), each (3,):
    ``scaled = (|x| if abs else x - offset) * precision``. ``reference``: ``x / std`` (NeuroNormalizer);
    ``minmax``: pupil ``(x - min) / (max - min)``, derivative ``x / std``, running ``|x| / max |x|``, with min
    and max over the scan's trials."""
    std = _safe_inverse(scan.stats["behavior"]["std"])
    if scaling == "reference":
        return np.zeros(3, np.float32), std, np.zeros(3, bool)
    if scaling != "minmax":
        raise UserError(f"data.behavior_scaling={scaling!r}: expected reference or minmax")
    low, high = np.min(scan.behavior, axis=0), np.max(scan.behavior, axis=0)
    spans = _safe_inverse(np.array([high[0] - low[0], 1.0, np.abs(scan.behavior[:, 2]).max()]))
    precision = np.where([True, False, True], spans, std).astype(np.float32)  # derivative: x / std as before
    return np.array([low[0], 0.0, 0.0], np.float32), precision, np.array([False, False, True])
