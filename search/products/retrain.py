"""``sensorium-search retrain RUN_DIR|best_config.yaml``: the best config as a seed ensemble, submitted.

Trains the config with N seeds (``seed``, ``seed + 1``, ...), averages the N models' predictions of every
competition scan (aligned by trial and neuron id), and writes the official CSVs
``OUT/<data key>/submission_file_{live,final}_test.csv`` (each seed's own under ``OUT/seed_<s>/submission/``).
When a ground-truth folder is given or found next to the data, every file is scored: its CSVs are matched to
the scans' test tiers by their trial ids, in any layout (``sensorium.submission.match_ground_truth``: the
synthetic ``<gt>/<key>/ground_truth_<tier>.csv``, the official kit's ``ground_truth_file_<tier>.csv``); the
oracle is reported beside the scores when ``<gt>/<key>/oracle.json`` exists. Everything goes to
``OUT/retrain.json``.

Each seed is one Ray task with its own resources (``--cpus-per-seed``, ``--gpus-per-seed``; by default one
whole GPU per seed when training on CUDA), on a private local Ray or a cluster (``--address``), as many at
once as the resources allow. The driver builds the memory-mapped data cache once; each task maps it, runs
``fit``, writes its seed folder, its submissions and its test-tier predictions as ``.npy`` files
(``seed_<s>/predictions/``), and returns a summary of a few kB: at the real data size a seed's predictions
are about 128 MB, too much for Ray's object store. The driver then averages them one file at a time from
memory maps.

``--train-on-validation`` (a recorded choice) adds the validation tier to the training data; since early
stopping on data the model trains on is meaningless, fit then trains exactly ``train.max_epochs``, set to
the search's best epoch (from the best config's provenance), with no lr schedule, keeping the last weights.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from search.products.scoring import ground_truth_files, read_oracle, score_all_files
from sensorium.atomic import exclusive_lock, write_text
from sensorium.config import ExperimentConfig, config_hash, load_config, set_value
from sensorium.errors import UserError
from sensorium.runtime import is_cuda_request

DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")  # what --device accepts
RETRAIN_LOCK = ".retrain.lock"  # in the output folder, held by the retrain writing it


def retrain(source: Path, *, out: Path | None = None, seeds: int = 3, train_on_validation: bool = False,
            ground_truth: Path | None = None, data: list[str] | None = None, force: bool = False,
            progress: bool = True, device: str | None = None, cpus_per_seed: float | None = None,
            gpus_per_seed: float | None = None, address: str | None = None) -> dict[str, Any]:
    """Train, ensemble, write and score; returns what retrain.json holds. ``device``: train.device of every
    seed (None: the config's); ``cpus_per_seed``, ``gpus_per_seed``: one seed task's resources (None: see
    ``seed_resources``); ``address``: a Ray cluster to join (None: this process's Ray, else a local one).
    A folder another retrain is writing is refused (FolderInUse naming the folder and that process)."""
    from search.raytune.driver import ensure_ray, release_ray
    from search.raytune.preflight import preflight
    from search.raytune.prepare import absolute_data_paths
    from sensorium.data import load_data
    from sensorium.predict import competition_keys

    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected at least 1")
    if device is not None and not DEVICES.fullmatch(device):
        raise UserError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if cpus_per_seed is not None and cpus_per_seed <= 0:
        raise UserError(f"--cpus-per-seed {cpus_per_seed:g}: expected a value > 0")
    cfg, provenance, default_out = load_source(Path(source))
    if data:
        cfg = set_value(cfg, "data.scans", [str(Path(p).resolve()) for p in data])
    choices: dict[str, Any] = {"train_on_validation": train_on_validation}
    if device is not None:
        cfg = set_value(cfg, "train.device", device)
        choices["device"] = device
    if train_on_validation:
        epochs = (provenance or {}).get("best_epoch")
        if not epochs:
            raise UserError(f"{source}: --train-on-validation needs the search's best epoch (a best_config.yaml)")
        cfg = set_value(set_value(cfg, "train.train_on_validation", True), "train.max_epochs", max(1, int(epochs)))
        choices["max_epochs"] = max(1, int(epochs))
    if gpus_per_seed == 0 and is_cuda_request(cfg.train.device):
        raise UserError(f"train.device={cfg.train.device!r} needs a GPU, but --gpus-per-seed is 0")
    out = Path(out or default_out).resolve()
    # Held to the end: a second retrain into this folder is refused, not interleaved with this one's files;
    # the kernel frees it if this process dies.
    with exclusive_lock(out / RETRAIN_LOCK, "retrain"):
        if (out / "retrain.json").exists() and not force:
            raise UserError(f"{out} already holds a retrain; pass --force to overwrite or choose --out")
        start = time.perf_counter()
        run_cfg = absolute_data_paths(cfg)  # tasks run in other folders, maybe on other nodes
        started = ensure_ray(address)
        try:
            cpus, gpus = seed_resources(run_cfg.train.device, seeds, cpus_per_seed, gpus_per_seed)
            preflight(cpus, gpus, str(out), [Path(p) for p in run_cfg.data.scans])
            # Builds the memory-mapped cache here, once, before the tasks map it.
            scans = load_data(run_cfg.data, progress=progress)
            competition = competition_keys(scans)
            truth = ground_truth_files(ground_truth, cfg, scans)  # a wrong --ground-truth fails before training
            members, saved = run_seeds(run_cfg, seeds, out, cpus, gpus, progress)
        finally:
            release_ray(started)
        files = write_seed_average(out, saved, scans)

        summary: dict[str, Any] = {
            "source": str(source), "out": str(out), "config_hash": config_hash(cfg),
            "seeds": [m["seed"] for m in members], "choices": choices, "search_provenance": provenance,
            "members": members, "ensemble_files": files, "ground_truth": truth and str(truth.root),
            "ground_truth_files": truth and truth.by_key(), "seconds": None,
        }
        if truth is not None:
            summary["scores"] = {"ensemble": score_all_files(files, truth.files),
                                 **{f"seed_{m['seed']}": score_all_files(m["files"], truth.files) for m in members}}
            summary["oracle"] = read_oracle(truth.root, competition)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_text(out / "retrain.json", json.dumps(summary, indent=2, default=_jsonable))
    return summary


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


def run_seeds(cfg: ExperimentConfig, seeds: int, out: Path, cpus: float, gpus: float,
              progress: bool) -> tuple[list[dict[str, Any]], dict[int, dict[str, dict[str, str]]]]:
    """Run seeds ``cfg.seed`` ... ``cfg.seed + seeds - 1`` as Ray tasks (``search.raytune.trainable.train_seed``) into
    ``out/seed_<s>``; returns the members (retrain.json entries, by seed) and where each seed saved its
    predictions (seed -> "<data key>/<file name>" -> {"values", "rows"} paths). The first failed seed
    cancels the others."""
    import ray

    from search.raytune.trainable import train_seed

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(train_seed)
    pending = {}
    for i in range(seeds):
        seed_cfg = set_value(cfg, "seed", cfg.seed + i)
        ref = task.remote(seed_cfg.to_dict(), str(out / f"seed_{seed_cfg.seed}"), cpus, gpus)
        pending[ref] = seed_cfg.seed
    if progress:
        print(f"retrain: {seeds} seed(s) as Ray tasks of {cpus:g} CPU + {gpus:g} GPU, train.device "
              f"{cfg.train.device} -> {out}", file=sys.stderr, flush=True)
    done_by_seed: dict[int, dict[str, Any]] = {}
    shown: dict[int, int] = {}  # seed -> last epoch printed
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        if not ready:
            if progress:
                _print_epochs(out, sorted(pending.values()), shown)
            continue
        [ref] = ready
        seed = pending.pop(ref)
        try:
            done = ray.get(ref)
        except ray.exceptions.RayError as err:
            for other in pending:
                ray.cancel(other, force=True)
            cause = getattr(err, "cause", None)  # RayTaskError: the task's own exception
            if isinstance(cause, UserError):  # a bad config or device: one line, exit 2
                raise UserError(f"seed {seed}: {cause}") from err
            raise
        done_by_seed[seed] = done
        m = done["member"]
        if progress:
            clock = time.strftime("%H:%M:%S", time.localtime(done["started"]))
            print(f"retrain: seed {seed} on {done['host']} ({done['device']}) started {clock}, ended "
                  f"{time.strftime('%H:%M:%S')} ({m['seconds']:.0f} s): best val corr "
                  f"{m['best_val_corr']:.4f} at epoch {m['best_epoch']}", file=sys.stderr, flush=True)
    ordered = sorted(done_by_seed)
    return [done_by_seed[s]["member"] for s in ordered], {s: done_by_seed[s]["predictions"] for s in ordered}


def write_seed_average(out: Path, saved: Mapping[int, Mapping[str, Mapping[str, str]]],
                       scans: Mapping[str, Any]) -> dict[str, str]:
    """The seed ensemble's official CSVs ``out/<data key>/<file name>``: per file, the seeds' saved predictions
    (memory-mapped) summed in float64 in seed order, divided by their number, keyed by trial and neuron id
    through ``scans`` (data key -> ScanData). One file's sum is in memory at a time. Returns
    "<data key>/<file name>" -> path. RuntimeError when the seeds predicted different trials."""
    from sensorium.predict import keyed
    from sensorium.submission import write_submission

    files = {}
    for rel in saved[min(saved)]:
        total, rows = None, None
        for seed in sorted(saved):
            values = np.load(saved[seed][rel]["values"], mmap_mode="r")  # (trials, neurons)
            seed_rows = np.load(saved[seed][rel]["rows"])
            if total is None:
                total, rows = values.astype(np.float64), seed_rows
            elif np.array_equal(rows, seed_rows):
                total += values
            else:
                raise RuntimeError(f"{rel}: ensemble members predicted different trials")
        total /= len(saved)
        key, name = rel.split("/")
        pred = keyed(scans[key], rows, total)
        path = write_submission(out / key / name, pred.trial_ids, pred.image_ids, pred.neuron_ids, pred.values,
                                overwrite=True)
        files[rel] = str(path)
    return files


def _print_epochs(out: Path, seeds: list[int], shown: dict[int, int]) -> None:
    """One line per seed and newly finished epoch, read from the seed's curves.csv (the tasks' own output
    does not reach the driver; the run folder is shared with every node)."""
    from sensorium.training.rundir import RunDir

    for seed in seeds:
        try:
            rows = RunDir(out / f"seed_{seed}").read_curves()
        except (OSError, ValueError):  # not written yet, or a row being appended
            continue
        for row in rows[shown.get(seed, 0):]:
            print(f"retrain: seed {seed} epoch {int(row['epoch'])}: val corr {row['val_corr']:.4f} "
                  f"(best {row['best_val_corr']:.4f}) {row['epoch_seconds']:.0f} s", file=sys.stderr, flush=True)
        shown[seed] = max(shown.get(seed, 0), len(rows))


def load_source(source: Path) -> tuple[ExperimentConfig, dict[str, Any] | None, Path]:
    """(config, search provenance or None, default output folder) of a run folder or a config file."""
    if source.is_dir():
        from search.products.export import BEST_CONFIG, export_best

        best = source / BEST_CONFIG
        if not best.is_file():
            export_best(source)
        source, default_out = best, source / "retrain"
    else:
        default_out = source.parent / f"retrain-{source.stem}"
    if not source.is_file():
        raise UserError(f"{source}: no such run folder or config file")
    from search.products.export import read_best_config

    try:
        cfg, provenance = read_best_config(source)
    except UserError:
        cfg, provenance = load_config(source), None  # a plain experiment config (e.g. the baseline)
    return cfg, provenance, default_out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
