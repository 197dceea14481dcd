"""Checkpoint files: what they hold, whole-or-nothing writes, and rebuilding a trained model from one.

Both files hold only tensors, plain dicts, lists, numbers and strings, so ``torch.load(path,
weights_only=True)`` reads them:

- ``best.pt``: ``format``, ``config`` (ExperimentConfig as a dict), ``model`` (state dict of the best
  weights), ``scan_meta`` (data key -> the fields of its ScanMeta: n_neurons, cell_motor_coordinates (n, 3)),
  ``in_shape`` [C, H, W], ``epoch`` (the best epoch) and ``val_corr``. It alone rebuilds the model
  (:func:`load_model`).
- ``last.pt``: the same keys for the current (trained, not averaged) weights and the epoch's validation score
  (of the weights the recipe evaluates), plus ``best_model``, ``recipe`` (the training recipe's state:
  ``optimizer``, ``scheduler``, ``stopper``, and the weight ``average`` of a recipe that keeps one) and
  ``numpy_rng`` (batch shuffling) - the full state ``fit(resume=...)`` continues from (the readout's position
  draws are seeded per epoch, so they need no state). Every tensor is on the CPU.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sensorium.atomic import atomic_write
from sensorium.config import ExperimentConfig
from sensorium.errors import UserError
from sensorium.models import ScanMeta, SensoriumModel, build_model
from sensorium.runtime import autocast_dtype, configure_backends, use_channels_last

FORMAT = "sensorium-search/checkpoint/1"


class DamagedCheckpoint(UserError):
    """A checkpoint file that exists but cannot be loaded (truncated, corrupt): its state is lost.

    Callers that resume decide what that means (``fit`` starts the run again from epoch 0); a missing
    file or another program's file stays a plain UserError (a wrong path, not damage).
    """


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state dict (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts / lists of tensors, e.g. an optimiser state dict) with every tensor on the CPU,
    so a checkpoint written on a GPU loads on a machine without one."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def meta_dict(meta: Mapping[str, ScanMeta]) -> dict[str, dict[str, Any]]:
    """ScanMeta as checkpoint-safe plain data: data key -> {field: value}, NumPy arrays as tensors."""
    return {
        key: {name: torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value
              for name, value in ((f.name, getattr(m, f.name)) for f in dataclasses.fields(m))}
        for key, m in meta.items()
    }


def meta_from_dict(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, ScanMeta]:
    """The inverse of :func:`meta_dict` (tensors back to NumPy arrays); a field a checkpoint lacks (written
    before it was added) takes its default."""
    return {
        key: ScanMeta(**{name: value.numpy() if isinstance(value, torch.Tensor) else value
                         for name, value in m.items()})
        for key, m in raw.items()
    }


def model_payload(
    state: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    meta: Mapping[str, ScanMeta],
    in_shape: tuple[int, int, int],
    epoch: int,
    val_corr: float,
) -> dict[str, Any]:
    """The content of best.pt (and the common part of last.pt)."""
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "model": state,
        "scan_meta": meta_dict(meta),
        "in_shape": list(in_shape),
        "epoch": epoch,
        "val_corr": float(val_corr),
    }


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save ``obj`` to ``path`` whole or not at all (:func:`sensorium.atomic.atomic_write`): a kill
    or a full disk mid-write leaves the previous checkpoint as it was (a full disk: WriteError naming it)."""
    # Serialised in memory first (a checkpoint is megabytes): a write that fails mid-stream inside torch.save
    # surfaces as a RuntimeError ("unexpected pos"), whether torch writes the path or a file object; one
    # plain write of the bytes keeps the OSError (ENOSPC) that atomic_write turns into a WriteError.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True`` onto the CPU; clear error if it is not one of ours.

    Raises UserError when the file is missing or not a sensorium-search checkpoint, and its subclass
    :class:`DamagedCheckpoint` when torch cannot load it (truncated or corrupt).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        reason = (str(err).strip().splitlines() or [""])[0]  # some torch messages run over many lines
        raise DamagedCheckpoint(f"{path}: not a readable checkpoint ({type(err).__name__}: {reason})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a sensorium-search checkpoint (expected format {FORMAT!r})")
    return ckpt


def checkpoint_path(path: str | Path, name: str = "best.pt") -> Path:
    """A run directory -> its checkpoints/<name>; a checkpoints folder -> <name>; a file -> itself."""
    path = Path(path)
    if path.is_dir():
        return path / name if (path / name).is_file() else path / "checkpoints" / name
    return path


def load_model(path: str | Path, device: torch.device) -> tuple[SensoriumModel, ExperimentConfig]:
    """Rebuild a trained model (eval mode, on ``device``) and its config from a run dir or a .pt file.

    A run directory (or its checkpoints folder) means its ``best.pt``; ``last.pt`` gives the latest weights.
    Building draws initial weights from torch's global RNG before the saved ones overwrite them.
    """
    ckpt = read_checkpoint(checkpoint_path(path))
    cfg = ExperimentConfig.from_dict(ckpt["config"])
    in_shape = tuple(int(v) for v in ckpt["in_shape"])
    model = build_model(cfg.model, meta_from_dict(ckpt["scan_meta"]), in_shape)  # type: ignore[arg-type]
    model.load_state_dict(ckpt["model"])
    model.to(device)
    if use_channels_last(cfg.train.channels_last, device):
        model.use_channels_last()
    model.autocast = autocast_dtype(cfg.train.precision)
    configure_backends(device, cfg.train.deterministic, cfg.train.precision)  # the precision it was validated at
    return model.eval(), cfg
