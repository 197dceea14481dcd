"""History and state effects: a neuron's gain on a trial depends on what came before it in the session.

Three multiplicative gains, each off at 0 (``SynthConfig.adaptation``, ``drift``, ``arousal``), act on the
stimulus-and-behaviour rate of ``responses.py`` (``feedforward``), trial by trial in session order::

    rate[t, n]    = gain[t, n] * feedforward[t, n]
    gain[t, n]    = (1 + a[n]) / (1 + a[n] * trace[t, n]) * exp(drift[t, n] + arousal[t, n])
    trace[t, n]   = rho[n] * trace[t-1, n] + (1 - rho[n]) * response[t-1, n] / mean_rate[n],   trace[0, n] = 1
    drift[t, n]   = w0[n] * slow0[t] + w1[n] * slow1[t]
    arousal[t, n] = loading[n] * state[t],   state[t] = 0.8 * state[t-1] + innovation (unit std)

Adaptation: ``trace`` is an exponentially weighted mean of the neuron's own previous noisy responses in
units of its mean rate (time constant ``tau[n] = -1 / log(rho[n])``, log-uniform 1-5 trials); after an
average history the gain is 1, after silence ``1 + a[n]``, after a burst below 1. ``a[n]`` is Gamma-distributed
around ``cfg.adaptation``. Drift: two smooth signals over the session (a few slow cosines, unit std), the
first shared with mostly positive weights, the second with either sign; the log-gain std is about
``cfg.drift``. Arousal: a latent AR(1) state over consecutive trials with per-neuron loadings around
``cfg.arousal`` (mostly positive); pupil dilation carries part of it (``behaviour.simulate_session``).

The response of trial t is drawn after its rate, so it depends on earlier trials only (through ``trace``),
on the session time (drift) and on the latent state; ``expected`` is that conditional rate — the noise-free
truth the oracle predicts with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sensorium import metrics
from sensorium.data.synth.config import SynthConfig
from sensorium.data.synth.responses import draw_noise

TAU_RANGE = (1.0, 5.0)  # adaptation time constants, trials (log-uniform)
AROUSAL_RHO = 0.8  # AR(1) coefficient of the latent arousal state between consecutive trials
SLOW_COSINES = 4  # cosines summed into each slow drift signal
SLOW_CYCLES = (0.25, 2.5)  # their frequencies, cycles per session
TERMS = ("adaptation", "drift", "arousal")
WITH_WITHOUT = ("with_history", "without_history")
REPORT_CHUNK = 1000  # neurons per float64 chunk of the report


@dataclass
class History:
    """The history and state parameters of one scan's n neurons over its N trials (session order).

    strength, rho (n,): adaptation strength a[n] and trace decay per trial; drift_weights (2, n) and
    slow (N, 2): the drift's loadings and its two unit-std signals; loading (n,) and state (N,): the arousal
    loadings and the latent state (unit std). Zero strengths / weights / loadings where an effect is off.
    """

    strength: np.ndarray
    rho: np.ndarray
    drift_weights: np.ndarray
    slow: np.ndarray
    loading: np.ndarray
    state: np.ndarray

    def log_gain(self, term: str, neurons: slice = slice(None)) -> np.ndarray:
        """(N, k) natural-log gain of the drift or arousal term for ``neurons`` (the adaptation term depends
        on the responses: ``adaptation_log_gain``)."""
        if term == "drift":
            return self.slow @ self.drift_weights[:, neurons]
        if term == "arousal":
            return self.state[:, None] * self.loading[None, neurons]
        raise ValueError(f"log_gain: term {term!r} is one of drift, arousal")


def _ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """(n,) stationary AR(1) with coefficient ``rho`` and unit std."""
    innovations = rng.standard_normal(n) * np.sqrt(1.0 - rho**2)
    values = np.empty(n)
    values[0] = rng.standard_normal()
    for t in range(1, n):
        values[t] = rho * values[t - 1] + innovations[t]
    return values


def _slow_signal(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) smooth zero-mean unit-std signal over the session: a few slow cosines with 1/f amplitudes."""
    x = (np.arange(n) + 0.5) / n  # session fraction (trials are about evenly spaced in time)
    cycles = rng.uniform(*SLOW_CYCLES, size=SLOW_COSINES)
    amplitude = rng.standard_normal(SLOW_COSINES) / cycles
    phase = rng.uniform(0, 2 * np.pi, size=SLOW_COSINES)
    signal = (amplitude * np.cos(2 * np.pi * cycles * x[:, None] + phase)).sum(axis=1)
    return (signal - signal.mean()) / (signal.std() + 1e-8)


