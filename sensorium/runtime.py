"""Run-time facts resolved once at the edge: seeds, device, threads and provenance of a run."""

from __future__ import annotations

import platform
import random
import subprocess
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
    """``auto`` -> the first CUDA device if one is visible (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: no CUDA device is visible on this machine")
    return device


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
