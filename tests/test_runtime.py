"""Device rules for GPUs, checked on a CPU machine with torch.cuda and Ray's GPU assignment mocked.

Outside Ray ``cuda:N`` must name a visible card; inside Ray a worker sees only the cards Ray assigned it
(as cuda:0, ...), a CUDA request without an assigned GPU is refused (in the search file and in the trial),
an assigned GPU that torch cannot use fails the trial, and a fractional GPU share caps the trial's memory
(its allocator at the share less one CUDA context, which sits outside the cap).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import torch
import yaml

from search.spec.space import parse_search, with_settings
from search.raytune.trainable import train_trial
from sensorium.config import load_config, set_value
from sensorium.errors import ConfigError
from sensorium.memory import CUDA_CONTEXT_BYTES
from sensorium.runtime import assigned_device, cap_gpu_memory, gpu_memory, resolve_device

ROOT = Path(__file__).resolve().parent.parent


CARD = 80 * 2**30  # total memory of each fake card (bytes)


@pytest.fixture
def fake_cuda(monkeypatch) -> list[tuple[float, Any]]:
    """torch.cuda as on a node with 2 usable cards of 80 GiB; returns the calls of set_per_process_memory_fraction."""
    calls: list[tuple[float, Any]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: SimpleNamespace(total_memory=CARD))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    return calls


def _fraction(share: float) -> float:
    """The allocator fraction of a share of a fake card: the share less one CUDA context, of the card."""
    return (share * CARD - CUDA_CONTEXT_BYTES) / CARD


def test_outside_ray_cuda_n_must_name_a_visible_device(fake_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"train.device='cuda:2': only 2 CUDA device\(s\).*'4,5'"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


def test_in_ray_a_cuda_request_runs_on_the_assigned_card(fake_cuda, capsys):
    assert assigned_device("cuda:1", [3], "gpus_per_trial") == "cuda:0"
    assert "'cuda:1' -> 'cuda:0'" in capsys.readouterr().err  # said once, on stderr
    for requested in ("auto", "cuda", "cuda:0"):
        assert assigned_device(requested, [3], "gpus_per_trial") == "cuda:0"
    assert capsys.readouterr().err == ""
    assert assigned_device("cpu", [3], "gpus_per_trial") == "cpu"


def test_in_ray_a_cuda_request_without_an_assigned_gpu_is_refused(fake_cuda):
    assert assigned_device("auto", [], "gpus_per_trial") == "cpu"  # even though the node has cards
    assert assigned_device("cpu", [], "gpus_per_trial") == "cpu"
    for requested in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"train.device='{requested}' needs a GPU.*gpus_per_trial is 0"):
            assigned_device(requested, [], "gpus_per_trial")


def test_an_assigned_gpu_that_torch_cannot_use_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    for requested in ("auto", "cuda"):
        with pytest.raises(RuntimeError, match=r"assigned GPU\(s\) \[2\] \(CUDA_VISIBLE_DEVICES='2'\)"):
            assigned_device(requested, [2], "gpus_per_trial")


def test_gpu_memory_is_capped_only_for_a_fractional_share(fake_cuda):
    cap_gpu_memory(0.25, "cuda:0")
    assert fake_cuda == [(pytest.approx(_fraction(0.25)), torch.device("cuda:0"))]
    for share, device in ((0.0, "cuda:0"), (1.0, "cuda:0"), (2.0, "cuda:0"), (0.5, "cpu")):
        cap_gpu_memory(share, device)
    assert len(fake_cuda) == 1


def test_the_cap_leaves_room_for_each_process_s_cuda_context(fake_cuda):
    """k processes at 1/k of a card: k allocator caps plus k contexts add up to the card, not k contexts more."""
    for k in (2, 4, 8, 16):
        fake_cuda.clear()
        cap_gpu_memory(1 / k, "cuda:1")
        (fraction, device), = fake_cuda
        assert device == torch.device("cuda:1")
        assert k * (fraction * CARD + CUDA_CONTEXT_BYTES) == pytest.approx(CARD)
    assert fake_cuda[0][0] == pytest.approx(1 / 16 - 700 / (80 * 1024))  # 5 GiB less 700 MiB, of 80 GiB


def test_a_share_smaller_than_a_cuda_context_is_refused(fake_cuda):
    with pytest.raises(ConfigError, match=r"a GPU share of 0.005 is 0.43 GB of cuda:0 \(85.9 GB\), not even the "
                                          r"0.73 GB of one process's CUDA context"):
        cap_gpu_memory(0.005, "cuda:0")
    assert fake_cuda == []


def test_gpu_memory_reports_the_allocated_and_the_reserved_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d=None: 4 * 2**30)
    assert gpu_memory(torch.device("cuda:0")) == {"peak_gpu_memory_mb": 3072.0, "peak_gpu_reserved_mb": 4096.0}
    assert gpu_memory(torch.device("cpu")) == {}


class _Stop(BaseException):
    """Raised by the stand-in for fit once the trial has set its device up (a BaseException: the trainable
    records an Exception as the trial's own failure and returns)."""


def _run_trial(monkeypatch, device: str, gpu_ids: list[int], gpus: float) -> Any:
    """Run ``train_trial`` on the tiny config with ``train.device=device`` in a worker Ray gave ``gpu_ids``,
    up to the call of fit; returns the config fit would have trained."""
    seen = []

    def fake_fit(cfg: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr("search.raytune.trainable._restored_checkpoint", lambda: None)
    # the module, not the package attribute: sensorium.training re-exports the function under the same name
    monkeypatch.setattr(importlib.import_module("sensorium.training.fit"), "fit", fake_fit)
    base = set_value(load_config(ROOT / "configs" / "tiny.yaml"), "train.device", device).to_dict()
    with pytest.raises(_Stop):
        train_trial({}, base=base, cpus=torch.get_num_threads(), gpus=gpus)
    return seen[0]


@pytest.mark.parametrize(("gpus", "capped"), [(0.5, True), (1.0, False)])
def test_trial_maps_cuda_n_to_its_card_and_caps_a_shared_card(fake_cuda, monkeypatch, gpus, capped):
    cfg = _run_trial(monkeypatch, "cuda:1", [1], gpus)
    assert cfg.train.device == "cuda:0"
    assert fake_cuda == ([(pytest.approx(_fraction(0.5)), torch.device("cuda:0"))] if capped else [])


def test_trial_refuses_cuda_without_a_gpu_and_fails_on_unusable_cuda(monkeypatch):
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    base = set_value(load_config(ROOT / "configs" / "tiny.yaml"), "train.device", "cuda").to_dict()
    with pytest.raises(ConfigError, match="gpus_per_trial is 0"):
        train_trial({}, base=base, cpus=torch.get_num_threads(), gpus=0.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    with pytest.raises(RuntimeError, match=r"assigned GPU\(s\) \[0\]"):
        train_trial({}, base=base, cpus=torch.get_num_threads(), gpus=0.5)


def test_search_file_asking_for_cuda_without_gpus_per_trial_is_refused():
    raw = yaml.safe_load((ROOT / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str(ROOT / "configs" / raw["base"])
    raw["overrides"]["train.device"] = "cuda:1"
    raw["search"]["gpus_per_trial"] = 0
    with pytest.raises(ConfigError, match=r"train.device='cuda:1' needs a GPU, but search.gpus_per_trial is 0"):
        parse_search(raw)
    for gpus in (0.5, "auto"):
        raw["search"]["gpus_per_trial"] = gpus
        spec = parse_search(raw)
        with pytest.raises(ConfigError, match="gpus_per_trial is 0"):  # --gpus-per-trial 0, or auto on CPUs only
            with_settings(spec, gpus_per_trial=0)
    del raw["overrides"]["train.device"]
    raw["search"]["gpus_per_trial"] = 0
    raw["parameters"]["train.device"] = {"type": "categorical", "choices": ["cpu", "cuda"], "role": "nuisance"}
    with pytest.raises(ConfigError, match="train.device='cuda'"):
        parse_search(raw)


def test_an_unnumbered_cuda_device_is_capped_as_the_current_card(fake_cuda):
    cap_gpu_memory(0.25, "cuda")  # set_per_process_memory_fraction itself refuses a device without a number
    (_, device), = fake_cuda
    assert device == torch.device("cuda:1")
