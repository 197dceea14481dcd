"""The animal's state over one recording session, one value per trial in presentation (time) order.

Running alternates between still and running bouts (a two-state Markov chain), so running speed is bimodal;
pupil dilation follows a smoothed arousal signal driven by running plus slow drift; its derivative is the
trial-to-trial change; the eye position (pupil center) drifts slowly and jumps at saccades, and moves all
receptive fields of a trial by one common shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

P_START_RUNNING = 0.02  # per trial
P_STOP_RUNNING = 0.04  # per trial: running about a third of the time, bouts of ~25 trials
AROUSAL_TAU = 8.0  # trials, smoothing of the running state that drives pupil dilation
SHIFT_STD = 0.05  # RF shift per axis caused by eye movements, height units (about 2 px at 36x64)
PUPIL_PER_STATE = 2.5  # pupil dilation (a.u.) per unit of the latent arousal state of history.py (corr ~0.45)


@dataclass
class Behaviour:
    """Per-trial state in time order. behavior (N, 3): pupil dilation (a.u.), its derivative, running speed
    (cm/s); pupil_center (N, 2): horizontal, vertical eye position (eye-camera pixels); timestamps (N,) str."""

    behavior: np.ndarray
    pupil_center: np.ndarray
    timestamps: np.ndarray


def _ar1(rng: np.random.Generator, n: int, tau: float, std: float) -> np.ndarray:
    """(n,) stationary AR(1) process with time constant ``tau`` trials and marginal std ``std``."""
    rho = np.exp(-1.0 / tau)
    innovations = rng.standard_normal(n) * std * np.sqrt(1.0 - rho**2)
    values = np.empty(n)
    values[0] = rng.standard_normal() * std
    for t in range(1, n):
        values[t] = rho * values[t - 1] + innovations[t]
    return values


def _running_state(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) bool, True while the animal runs."""
    flips = rng.random(n)
    running = np.empty(n, dtype=bool)
    running[0] = rng.random() < P_START_RUNNING / (P_START_RUNNING + P_STOP_RUNNING)
    for t in range(1, n):
        p_flip = P_STOP_RUNNING if running[t - 1] else P_START_RUNNING
        running[t] = running[t - 1] != (flips[t] < p_flip)
    return running


def _smooth(values: np.ndarray, tau: float) -> np.ndarray:
    """Causal exponential smoothing with time constant ``tau`` trials."""
    alpha = 1.0 - np.exp(-1.0 / tau)
    out = np.empty(len(values))
    level = float(values[0])
    for t, value in enumerate(values):
        level += alpha * (value - level)
        out[t] = level
    return out


def _timestamps(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) str: trial onsets, about one per second from a random start, ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    start = datetime(2022, 1, 3, 9) + timedelta(days=int(rng.integers(0, 365)), minutes=int(rng.integers(0, 480)))
    onsets = np.cumsum(rng.uniform(0.9, 1.2, size=n))
    return np.array([(start + timedelta(seconds=float(s))).isoformat(sep=" ", timespec="microseconds") for s in onsets])


def simulate_session(rng: np.random.Generator, n_trials: int, state: np.ndarray | None = None) -> Behaviour:
    """One session of ``n_trials`` trials in time order.

    ``state`` (n_trials,): the latent arousal state of ``history.py`` (unit std), if it is on; the pupil
    dilates with it (``PUPIL_PER_STATE``), so part of that state is observable. It changes no random draw.
    """
    running = _running_state(rng, n_trials)
    speed = np.where(
        running,
        np.clip(rng.uniform(12.0, 25.0) + _ar1(rng, n_trials, tau=10.0, std=5.0), 2.0, None),
        np.abs(rng.normal(0.0, 0.3, n_trials)),
    )
    arousal = _smooth(running.astype(float), AROUSAL_TAU)
    pupil = rng.uniform(18.0, 26.0) + 10.0 * arousal + _ar1(rng, n_trials, tau=40.0, std=2.5)
    if state is not None:
        pupil = pupil + PUPIL_PER_STATE * state
    pupil = np.clip(pupil + rng.normal(0.0, 0.4, n_trials), 5.0, None)
    dpupil = np.diff(pupil, prepend=pupil[0])
    eye_rest = np.array([rng.uniform(200.0, 300.0), rng.uniform(150.0, 250.0)])
    saccades = rng.normal(0.0, 4.0, (n_trials, 2)) * (rng.random((n_trials, 1)) < 0.05)
    drift = np.stack([_ar1(rng, n_trials, tau=30.0, std=3.0) for _ in range(2)], axis=1)
    eye = np.empty((n_trials, 2))
    offset = np.zeros(2)
    for t in range(n_trials):  # saccade offsets decay back to rest over ~20 trials
        offset = 0.95 * offset + saccades[t]
        eye[t] = offset
    pupil_center = eye_rest + drift + eye
    behavior = np.stack([pupil, dpupil, speed], axis=1)
    return Behaviour(
        behavior=behavior.astype(np.float32),
        pupil_center=pupil_center.astype(np.float32),
        timestamps=_timestamps(rng, n_trials),
    )


def rf_shifts(rng: np.random.Generator, pupil_center: np.ndarray, shift_std: float = SHIFT_STD) -> np.ndarray:
    """(N, 2) shift (x, y) in height units of all receptive fields of each trial, from the eye position.

    A fixed random linear map of the z-scored pupil center (a rotated, slightly anisotropic gain) whose
    output has a std of about ``shift_std`` per axis: the same for all neurons of the trial.
    """
    z = (pupil_center - pupil_center.mean(axis=0)) / (pupil_center.std(axis=0) + 1e-8)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    gain = rotation * rng.uniform(0.8, 1.2, size=2) * shift_std
    return (z.astype(np.float64) @ gain.T).astype(np.float32)
