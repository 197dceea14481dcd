"""Expected (noise-free) rates and noisy single-trial responses of a population to a scan's trials.

Per trial t and neuron n::

    stim[t, n]  = normalised Gabor drive of the image, seen through RFs shifted by the trial's eye position
    gain[t, n]  = exp(run_gain[n] * running_z[t] + pupil_gain[n] * pupil_z[t])
    rate[t, n]  = baseline[n] * (1 + run_offset[n] * tanh(running_z[t])) + s * amplitude[n] * gain[t, n] * stim[t, n]
    response    = sum of Poisson(rate / event_size) events, each Gamma-distributed with mean event_size

so responses are non-negative, often exactly zero (sparse), and their mean is exactly ``rate``. The work
runs in chunks of neurons: memory is about (trials x pixels) + (trials x neurons) float32. With history and
state effects on, ``feedforward_rates`` gives this rate and ``history.py`` multiplies it by a gain and draws
the noise trial by trial in session order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from sensorium.data.synth.population import Population, gabor_filters

EVENT_SHAPE = 2.0  # Gamma shape of one response event (smaller = more variable event sizes)
NEURON_CHUNK = 128


def shifted_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(N, H * W) float32: each (H, W) image translated so that every RF of trial t moves by ``shifts[t]``.

    ``shifts`` (N, 2) is (x, y) in height units. An RF moved by +d sees the pixel content at +d, which is
    the image moved by -d (bilinear, edge pixels repeated).
    """
    n, height, width = images.shape
    out = np.empty((n, height * width), dtype=np.float32)
    for t in range(n):
        offset = (-shifts[t, 1] * height, -shifts[t, 0] * height)  # (rows, cols) in pixels
        out[t] = ndimage.shift(images[t].astype(np.float32), offset, order=1, mode="nearest").ravel()
    return out


def _zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-8)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def stimulus_drive(pixels: np.ndarray, pop: Population, height: int, width: int, neurons: slice) -> np.ndarray:
    """(N, k) float32 drive of ``neurons`` to (N, height * width) images, mean 1 over the N trials.

    Simple cells: the half-wave rectified even-Gabor response; complex cells: the energy of the quadrature
    pair. Both are scaled by their std over trials first, so the drive is independent of resolution.
    """
    even, odd = gabor_filters(pop, neurons, height, width)
    linear_even = pixels @ even
    linear_even /= linear_even.std(axis=0) + 1e-8
    drive = np.maximum(linear_even, 0.0)
    complex_cells = pop.complex[neurons]
    if complex_cells.any():  # the quadrature filter only where it is needed
        linear_odd = pixels @ odd[:, complex_cells]
        linear_odd /= linear_odd.std(axis=0) + 1e-8
        drive[:, complex_cells] = np.sqrt(linear_even[:, complex_cells] ** 2 + linear_odd**2)
    return drive / (drive.mean(axis=0) + 1e-8)


def _rate_inputs(
    images: np.ndarray, behavior: np.ndarray, shifts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifted pixels (N, H * W) float32 and the z-scored running speed and pupil dilation (N, 1) float64."""
    pixels = shifted_images(images, shifts)
    running_z = _zscore(behavior[:, 2].astype(np.float64))[:, None]
    pupil_z = _zscore(behavior[:, 0].astype(np.float64))[:, None]
    return pixels, running_z, pupil_z


def _chunk_rate(
    pixels: np.ndarray,
    running_z: np.ndarray,
    pupil_z: np.ndarray,
    pop: Population,
    shape: tuple[int, int],
    signal_strength: float,
    neurons: slice,
) -> np.ndarray:
    """(N, k) float64 expected rate of ``neurons`` from stimulus and behaviour (the module docstring's rate)."""
    stim = stimulus_drive(pixels, pop, *shape, neurons)
    gain = np.exp(pop.run_gain[neurons] * running_z + pop.pupil_gain[neurons] * pupil_z)
    offset = pop.baseline[neurons] * (1.0 + pop.run_offset[neurons] * np.tanh(running_z))
    return offset + signal_strength * pop.amplitude[neurons] * gain * stim


def draw_noise(rng: np.random.Generator, rate: np.ndarray, event_size: np.ndarray) -> np.ndarray:
    """Noisy responses of the rates ``rate`` (..., k): Poisson(rate / event_size) Gamma-sized events, mean ``rate``."""
    events = rng.poisson(rate / event_size)
    return rng.gamma(events * EVENT_SHAPE, event_size / EVENT_SHAPE)


def simulate_responses(
    rng: np.random.Generator,
    pop: Population,
    images: np.ndarray,
    behavior: np.ndarray,
    shifts: np.ndarray,
    signal_strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected rates and noisy responses, both (N, n) float32, for (N, H, W) images, trials independent.

    ``behavior`` (N, 3): pupil dilation, derivative, running speed; ``shifts`` (N, 2) RF shift per trial in
    height units. The rng draws the noise, neuron chunk by neuron chunk, so results do not depend on
    anything but the inputs.
    """
    n_trials, height, width = images.shape
    pixels, running_z, pupil_z = _rate_inputs(images, behavior, shifts)
    expected = np.empty((n_trials, pop.n), dtype=np.float32)
    noisy = np.empty((n_trials, pop.n), dtype=np.float32)
    for neurons in _chunks(pop.n, NEURON_CHUNK):
        rate = _chunk_rate(pixels, running_z, pupil_z, pop, (height, width), signal_strength, neurons)
        expected[:, neurons] = rate
        noisy[:, neurons] = draw_noise(rng, rate, pop.event_size[neurons])
    return expected, noisy


def feedforward_rates(
    pop: Population, images: np.ndarray, behavior: np.ndarray, shifts: np.ndarray, signal_strength: float
) -> np.ndarray:
    """(N, n) float32: the expected rates of ``simulate_responses`` without drawing noise — the input of the
    trial-by-trial simulation with history and state effects (``history.simulate_history``)."""
    n_trials, height, width = images.shape
    pixels, running_z, pupil_z = _rate_inputs(images, behavior, shifts)
    rates = np.empty((n_trials, pop.n), dtype=np.float32)
    for neurons in _chunks(pop.n, NEURON_CHUNK):
        rates[:, neurons] = _chunk_rate(pixels, running_z, pupil_z, pop, (height, width), signal_strength, neurons)
    return rates
