"""Training a product's members (retrain's seeds and split members, ``export --reseed-top``'s seeds) as Ray tasks.

Each member is one Ray task (``search.raytune.trainable.train_seed``) with one member's resources, on the connected
Ray (a private local one, or a cluster), as many at once as the resources allow; the driver prints each member's
epochs as they come and a line when it ends. A member's task writes its run folder, its submissions and its
test-tier predictions (``.npy``) and returns a small summary (paths and scores).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sensorium.config import ExperimentConfig
from sensorium.errors import UserError
from sensorium.runtime import is_cuda_request


def seed_resources(device: str, seeds: int, cpus: float | None, gpus: float | None) -> tuple[float, float]:
    """(CPUs, GPUs) of one seed's task on the connected Ray cluster; UserError naming the options when no
    alive node fits it. Defaults: an equal share of the largest node's CPUs (all seeds at once there), and
    one GPU when ``device`` asks for CUDA, or is auto and the cluster has GPUs (else none)."""
    import ray

    from search.raytune.preflight import fitting_nodes, node_info

    nodes = [node_info(raw) for raw in ray.nodes() if raw.get("Alive")]
    if cpus is None:
        cpus = max(1.0, float(max((n.cpus for n in nodes), default=1.0) // seeds))
    if gpus is None:
        gpus = 1.0 if is_cuda_request(device) or (device == "auto" and any(n.gpus > 0 for n in nodes)) else 0.0
    try:
        fitting_nodes(nodes, cpus, gpus)
    except UserError as err:
        raise UserError(f"--cpus-per-seed {cpus:g} --gpus-per-seed {gpus:g}: {err}") from err
    return cpus, gpus


def run_members(jobs: Mapping[str, ExperimentConfig], out: Path, cpus: float, gpus: float, progress: bool,
                command: str = "retrain") -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, str]]]]:
    """Train every member of ``jobs`` (folder name -> config, from :func:`member_configs`) as a Ray task
    (``search.raytune.trainable.train_seed``) into ``out/<name>``; returns the members (retrain.json entries, in
    ``jobs`` order, with ``split_fold`` for a split member) and where each saved its predictions (name ->
    "<data key>/<file name>" -> {"values", "rows"} paths). The first failed member cancels the others.
    ``command`` starts the progress lines (``export --reseed-top`` runs its seeds here too)."""
    import ray

    from search.raytune.trainable import train_seed

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(train_seed)
    pending = {task.remote(job.to_dict(), str(out / name), cpus, gpus): name for name, job in jobs.items()}
    if progress:
        device = next(iter(jobs.values())).train.device
        print(f"{command}: {len(jobs)} {'member' if any(j.data.split_folds for j in jobs.values()) else 'seed'}(s) as "
              f"Ray tasks of {cpus:g} CPU + {gpus:g} GPU, train.device {device} -> {out}", file=sys.stderr, flush=True)
    done_by_name: dict[str, dict[str, Any]] = {}
    shown: dict[str, int] = {}  # member -> last epoch printed
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        if not ready:
            if progress:
                _print_epochs(out, sorted(pending.values()), shown, command)
            continue
        [ref] = ready
        name = pending.pop(ref)
        try:
            done = ray.get(ref)
        except ray.exceptions.RayError as err:
            for other in pending:
                ray.cancel(other, force=True)
            cause = getattr(err, "cause", None)  # RayTaskError: the task's own exception
            if isinstance(cause, UserError):  # a bad config or device: one line, exit 2
                raise UserError(f"{name.replace('_', ' ')}: {cause}") from err
            raise
        if jobs[name].data.split_folds:
            done["member"]["split_fold"] = jobs[name].data.split_fold
        done_by_name[name] = done
        m = done["member"]
        if progress:
            clock = time.strftime("%H:%M:%S", time.localtime(done["started"]))
            print(f"{command}: {name.replace('_', ' ')} on {done['host']} ({done['device']}) started {clock}, ended "
                  f"{time.strftime('%H:%M:%S')} ({m['seconds']:.0f} s): best val corr "
                  f"{m['best_val_corr']:.4f} at epoch {m['best_epoch']}", file=sys.stderr, flush=True)
    return [done_by_name[n]["member"] for n in jobs], {n: done_by_name[n]["predictions"] for n in jobs}


def _print_epochs(out: Path, names: list[str], shown: dict[str, int], command: str) -> None:
    """One line per member (folder ``out/<name>``) and newly finished epoch, read from its curves.csv (the tasks'
    own output does not reach the driver; the run folder is shared with every node)."""
    from sensorium.training.rundir import RunDir

    for name in names:
        try:
            rows = RunDir(out / name).read_curves()
        except (OSError, ValueError):  # not written yet, or a row being appended
            continue
        for row in rows[shown.get(name, 0):]:
            print(f"{command}: {name.replace('_', ' ')} epoch {int(row['epoch'])}: val corr {row['val_corr']:.4f} "
                  f"(best {row['best_val_corr']:.4f}) {row['epoch_seconds']:.0f} s", file=sys.stderr, flush=True)
        shown[name] = max(shown.get(name, 0), len(rows))
