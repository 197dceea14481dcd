"""The thin Ray Tune adapter of ``sensorium.training.fit``: one trial = one fit with a report callback.

``fit`` knows nothing of Ray. Here its per-epoch ``report(epoch, metrics, checkpoint_dir)`` becomes
``ray.tune.report(metrics, checkpoint=...)`` (a checkpoint only on the epochs fit wrote one: by time, at
the end of an lr-decay round, and at every ASHA rung, where the scheduler may stop the trial), a trial
restarted after a driver crash resumes from ``ray.tune.get_checkpoint()``, and torch's thread count
follows the trial's CPU allocation (a reused Ray worker may keep an old one).

fit's checkpoints go to a scratch folder outside the trial's working directory: Tune copies each reported
checkpoint to storage itself, and the working directory is synced there too (fit's config.yaml,
curves.csv, ...), so checkpoints inside it would be copied twice.

``train_seed`` is the same adapter for one seed of ``retrain`` (a plain Ray task). Both run on the GPU Ray
assigned them, or on the CPU when given none (``on_assigned_gpu``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from search.spec.space import resolve
from search.store.schema import AFTER_TRAINING_ERROR, FIT_DONE, SCORING_ERROR, TRIAL_ERROR
from sensorium.config import ExperimentConfig, set_value
from sensorium.errors import one_line
from sensorium.runtime import assigned_device, cap_gpu_memory, gpu_memory
from sensorium.training.rundir import CURVE_FIELDS

# A failure of the machine, not of the trial: disk or network file system trouble, a lost Ray connection.
# Tune retries these from the trial's latest checkpoint; a killed worker or a lost node are retried too.
INFRASTRUCTURE = (OSError, ray.exceptions.RayError)


def train_trial(
    params: dict[str, Any], base: dict[str, Any], cpus: float, checkpoint_epochs: Collection[int] = (),
    gpus: float = 0.0,
) -> None:
    """Ray Tune function trainable. ``params``: sampled values by dotted key; ``base``: the base config;
    ``checkpoint_epochs``: epochs that must end with a checkpoint (the scheduler's rungs); ``cpus``,
    ``gpus``: the trial's resources (``gpus`` in cards: a fraction shares one card).

    Two kinds of failure (see ``INFRASTRUCTURE``): the trial's own (a non-finite loss, a config the model
    rejects, GPU memory too small for the config, a bug) ends the trial with one last result carrying
    ``TRIAL_ERROR`` (its reason) and is not retried; an infrastructure failure is raised to Tune, which
    restarts the trial from its latest checkpoint (FailureConfig.max_failures), like a killed worker or a
    lost node, which never reach this code. Once fit returned, training is over and nothing fails the trial:
    the last result carries ``FIT_DONE`` and the reason of anything that failed after training
    (``SCORING_ERROR``, ``AFTER_TRAINING_ERROR``), and the study is told the trial's best score.
    """
    from sensorium.training.fit import fit

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    cfg = resolve(ExperimentConfig.from_dict(base), params)
    cfg = set_value(cfg, "train.threads", threads)  # a runtime field: fit sets it, resume accepts a change
    cfg = on_assigned_gpu(cfg, gpus, "gpus_per_trial")
    # Tune runs each trial in its own working directory and syncs it to the trial folder of the run
    # (SyncConfig(sync_artifacts=True)), so fit's config.yaml, curves.csv, ... land next to Tune's files.
    run_dir = Path.cwd()
    resume = _restored_checkpoint()

    # Every result carries the metrics the searcher and scheduler read (Tune checks), a failure before the
    # first epoch too: the scores, and the cost fields a cost-aware study's searcher reads.
    last: dict[str, float] = {**{k: math.nan for k in CURVE_FIELDS}, "epoch": 0}

    def report(epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        out = {k: float(metrics[k]) for k in CURVE_FIELDS if k in metrics}
        out.update(memory_mb())
        out.update(gpu_memory(torch.device(cfg.train.device)))
        last.update(out)
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        tune.report(out, checkpoint=checkpoint)

    scratch = Path(tempfile.mkdtemp(prefix="sensorium-checkpoints-"))
    try:
        result = fit(cfg, run_dir, report=report, resume=resume, progress=False, checkpoint_dir=scratch,
                     checkpoint_epochs=set(checkpoint_epochs))
    except INFRASTRUCTURE:
        raise
    except Exception as err:  # the trial's own failure: recorded once, with its reason, not retried
        tune.report({**last, TRIAL_ERROR: one_line(err)})
        return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # Training is over: its epochs are reported and its checkpoint persisted. The outcome goes into the results,
    # not into a file: Ray's last artifact sync of a finishing trial can run before files written after the
    # last report exist. The row repeats the last epoch's metrics.
    done: dict[str, Any] = {**last, FIT_DONE: float(result.epochs_run)}
    done.update(gpu_memory(torch.device(cfg.train.device)))  # the peaks now include the final scoring
    try:
        done.update(after_training(run_dir))
    except Exception as err:  # an infrastructure failure too: retrying would not train anything again
        done[AFTER_TRAINING_ERROR] = one_line(err)
    tune.report(done)


def after_training(run_dir: Path) -> dict[str, str]:
    """What a trial adds to its last result once fit returned in ``run_dir``: the reason fit's final scoring
    failed (``SCORING_ERROR``), if metrics.json records one; the trained model stands and its scores can be
    computed again from best.pt (``submit``, ``ensemble``)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {SCORING_ERROR: str(metrics[SCORING_ERROR])} if SCORING_ERROR in metrics else {}


