"""Which image each trial shows, in which tier, when, and under which file index and trial_idx.

Image ids are drawn once per dataset from one pool, so the live-test ids (shared by all scans), the
final-test ids (shared by the competition scans) and each scan's own train/validation ids never collide.
Trials are presented in a random order (time, the session order), then stored under a second random
order (file index), so the file index carries no time, as in the released data. The test tiers' repeats are
shuffled in with the train and validation trials, so they are spread over the whole session.

What the files keep of the session order, as in the released data:

- ``frame_trial_ts``: the onset of every trial (``YYYY-MM-DD HH:MM:SS.ffffff``, fixed width), strictly
  increasing in session order in every scan; sorting the strings sorts the trials in time.
- ``trial_idx``: the session position (0..N-1) in pre-training scans; in competition scans an MD5 hex
  string of it, which reveals nothing of the order (only ``frame_trial_ts`` does there).

History effects (``history.py``) run in this session order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from sensorium.data.synth.config import SynthConfig

FIRST_ANIMAL = 90001  # made-up animal ids that cannot clash with the real 2xxxx ones


@dataclass
class ImageIds:
    """test (n_test_images,), final_test (n_test_images,), unique: one (n_unique,) array per scan."""

    test: np.ndarray
    final_test: np.ndarray
    unique: list[np.ndarray]


@dataclass
class Design:
    """One scan's trials. Time-ordered: image_ids (N,) int64, tiers (N,) str. ``order`` (N,): the time index
    of the trial stored as file ``i`` (so ``image_ids[order]`` is in file order)."""

    image_ids: np.ndarray
    tiers: np.ndarray
    order: np.ndarray


def scan_keys(cfg: SynthConfig) -> list[str]:
    """Data keys ``<animal>-<session>-<scan_idx>``, in scan order and sorted the same way (competition first).

    Scan i's key depends only on the seed and i.
    """
    keys = []
    for i in range(cfg.n_scans):
        session, scan_idx = np.random.default_rng([cfg.seed, 0, i]).integers(1, [10, 26])
        keys.append(f"{FIRST_ANIMAL + i}-{session}-{scan_idx}")
    return keys


def draw_image_ids(cfg: SynthConfig) -> ImageIds:
    """Distinct positive image ids for every image of the dataset."""
    unique_counts = [cfg.n_unique_trials(competition=i < cfg.n_competition) for i in range(cfg.n_scans)]
    total = 2 * cfg.n_test_images + sum(unique_counts)
    rng = np.random.default_rng([cfg.seed, 2])
    ids = rng.choice(max(100_000, 10 * total), size=total, replace=False).astype(np.int64) + 1
    test, final_test = ids[: cfg.n_test_images], ids[cfg.n_test_images : 2 * cfg.n_test_images]
    bounds = np.cumsum([2 * cfg.n_test_images, *unique_counts])
    unique = [ids[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]
    return ImageIds(test=test, final_test=final_test, unique=unique)


def design_scan(rng: np.random.Generator, cfg: SynthConfig, ids: ImageIds, scan: int) -> Design:
    """The trials of scan number ``scan``: repeated test (and final_test) images and unique train/validation
    images, shuffled in time."""
    competition = scan < cfg.n_competition
    unique = ids.unique[scan]
    n_val = cfg.n_validation_trials(competition)
    parts = [
        (np.repeat(ids.test, cfg.test_repeats), "test"),
        (unique[:n_val], "validation"),
        (unique[n_val:], "train"),
    ]
    if competition:
        parts.append((np.repeat(ids.final_test, cfg.test_repeats), "final_test"))
    image_ids = np.concatenate([p for p, _ in parts])
    tiers = np.concatenate([np.full(len(p), tier) for p, tier in parts])
    in_time = rng.permutation(len(image_ids))
    return Design(image_ids=image_ids[in_time], tiers=tiers[in_time], order=rng.permutation(len(image_ids)))


def hashed_trial_idx(seed: int, key: str, time_index: np.ndarray) -> np.ndarray:
    """(N,) 32-hex strings standing in for the presentation order, as in the competition scans: unique, but
    their order says nothing of the time (``frame_trial_ts`` does)."""
    return np.array([hashlib.md5(f"{seed}/{key}/{int(t)}".encode()).hexdigest() for t in time_index])
