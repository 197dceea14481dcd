"""The thin Ray Tune adapter of ``sensorium.training.fit``: one trial = one fit with a report callback.

``fit`` knows nothing of Ray. Here its per-epoch ``report(epoch, metrics, checkpoint_dir)`` becomes
``ray.tune.report(metrics, checkpoint=...)``, a trial restarted after a driver crash resumes from
``ray.tune.get_checkpoint()``, and torch's thread count follows the trial's CPU allocation (a reused Ray
worker may keep an old one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.space import resolve
from sensorium.config import ExperimentConfig, set_value

# Per-epoch metrics a trial reports (fit's keys; the process memory of the trial is added).
REPORTED = ("epoch", "train_loss", "val_corr", "best_val_corr", "best_epoch", "lr", "epoch_seconds")
FIT_DONE_FILE = "fit_result.json"  # written when fit returns by itself; absent when Tune stopped the trial


def train_trial(params: dict[str, Any], base: dict[str, Any], cpus: float) -> None:
    """Ray Tune function trainable. ``params``: sampled values by dotted key; ``base``: the base config.

    Any exception (fit raises FloatingPointError on a non-finite loss) fails the trial; Tune records it.
    """
    from sensorium.training.fit import fit

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    cfg = resolve(ExperimentConfig.from_dict(base), params)
    cfg = set_value(cfg, "train.threads", threads)  # a runtime field: fit sets it, resume accepts a change
    if cfg.train.device == "auto" and not ray.get_gpu_ids():
        # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial given no GPU: "auto" would take one anyway.
        cfg = set_value(cfg, "train.device", "cpu")
    # Tune runs each trial in its own working directory and syncs it to the trial folder of the run
    # (SyncConfig(sync_artifacts=True)), so fit's config.yaml, curves.csv, ... land next to Tune's files.
    run_dir = Path.cwd()
    resume = _restored_checkpoint()

    def report(epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        out = {k: float(metrics[k]) for k in REPORTED if k in metrics}
        out.update(memory_mb())
        tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    result = fit(cfg, run_dir, report=report, resume=resume, progress=False)
    summary = {"best_val_corr": result.best_val_corr, "best_epoch": result.best_epoch, "epochs": result.epochs_run}
    (run_dir / FIT_DONE_FILE).write_text(json.dumps(summary))


def _restored_checkpoint() -> Path | None:
    """The checkpoint folder this trial resumes from (after a driver restart), else None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    if checkpoint.filesystem is not None and checkpoint.filesystem.type_name != "local":
        local = Path.cwd() / "restored_checkpoint"
        return Path(checkpoint.to_directory(str(local)))
    return Path(checkpoint.path)


def memory_mb() -> dict[str, float]:
    """This process's memory in MB: ``rss_mb`` (all resident pages, shared memory maps included) and
    ``private_mb`` (pages no other process shares: what one more concurrent trial really adds).

    Linux only (``/proc/self/smaps_rollup``); elsewhere an empty dict.
    """
    path = "/proc/self/smaps_rollup"
    if not os.path.exists(path):
        return {}
    fields: dict[str, float] = {}
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024  # kB -> MB
    private = fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)
    return {"rss_mb": fields.get("Rss", 0.0), "private_mb": private}


def ran_to_end(trial_path: str | Path, epochs: Any, max_t: int) -> bool:
    """True when a trial that stopped was not cut short: its fit ended by itself (early stopping or
    max_epochs: the trainable wrote FIT_DONE_FILE) or it reached ASHA's max_t (where ASHA always stops)."""
    reached = isinstance(epochs, (int, float)) and epochs >= max_t
    return reached or (Path(trial_path) / FIT_DONE_FILE).is_file()