def train_seed(cfg_dict: dict[str, Any], seed_dir: str, cpus: float, gpus: float) -> dict[str, Any]:
    """One ensemble member, a Ray task given ``cpus`` CPUs (its torch threads) and ``gpus`` GPUs: fit the
    config (its ``seed`` set) into ``seed_dir`` on data mapped from the cache, then write its submissions
    (the driver follows its progress in ``seed_dir``/curves.csv) and its predictions, one tier at a time, each
    file written whole into ``seed_dir/predictions/``: ``<data key>.<tier>.npy`` ((trials, neurons) float32, the
    model's normalised response units) and ``<data key>.<tier>.rows.npy`` ((trials,) int64, their scan rows).

    Returns ``member`` (its retrain.json entry), ``predictions`` ("<data key>/<file name>" -> {"values": path,
    "rows": path}), ``started`` (Unix time), ``device`` (train.device as run) and ``host``: about 1 kB whatever
    the data's size, so nothing large passes through Ray's object store.
    """
    import numpy as np

    from sensorium.atomic import atomic_write
    from sensorium.data import load_data
    from sensorium.predict import competition_keys, predict
    from sensorium.runtime import resolve_device
    from sensorium.submission import SUBMISSION_FILES, write_submission
    from sensorium.training.fit import fit

    started, t0 = time.time(), time.perf_counter()
    cfg = set_value(ExperimentConfig.from_dict(cfg_dict), "train.threads", max(1, int(cpus)))
    cfg = on_assigned_gpu(cfg, gpus, "--gpus-per-seed")
    scans = load_data(cfg.data, progress=False)
    result = fit(cfg, Path(seed_dir), data=scans, progress=False)
    member = {"seed": cfg.seed, "run_dir": seed_dir, "best_val_corr": result.best_val_corr,
              "best_epoch": result.best_epoch, "epochs": result.epochs_run,
              "seconds": round(time.perf_counter() - t0, 1), "files": {}}
    device = resolve_device(cfg.train.device)
    saved = {}
    for key in competition_keys(scans):
        for name, tier in SUBMISSION_FILES.items():
            pred = predict(result.model, scans[key], tier, device, cfg.data.eval_batch_size)
            path = write_submission(Path(seed_dir) / "submission" / key / name, pred.trial_ids, pred.image_ids,
                                    pred.neuron_ids, pred.values, overwrite=True)
            member["files"][f"{key}/{name}"] = str(path)
            stem = Path(seed_dir) / "predictions" / f"{key}.{tier}"
            saved[f"{key}/{name}"] = {"values": f"{stem}.npy", "rows": f"{stem}.rows.npy"}
            for what, array in (("values", pred.values), ("rows", pred.rows)):
                with atomic_write(saved[f"{key}/{name}"][what], "wb") as f:
                    np.save(f, array)
            del pred  # one tier in memory at a time
    return {"member": member, "predictions": saved, "started": started, "device": cfg.train.device,
            "host": platform.node()}


def on_assigned_gpu(cfg: ExperimentConfig, gpus: float, setting: str) -> ExperimentConfig:
    """``cfg`` with train.device set to what this Ray worker was given (``runtime.assigned_device``: cuda:0
    for the assigned card, cpu without one), and on a card shared with others (0 < ``gpus`` < 1) the
    process's GPU memory capped at its share. ``setting`` names the option that gives GPUs, for errors."""
    device = assigned_device(cfg.train.device, ray.get_gpu_ids(), setting)
    cap_gpu_memory(gpus, device)
    return set_value(cfg, "train.device", device)


def _restored_checkpoint() -> Path | None:
    """The checkpoint folder this trial resumes from (after a driver restart), else None.

    A folder without last.pt (persisted only in part) has no state to resume: None, with a warning, and
    the trial starts again from epoch 0, as fit does itself for a damaged last.pt. Starting again is
    right for a trial: its result is a function of its config, so it reaches the same score.
    """
    import warnings

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    if checkpoint.filesystem is not None and checkpoint.filesystem.type_name != "local":
        path = Path(checkpoint.to_directory(str(Path.cwd() / "restored_checkpoint")))
    else:
        path = Path(checkpoint.path)
    if not (path / "last.pt").is_file():
        warnings.warn(f"{path}: restored checkpoint holds no last.pt; starting the trial again from epoch 0")
        return None
    return path


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
