"""The memory model (sensorium.memory) against peaks measured on the CPU, and the scoring chunk it sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sensorium.config import load_config, set_value
from sensorium.memory import (
    MAX_EVAL_CHUNK, MIN_EVAL_CHUNK, ModelProfile, ScanShape, build_for, data_bytes, estimate, eval_chunk,
    profile_model,
)

ROOT = Path(__file__).resolve().parent.parent


def _config(batch: int, channels: int):
    cfg = load_config(ROOT / "configs" / "sensorium_plus.yaml")
    return set_value(set_value(cfg, "data.batch_size", batch), "model.core.hidden_channels", channels)


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _measure(neurons: int, batch: int, channels: int) -> dict[str, int]:
    """In this (fresh) process: the resident-memory high-water mark of one training step (forward, backward,
    Adam's first step) above what was resident before it, and what the memory model predicts for it."""
    from sensorium.memory import _inputs

    torch.set_num_threads(1)
    cfg = _config(batch, channels)
    shapes = [ScanShape("a", neurons, 1000, 900, (1, 36, 64))]
    model = build_for(cfg, shapes)
    est = estimate(cfg, shapes, "cpu", profile_model(model, shapes))
    optimizer = torch.optim.Adam(model.parameters())
    inputs = _inputs((4, 36, 64), shapes[0], batch, 0)
    model.train()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from what is resident now
    before = _peak_bytes()
    model(inputs, "a").sum().backward()
    optimizer.step()
    return {"measured": _peak_bytes() - before, "predicted": est.activations + est.state}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc high-water mark")
@pytest.mark.parametrize("neurons,batch,channels", [(2000, 64, 32), (4000, 64, 64)])
def test_the_training_peak_is_predicted_within_30_percent_of_the_measured_one(neurons, batch, channels):
    out = subprocess.run([sys.executable, __file__, str(neurons), str(batch), str(channels)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["measured"] > 50 * 2**20  # large enough for the allocator's own overhead not to matter
    assert 0.75 <= got["predicted"] / got["measured"] <= 1.3, got


def test_the_scoring_chunk_fits_the_training_batch_budget():
    profile = ModelProfile(n_parameters=10, saved_per_image=1e6, largest_map_per_image=2e5, readout_per_image=3e5,
                           output_per_image=1e4)
    per_image = 2 * 2e5 + 3e5 + 1e4
    assert eval_chunk(profile, 100 * per_image) == 100
    assert eval_chunk(profile, 1.0) == MIN_EVAL_CHUNK
    assert eval_chunk(profile, 1e15) == MAX_EVAL_CHUNK
    assert eval_chunk(profile, 1.0, configured=7) == 7  # data.eval_batch_size wins
    assert eval_chunk(profile, 1e15, device_type="cpu") == 64


def test_final_scoring_needs_no_more_than_training_on_a_gpu_at_real_size():
    shapes = [ScanShape(f"s{i}", n, 6000, 5000, (1, 36, 64)) for i, n in enumerate((8372, 7344, 7776))]
    cfg = _config(128, 64)
    est = estimate(cfg, shapes, "cuda")
    assert est.score_peak <= est.train_peak * 1.25
    assert est.eval_chunk < MAX_EVAL_CHUNK  # 1024 trials would hold 2 GB of readout samples alone
    assert est.context > 0 and est.data == data_bytes(shapes, responses_on_device=False)
    # the responses of the train and validation rows on the device: 4 bytes x neurons x rows more
    assert data_bytes(shapes, True) - data_bytes(shapes, False) == 4 * 5000 * (8372 + 7344 + 7776)


if __name__ == "__main__":
    print(json.dumps(_measure(*(int(v) for v in sys.argv[1:4]))))


def test_the_gpu_scoring_chunk_is_measured_once_per_model_for_its_largest_scan(monkeypatch):
    import types

    import sensorium.memory as memory

    cfg = _config(128, 64)
    shapes = [ScanShape("small", 3000, 6000, 5000, (1, 36, 64)), ScanShape("large", 8000, 6000, 5000, (1, 36, 64))]
    model = build_for(cfg, shapes)
    calls = []
    real = memory.profile_model
    monkeypatch.setattr(memory, "profile_model", lambda m, s: calls.append(s) or real(m, s))
    scan = types.SimpleNamespace(scan=types.SimpleNamespace(images=np.zeros((1, 1, 36, 64), np.float32)))
    device = torch.device("cuda")  # only its type is read: the profile runs on the CPU
    first = memory.scoring_chunk(model, {"small": scan}, device)
    assert memory.scoring_chunk(model, {"large": scan}, device) == first and len(calls) == 1
    assert first == estimate(cfg, shapes, "cuda").eval_chunk  # sized for the model's largest scan
    assert memory.scoring_chunk(model, {"small": scan}, torch.device("cpu")) == memory.CPU_EVAL_CHUNK
