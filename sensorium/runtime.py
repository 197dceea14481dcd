"""Run-time facts resolved once at the edge: seeds, device, threads and provenance of a run."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sensorium.errors import ConfigError

_TRACKED_PACKAGES = ("torch", "neuralpredictors", "numpy", "pandas", "ray", "optuna", "scikit-image")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's legacy global RNG and torch (CPU and all GPUs) for one run or trial."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if one is visible (Ray sets CUDA_VISIBLE_DEVICES), else CPU.

    ``cuda:N`` must name a visible device: N < ``torch.cuda.device_count()``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = _parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: no CUDA device is visible on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"train.device={name!r}: only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return device


def is_cuda_request(name: str) -> bool:
    """True for the train.device values that need a GPU: ``cuda`` and ``cuda:N``."""
    return name == "cuda" or name.startswith("cuda:")


def assigned_device(requested: str, gpu_ids: Sequence[int | str], setting: str) -> str:
    """The train.device a Ray worker runs on, given ``gpu_ids``, the GPUs Ray assigned it (``ray.get_gpu_ids()``).

    Ray makes only the assigned cards visible (CUDA_VISIBLE_DEVICES), so the first of them is ``cuda:0``
    whatever its number on the node: ``auto``, ``cuda`` and ``cuda:N`` all become ``cuda:0`` (one card is
    used even when several are assigned). Without a GPU, ``auto`` becomes ``cpu`` (Ray 2.60 leaves the
    node's cards visible to a worker given none, and using them would escape Ray's accounting), and a
    CUDA request is a ConfigError naming ``setting``, the option that gives the worker GPUs. A worker given
    a GPU that torch cannot use fails (RuntimeError) rather than silently training on the CPU.
    """
    if not gpu_ids:
        if is_cuda_request(requested):
            raise ConfigError(
                f"train.device={requested!r} needs a GPU, but Ray assigned this worker none ({setting} is 0): "
                f"give it a GPU ({setting} > 0) or set train.device to auto or cpu"
            )
        return "cpu" if requested == "auto" else requested
    if not (requested == "auto" or is_cuda_request(requested)):
        return requested  # cpu: the worker leaves its GPU share idle, as asked
    index = 0 if requested == "auto" else _parse_device(requested).index or 0
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"Ray assigned GPU(s) {list(gpu_ids)} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}), but torch {torch.__version__} (CUDA "
            f"{torch.version.cuda}) cannot use CUDA: install a CUDA build of torch and a working driver on "
            f"this node, or run on CPUs ({setting} 0)"
        )
    if index != 0:
        print(f"train.device={requested!r} -> 'cuda:0': inside Ray only the assigned GPU(s) {list(gpu_ids)} "
              f"are visible, numbered from cuda:0", file=sys.stderr, flush=True)
    return "cuda:0"


def cap_gpu_memory(share: float, device: str | torch.device) -> None:
    """Cap this process's GPU memory at ``share`` (0 < share < 1, a fraction of one card) of ``device``'s memory,
    its CUDA context included, so that trials sharing a card cannot take each other's memory; a no-op on the CPU
    and for whole cards (share 0 or >= 1). Beyond the cap torch raises its out-of-memory error in this process.

    The cap is torch's allocator fraction (``set_per_process_memory_fraction``, of the card's total memory), and
    the process's CUDA context (``sensorium.memory.CUDA_CONTEXT_BYTES``, about 0.7 GB) sits outside it: the
    fraction is (share x total - context) / total, so k processes at 1/k hold at most the card. A share too small
    to hold the context is a ConfigError.
    """
    from sensorium.memory import CUDA_CONTEXT_BYTES

    device = torch.device(device)
    if device.type != "cuda" or not 0 < share < 1:
        return
    if device.index is None:  # the allocator's fraction is set per numbered card: "cuda" is the current one
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    allowed = share * total - CUDA_CONTEXT_BYTES
    if allowed <= 0:
        raise ConfigError(f"a GPU share of {share:g} is {share * total / 1e9:.2f} GB of {device} ({total / 1e9:.1f} "
                          f"GB), not even the {CUDA_CONTEXT_BYTES / 1e9:.2f} GB of one process's CUDA context; "
                          "expected a larger share")
    torch.cuda.set_per_process_memory_fraction(allowed / total, device)


def _parse_device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N") from err


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """Whether the model runs in channels_last layout: ``auto`` means on the CPU only.

    On the CPU channels_last makes oneDNN's convolutions 1.5-2x faster for this model
    (results/bench_training.md); on GPUs it is left off until measured there.
    """
    return device.type == "cpu" if setting == "auto" else bool(setting)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype the model's forward pass autocasts to for ``train.precision`` (None: plain fp32)."""
    return torch.bfloat16 if precision == "bf16" else None


def configure_backends(device: torch.device, deterministic: bool, precision: str = "fp32") -> None:
    """cuDNN and matmul settings for a run on ``device`` (nothing to set on the CPU, where runs are
    deterministic and fp32 unless the model autocasts to bf16).

    ``deterministic``: cuDNN picks deterministic convolution algorithms and torch warns about any op
    without a deterministic CUDA implementation. The readout's ``grid_sample`` backward is one (it adds
    gradients with atomics), so two GPU runs of one seed still differ slightly; exact repeats need the CPU.
    Otherwise ``cudnn.benchmark`` times the algorithms once per input shape and keeps the fastest.
    ``precision``: TF32 matmuls and convolutions only for ``tf32`` (torch allows them in cuDNN by default:
    a change of numerics is a choice here, never a default).
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def device_info(device: torch.device) -> dict[str, Any]:
    """What a run records about its device: type, and on a GPU its index, name, CUDA version and memory."""
    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(index=index, name=props.name, cuda=torch.version.cuda,
                    total_memory_mb=round(props.total_memory / 2**20))
    return info


def gpu_memory(device: torch.device) -> dict[str, float]:
    """The most memory torch's allocator held on ``device`` so far, in MiB (GPU only; empty on the CPU):
    ``peak_gpu_memory_mb``, in tensors (``max_memory_allocated``), and ``peak_gpu_reserved_mb``, in the blocks it
    reserved from the card (``max_memory_reserved``: what :func:`cap_gpu_memory` limits). Neither counts the
    process's CUDA context."""
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_gpu_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}


def set_threads(threads: int) -> None:
    """Set torch's CPU thread count (0 keeps the current one). Reused Ray workers need it set again."""
    if threads > 0:
        torch.set_num_threads(threads)


def git_sha(repo_dir: str | Path | None = None) -> str:
    """The commit of the project checkout (with ``-dirty`` if modified), or ``unknown`` outside git."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries whose behaviour the results depend on."""
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(seed: int) -> dict[str, Any]:
    """What a run directory records about where it came from."""
    return {"seed": seed, "git_sha": git_sha(), "versions": library_versions(), "host": platform.node()}
