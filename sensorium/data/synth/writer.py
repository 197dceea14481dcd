"""``generate``: write a synthetic dataset (official scan folders) and its ground truth.

Layout under ``out``::

    data/static<key>-GrayImageNet-<hash>/   one official scan folder per scan
    ground_truth/<key>/                    see ``ground_truth.py``
    ground_truth/oracle.json               per-scan oracles, their mean per tier, and the SynthConfig (and,
                                           with history effects on, their sizes averaged over the scans)

Every random draw comes from a stream seeded by ``(cfg.seed, purpose, scan)`` (images by
``(cfg.seed, image_id)``), so the same config gives the same bytes. Memory per scan is about
N x H x W x 5 bytes (images, float copy for the filters) + N x n x 12 bytes (rates, responses, stored copy):
about 1.9 GB for a full-size scan (6000 trials, 8000 neurons, 144x256); with history effects on, N x n x 8
bytes more (the rates before the gain, the gains): about 2.3 GB.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sensorium.data.format import ScanArrays, scan_folder_name, statistics_of, write_scan
from sensorium.data.synth.behaviour import rf_shifts, simulate_session
from sensorium.data.synth.config import SynthConfig
from sensorium.data.synth.ground_truth import write_ground_truth, write_history
from sensorium.data.synth.history import history_report, sample_history, simulate_history, summarise_history
from sensorium.data.synth.images import make_images
from sensorium.data.synth.oracle import scan_oracle, summarise
from sensorium.data.synth.population import sample_population
from sensorium.atomic import write_text
from sensorium.data.synth.responses import feedforward_rates, simulate_responses
from sensorium.data.synth.trials import ImageIds, design_scan, draw_image_ids, hashed_trial_idx, scan_keys
from sensorium.errors import UserError

_SCAN_STREAM = 3
_HISTORY_STREAM = 4  # its own stream: switching history effects on changes no other scan draw
STEPS = ("images", "responses", "scan files", "ground truth")  # progress steps per scan


@dataclass
class SynthResult:
    """Where ``generate`` wrote what. oracle: key -> tier -> {single_trial_correlation, correlation_to_average};
    history: the history effects' sizes averaged over the scans (``history.summarise_history``), None when off."""

    data_dir: Path
    ground_truth_dir: Path
    scan_paths: list[Path]
    keys: list[str]
    competition_keys: list[str]
    oracle: dict[str, dict[str, dict[str, float]]]
    history: dict[str, Any] | None = None


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar mean/std/min/max/median of uint8 images from their histogram (no float copy of all pixels)."""
    counts = np.zeros(256, dtype=np.float64)
    for start in range(0, len(images), 256):  # bincount casts to int64: chunks keep that copy small
        counts += np.bincount(images[start : start + 256].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64)
    total = counts.sum()
    mean = (counts * values).sum() / total
    std = np.sqrt((counts * (values - mean) ** 2).sum() / total)
    cumulative = np.cumsum(counts)
    middle = [(total - 1) // 2, total // 2]  # np.median averages the two middle values of an even count
    median = values[np.searchsorted(cumulative, middle, side="right")].mean()
    present = values[counts > 0]
    return {
        name: np.asarray(value, dtype=np.float32)
        for name, value in (("mean", mean), ("std", std), ("min", present[0]), ("max", present[-1]), ("median", median))
    }


def _clear(out: Path, overwrite: bool) -> tuple[Path, Path]:
    data_dir, truth_dir = out / "data", out / "ground_truth"
    for folder in (data_dir, truth_dir):
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise UserError(f"{folder} is not empty; refusing to overwrite it (pass overwrite=True / --force)")
            shutil.rmtree(folder)
    return data_dir, truth_dir


def generate(out: str | Path, cfg: SynthConfig, progress: bool = True, overwrite: bool = False,
             workers: int = 1) -> SynthResult:
    """Write ``cfg.n_scans`` scans to ``out/data`` and their ground truth to ``out/ground_truth``.

    With ``overwrite`` an existing ``out/data`` and ``out/ground_truth`` are deleted first (nothing else in
    ``out`` is touched); without it, non-empty ones are refused (UserError). ``workers`` > 1 simulates that
    many scans at once in worker processes (each scan's memory, see the module docstring, once per worker);
    every scan draws from its own streams, so the bytes are the same whatever ``workers`` is.
    """
    if workers < 1:
        raise UserError(f"workers={workers}: expected a whole number >= 1")
    data_dir, truth_dir = _clear(Path(out), overwrite)
    keys = scan_keys(cfg)
    ids = draw_image_ids(cfg)
    shared_ids = np.concatenate([ids.test, ids.final_test]) if cfg.n_competition else ids.test
    shared = make_images(cfg.seed, shared_ids, cfg.image_height, cfg.image_width, cfg.noise_mix)
    bar = tqdm(total=cfg.n_scans * len(STEPS), disable=not progress, file=sys.stderr, unit="step")
    jobs = [(cfg, scan, key, ids, shared, data_dir, truth_dir) for scan, key in enumerate(keys)]
    if workers == 1:
        results = [_generate_scan(*job, bar) for job in jobs]
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_generate_scan, *job) for job in jobs]
            for future in as_completed(futures):
                future.result()  # a failed scan fails the whole call at once
                bar.update(len(STEPS))
            results = [future.result() for future in futures]
    bar.close()
    paths, oracles, histories = [], {}, {}
    for key, (path, oracles[key], report) in zip(keys, results):
        paths.append(path)
        if report is not None:
            histories[key] = report
    summary = {"scans": oracles, "mean": summarise(oracles), "config": dataclasses.asdict(cfg)}
    if histories:
        summary["history"] = summarise_history(histories)
    write_text(truth_dir / "oracle.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return SynthResult(
        data_dir=data_dir,
        ground_truth_dir=truth_dir,
        scan_paths=paths,
        keys=keys,
        competition_keys=keys[: cfg.n_competition],
        oracle=oracles,
        history=summary.get("history"),
    )


def _scan_images(
    cfg: SynthConfig, own_ids: np.ndarray, shared: dict[int, np.ndarray], image_ids: np.ndarray
) -> np.ndarray:
    """(N, H, W) uint8: the image of every trial; ``own_ids`` are made here, the others come from ``shared``."""
    own = make_images(cfg.seed, own_ids, cfg.image_height, cfg.image_width, cfg.noise_mix)
    return np.stack([own[i] if i in own else shared[i] for i in image_ids.tolist()])


def _generate_scan(
    cfg: SynthConfig,
    scan: int,
    key: str,
    ids: ImageIds,
    shared: dict[int, np.ndarray],
    data_dir: Path,
    truth_dir: Path,
    bar: tqdm | None = None,
) -> tuple[Path, dict[str, dict[str, float]], dict[str, Any] | None]:
    """Simulate one scan, write its folder and ground truth; return the folder, the scan's oracle and its
    history report (None without history effects)."""
    bar = bar if bar is not None else tqdm(disable=True)  # in a worker process: the parent counts scans
    competition = scan < cfg.n_competition
    streams = np.random.SeedSequence([cfg.seed, _SCAN_STREAM, scan]).spawn(6)
    design_rng, behaviour_rng, population_rng, shift_rng, noise_rng, ids_rng = map(np.random.default_rng, streams)
    design = design_scan(design_rng, cfg, ids, scan)
    n = cfg.n_neurons

    bar.set_description(f"{key} images")
    images = _scan_images(cfg, ids.unique[scan], shared, design.image_ids)  # (N, H, W) uint8, time order
    bar.update()

    bar.set_description(f"{key} responses")
    history = None
    if cfg.has_history:
        history = sample_history(np.random.default_rng([cfg.seed, _HISTORY_STREAM, scan]), cfg, n, len(images))
    session = simulate_session(behaviour_rng, len(images), state=None if history is None else history.state)
    pop = sample_population(
        population_rng, n, cfg.image_width / cfg.image_height, cfg.complex_fraction, cfg.weak_fraction
    )
    shifts = rf_shifts(shift_rng, session.pupil_center)
    gains = report = None
    if history is None:  # trials independent: noise drawn neuron chunk by neuron chunk
        expected, noisy = simulate_responses(noise_rng, pop, images, session.behavior, shifts, cfg.signal_strength)
    else:  # each trial's gain depends on the earlier ones: simulated trial by trial in session order
        feedforward = feedforward_rates(pop, images, session.behavior, shifts, cfg.signal_strength)
        mean_rate = feedforward.mean(axis=0, dtype=np.float64)
        expected, noisy, gains = simulate_history(noise_rng, feedforward, mean_rate, pop.event_size, history)
        del feedforward
        report = history_report(expected, noisy, gains, history, design.tiers, cfg)
    bar.update()

    bar.set_description(f"{key} scan files")
    order = design.order  # file i holds the trial presented at time order[i]
    tiers = design.tiers[order]
    images, expected, noisy = images[order], expected[order], noisy[order]
    gains = None if gains is None else gains[order]
    stored = noisy.copy()
    if competition:
        stored[np.isin(tiers, ("test", "final_test"))] = 0.0  # withheld, as in the released data
    trials = {
        "tiers": tiers,
        "frame_image_id": design.image_ids[order],
        "frame_image_class": np.full(len(order), "imagenet"),
        "trial_idx": hashed_trial_idx(cfg.seed, key, order) if competition else order.astype(np.int64),
        "frame_trial_ts": session.timestamps[order],
    }
    animal, session_id, scan_idx = (int(part) for part in key.split("-"))
    neurons = {
        "unit_ids": np.sort(ids_rng.choice(4 * n, size=n, replace=False)).astype(np.int64) + 1,
        "cell_motor_coordinates": pop.coordinates.astype(np.float32),
        "animal_ids": np.full(n, animal, dtype=np.int64),
        "sessions": np.full(n, session_id, dtype=np.int64),
        "scan_idx": np.full(n, scan_idx, dtype=np.int64),
        "area": np.full(n, "V1"),
        "layer": np.full(n, "L2/3"),
    }
    arrays = ScanArrays(
        images=images[:, None],  # uint8 in memory; write_scan stores float32 0-255
        responses=stored,
        behavior=session.behavior[order],
        pupil_center=session.pupil_center[order],
        trials=trials,
        neurons=neurons,
    )
    statistics = {
        "images": image_statistics(arrays.images),
        "responses": statistics_of(arrays.responses, per_column=True),
        "behavior": statistics_of(arrays.behavior, per_column=True),
        "pupil_center": statistics_of(arrays.pupil_center, per_column=True),
    }
    path = write_scan(data_dir / scan_folder_name(key), arrays, statistics)
    bar.update()

    bar.set_description(f"{key} ground truth")
    oracle = scan_oracle(expected, noisy, tiers, trials["frame_image_id"])
    write_ground_truth(
        truth_dir / key, noisy, expected, trials, neurons["unit_ids"], statistics["responses"]["std"], oracle
    )
    if gains is not None and report is not None:
        write_history(truth_dir / key, gains, report)
    bar.update()
    return path, oracle, report
