"""The run directory: a training run that describes itself.

    RUN_DIR/
      config.yaml        resolved ExperimentConfig (feed it back to ``train`` to rerun)
      provenance.json    seed, git SHA, library versions, host
      curves.csv         one row per epoch (CURVE_FIELDS)
      metrics.json       final scores of the best weights (written when the run ends)
      checkpoints/last.pt  full resumable state;  checkpoints/best.pt  best weights + config
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from sensorium.atomic import atomic_write, write_text
from sensorium.config import ExperimentConfig, save_config
from sensorium.runtime import device_info, provenance

@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of fit: the one schema of the per-epoch metrics (curves.csv's columns, fit's report callback, a
    search trial's results, the search's TensorBoard scalars, what ASHA and a cost-aware study read)."""

    epoch: int
    train_loss: float  # mean per-batch objective
    val_corr: float  # validation single-trial correlation, pooled over scans
    best_val_corr: float
    best_epoch: int
    lr: float  # used in this epoch
    epoch_seconds: float  # train_seconds + validation
    train_seconds: float  # of which data_seconds assembling batches
    data_seconds: float
    n_parameters: int  # the model's trainable parameters (the same every epoch): one cost a search can minimise
    peak_gpu_memory_mb: float | None = None  # GPU only

    def as_dict(self) -> dict[str, float]:
        """The fields that have a value (peak_gpu_memory_mb only on GPUs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


CURVE_FIELDS = tuple(f.name for f in dataclasses.fields(EpochMetrics))


@dataclass(frozen=True)
class RunDir:
    """Paths and small writers of one run directory (``checkpoint_dir``: elsewhere than RUN_DIR/checkpoints)."""

    root: Path
    checkpoint_dir: Path | None = None

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def prepare(self, cfg: ExperimentConfig, resume: bool, device: torch.device) -> None:
        """Create the folders and write config.yaml and provenance.json (with the device it runs on).

        A fresh run starts clean (old curves and metrics removed); a resumed run keeps its curves and
        original provenance and appends the resuming process's provenance under ``resumed``.
        """
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        if not resume:
            self.curves.unlink(missing_ok=True)
            self.metrics.unlink(missing_ok=True)
        now = {**provenance(cfg.seed), "device": device_info(device)}
        if resume and self.provenance.exists():
            record = json.loads(self.provenance.read_text())
            record.setdefault("resumed", []).append(now)
        else:
            record = now
        write_json(self.provenance, record)

    def append_curve(self, row: dict[str, float]) -> None:
        """Append one epoch's metrics to curves.csv (header written with the first row).

        Appended, not rewritten whole: a crash or a full disk mid-row can leave a partial last row; it belongs
        to an epoch after the last checkpoint, which a resume drops (:meth:`truncate_curves`).
        """
        new = not self.curves.exists()
        with open(self.curves, "a", newline="") as f:
            writer = _curve_writer(f)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_curves(self) -> list[dict[str, float]]:
        """All rows of curves.csv as numbers (an empty list before the first epoch)."""
        if not self.curves.exists():
            return []
        with open(self.curves, newline="") as f:
            # a column empty in a row (peak_gpu_memory_mb on the CPU) is left out of that row
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    def truncate_curves(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (a run killed between its curve row and its checkpoint).

        The file is rewritten whole or not at all: a failure keeps every row, never a part of them.
        """
        rows = [r for r in self.read_curves() if r["epoch"] <= last_epoch]
        with atomic_write(self.curves, newline="") as f:
            writer = _curve_writer(f)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: int(v) if k in ("epoch", "best_epoch") else v for k, v in row.items()})


def _curve_writer(f: IO[str]) -> csv.DictWriter:
    return csv.DictWriter(f, fieldnames=CURVE_FIELDS, extrasaction="ignore", lineterminator="\n")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON whole or not at all (:func:`sensorium.atomic.write_text`); NaN/inf become null, so the file
    stays standard JSON."""
    write_text(path, json.dumps(_finite(data), indent=2) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