def sample_history(rng: np.random.Generator, cfg: SynthConfig, n_neurons: int, n_trials: int) -> History:
    """Random history and state parameters for one scan; every draw is made whatever the settings, so
    switching one effect on or off leaves the others' values unchanged."""
    strength = cfg.adaptation * rng.gamma(4.0, 0.25, size=n_neurons)  # mean cfg.adaptation, CV 0.5
    tau = np.exp(rng.uniform(*np.log(TAU_RANGE), size=n_neurons))
    weights = np.stack([rng.normal(1.0, 0.5, size=n_neurons), rng.normal(0.0, 0.7, size=n_neurons)])
    weights *= cfg.drift / np.sqrt(1.0**2 + 0.5**2 + 0.7**2)  # mean square weight cfg.drift**2
    slow = np.stack([_slow_signal(rng, n_trials), _slow_signal(rng, n_trials)], axis=1)
    loading = cfg.arousal * rng.normal(1.0, 0.4, size=n_neurons) / np.sqrt(1.0 + 0.4**2)
    state = _ar1(rng, n_trials, AROUSAL_RHO)
    return History(
        strength=strength, rho=np.exp(-1.0 / tau), drift_weights=weights, slow=slow, loading=loading, state=state
    )


def simulate_history(
    rng: np.random.Generator,
    feedforward: np.ndarray,
    mean_rate: np.ndarray,
    event_size: np.ndarray,
    history: History,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected rates, noisy responses and gains, all (N, n) float32, trial by trial in session order.

    ``feedforward`` (N, n): the stimulus-and-behaviour rates (``responses.feedforward_rates``), rows in
    session order; ``mean_rate`` (n,): each neuron's typical rate, the unit of its adaptation trace (a
    property of the neuron: the writer passes the mean of ``feedforward``); ``event_size`` (n,). Trial t's
    noise is drawn from ``rng`` after all of trial t-1's, so nothing of a later trial (its rate or its noise)
    changes an earlier one.
    """
    n_trials, n = feedforward.shape
    a, rho = history.strength, history.rho
    expected = np.empty((n_trials, n), dtype=np.float32)
    noisy = np.empty((n_trials, n), dtype=np.float32)
    gains = np.empty((n_trials, n), dtype=np.float32)
    trace = np.ones(n)
    for t in range(n_trials):
        log_state = history.slow[t] @ history.drift_weights + history.state[t] * history.loading
        gain = (1.0 + a) / (1.0 + a * trace) * np.exp(log_state)
        rate = gain * feedforward[t]
        response = draw_noise(rng, rate, event_size)
        expected[t], noisy[t], gains[t] = rate, response, gain
        trace = rho * trace + (1.0 - rho) * response / mean_rate
    return expected, noisy, gains


def history_report(
    expected: np.ndarray,
    noisy: np.ndarray,
    gains: np.ndarray,
    history: History,
    tiers: np.ndarray,
    cfg: SynthConfig,
) -> dict[str, Any]:
    """How large the history and state effects of one scan are (``history.json``).

    expected, noisy, gains (N, n) and tiers (N,) in session order. ``log_gain_std``: per term and in total,
    the std over trials of the natural-log gain, averaged over neurons. Per tier: the single-trial
    correlation with the responses of the true conditional rate (the oracle) and of the rate without any
    history or state gain (stimulus and behaviour only), and their mean squares (the share of the
    responses' variance each explains); the difference is the most a model can gain from history.
    """
    per_neuron: dict[str, list[np.ndarray]] = {}
    for start in range(0, expected.shape[1], REPORT_CHUNK):  # float64 copies of a few chunks at a time
        neurons = slice(start, start + REPORT_CHUNK)
        log_gain = np.log(gains[:, neurons].astype(np.float64))
        drift, arousal = history.log_gain("drift", neurons), history.log_gain("arousal", neurons)
        terms = {"adaptation": log_gain - drift - arousal, "drift": drift, "arousal": arousal, "total": log_gain}
        for name, values in terms.items():
            per_neuron.setdefault(f"std/{name}", []).append(values.std(axis=0))
        without = expected[:, neurons] / gains[:, neurons]
        for tier in dict.fromkeys(tiers.tolist()):
            rows = tiers == tier
            for which, rate in (("with_history", expected[:, neurons]), ("without_history", without)):
                per_neuron.setdefault(f"{tier}/{which}", []).append(metrics.corr(rate[rows], noisy[rows, neurons]))
    values = {key: np.concatenate(parts) for key, parts in per_neuron.items()}
    return {
        "settings": {name: getattr(cfg, name) for name in TERMS},
        "log_gain_std": {name: float(values[f"std/{name}"].mean()) for name in (*TERMS, "total")},
        "tiers": {
            tier: {
                "single_trial_correlation": {w: float(values[f"{tier}/{w}"].mean()) for w in WITH_WITHOUT},
                "variance_explained": {w: float((values[f"{tier}/{w}"] ** 2).mean()) for w in WITH_WITHOUT},
            }
            for tier in dict.fromkeys(tiers.tolist())
        },
    }


def summarise_history(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over scans of every number of their ``history_report`` (a tier: over the scans that have it)."""

    def mean(items: list[Any]) -> Any:
        if isinstance(items[0], dict):
            keys = dict.fromkeys(k for item in items for k in item)
            return {k: mean([item[k] for item in items if k in item]) for k in keys}
        return float(np.mean(items))

    scans = list(reports.values())
    return {"settings": scans[0]["settings"], **mean([{k: r[k] for k in ("log_gain_std", "tiers")} for r in scans])}
