"""What a GPU trial holds of its scans, tested on the CPU: the responses' staging ring (CUDA's pinned memory and
events stubbed) and the history features computed from per-scan constants on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sensorium.data.dataset as dataset
from sensorium.config import DataConfig
from sensorium.data import ScanData
from sensorium.data.cache import load_scan


class _Event:
    """Stands for torch.cuda.Event: records which buffer was waited for."""

    waited: list[int] = []

    def __init__(self) -> None:
        self.id = len(_Event.waited)

    def record(self, stream: object) -> None:
        pass

    def synchronize(self) -> None:
        _Event.waited.append(self.id)


@pytest.fixture
def no_cuda(monkeypatch):
    real_empty = torch.empty
    monkeypatch.setattr(dataset.torch.cuda, "Event", _Event)
    monkeypatch.setattr(dataset.torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(dataset.torch, "empty", lambda *a, pin_memory=False, **k: real_empty(*a, **k))


def test_staged_rows_come_back_in_order_through_a_ring_of_reused_buffers(tmp_path, no_cuda):
    host = np.lib.format.open_memmap(tmp_path / "r.npy", mode="w+", dtype=np.float32, shape=(50, 7))
    host[:] = np.arange(350, dtype=np.float32).reshape(50, 7)
    host.flush()
    host = np.load(tmp_path / "r.npy", mmap_mode="r")  # read-only, as the cache maps it
    staged = dataset._StagedRows(torch.from_numpy(np.asarray(host)))
    batches = [[1, 5, 9], [2, 3], [10, 11, 12, 13, 14], [0], [49, 48], [7, 8, 9, 10], [20, 21, 22, 23]]
    for rows in batches:
        out = staged.gather(np.array(rows), torch.device("cpu"))
        assert torch.equal(out, torch.from_numpy(np.asarray(host[rows])))
    assert len(staged.buffers) == staged.RING  # at most RING buffers, each grown only when too small
    assert [b.shape[0] for b in staged.buffers] == [4, 2, 5]  # slot 0 grew from 3 to 4 rows for the last batch
    assert _Event.waited  # a buffer is reused only after the copy that read it was waited for


def test_history_from_device_constants_matches_the_session_order(make_scan, tmp_path):
    scan = load_scan(make_scan(), DataConfig(cache_dir=str(tmp_path / "cache")), progress=False)
    data = ScanData(scan, behavior_channels=True)
    rows = data.tier_indices("train")[:6]
    history = data.batch(rows, history=3).history
    previous = data.previous_rows(rows, 3)  # (B, 3) the host's account of each trial's past
    public = np.isin(scan.tiers, ("train", "validation"))
    expected_mask = (previous >= 0) & public[np.maximum(previous, 0)]
    np.testing.assert_array_equal(history.mask.numpy(), expected_mask.astype(np.float32))
    np.testing.assert_array_equal(history.behavior_mask.numpy(), (previous[:, 0] >= 0).astype(np.float32))
    span = scan.trial_ts.max() - scan.trial_ts.min()
    np.testing.assert_allclose(history.time.numpy(), (scan.trial_ts[rows] - scan.trial_ts.min()) / span, rtol=1e-6)
