"""The ground-truth neurons of one scan: where they sit in cortex, what they see, how behaviour modulates them.

Positions are given in "height units": the image spans ``y`` in [0, 1] (top to bottom) and ``x`` in
[0, width/height] (left to right), independent of the pixel resolution; filters are evaluated on the
stored pixel grid, but their sizes are set so that they stay visible at the models' 36x64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH_MICRONS = 700.0  # side of the imaged cortical patch
RF_SPAN = 0.3  # half-extent of the retinotopic map, in height units (vertical) / aspect-scaled (horizontal)
RF_SCATTER = 0.03  # std of the RF centre scatter around the smooth map, height units
WAVELENGTH = (0.17, 0.45)  # Gabor carrier wavelength, height units (6-16 px at 36x64)
SIGMA_PER_WAVELENGTH = (0.3, 0.5)  # envelope std / wavelength


@dataclass
class Population:
    """n neurons. All arrays (n,) unless noted; positions in height units, angles in radians.

    coordinates (n, 3): cortical x, y, z in microns. centre (n, 2): RF centre x, y.
    complex: Gabor-energy (True) or rectified-Gabor (False) cell. amplitude: stimulus-driven rate at mean
    drive; baseline: rate without stimulus; run_gain / pupil_gain: log-gain per std of running speed /
    pupil dilation; run_offset: relative change of the baseline per unit tanh(running z-score);
    event_size: mean size of one response event (sets the noise level).
    """

    coordinates: np.ndarray
    centre: np.ndarray
    orientation: np.ndarray
    wavelength: np.ndarray
    sigma: np.ndarray
    aspect: np.ndarray
    phase: np.ndarray
    complex: np.ndarray
    amplitude: np.ndarray
    baseline: np.ndarray
    run_gain: np.ndarray
    pupil_gain: np.ndarray
    run_offset: np.ndarray
    event_size: np.ndarray

    @property
    def n(self) -> int:
        return len(self.centre)


def _retinotopy(rng: np.random.Generator, xy: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """(n, 2) RF centres from (n, 2) cortical x, y: a rotated, gently warped map plus scatter."""
    unit = (xy - xy.mean(axis=0)) / (PATCH_MICRONS / 2)  # about [-1, 1]
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    u, v = (unit @ rotation.T).T
    warp = rng.uniform(-0.15, 0.15, size=2)
    u, v = u + warp[0] * v**2, v + warp[1] * u**2
    centre = np.stack([aspect_ratio / 2 + RF_SPAN * aspect_ratio * u, 0.5 + RF_SPAN * v], axis=1)
    centre += rng.normal(0.0, RF_SCATTER, size=centre.shape)
    margin = 0.08
    centre[:, 0] = np.clip(centre[:, 0], margin, aspect_ratio - margin)
    centre[:, 1] = np.clip(centre[:, 1], margin, 1 - margin)
    return centre


def sample_population(
    rng: np.random.Generator, n: int, aspect_ratio: float, complex_fraction: float, weak_fraction: float
) -> Population:
    """n random neurons for an image of ``aspect_ratio`` = width / height."""
    depth_planes = np.array([200.0, 250.0, 300.0, 350.0]) + rng.uniform(-20, 20)
    xy = rng.uniform(-PATCH_MICRONS / 2, PATCH_MICRONS / 2, size=(n, 2)) + rng.uniform(-800, 800, size=2)
    z = rng.choice(depth_planes, size=n) + rng.normal(0.0, 3.0, size=n)
    coordinates = np.column_stack([xy, z])
    wavelength = np.exp(rng.uniform(*np.log(WAVELENGTH), size=n))
    weak = rng.random(n) < weak_fraction
    amplitude = rng.lognormal(np.log(1.2), 0.35, size=n) * np.where(weak, rng.uniform(0.05, 0.2, size=n), 1.0)
    return Population(
        coordinates=coordinates,
        centre=_retinotopy(rng, xy, aspect_ratio),
        orientation=rng.uniform(0, np.pi, size=n),
        wavelength=wavelength,
        sigma=wavelength * rng.uniform(*SIGMA_PER_WAVELENGTH, size=n),
        aspect=rng.uniform(0.6, 1.0, size=n),
        phase=rng.uniform(0, 2 * np.pi, size=n),
        complex=rng.random(n) < complex_fraction,
        amplitude=amplitude,
        baseline=rng.lognormal(np.log(0.25), 0.4, size=n),
        run_gain=rng.normal(0.2, 0.12, size=n),
        pupil_gain=rng.normal(0.1, 0.1, size=n),
        run_offset=rng.uniform(-0.5, 0.8, size=n),
        event_size=rng.lognormal(np.log(5.0), 0.3, size=n),
    )


def gabor_filters(pop: Population, neurons: slice, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Even and odd (quadrature) Gabor filters of ``neurons`` on the (height, width) pixel grid.

    Returns two (height * width, k) float32 arrays, each column zero-mean with unit L2 norm, so that
    ``images (N, height * width) @ filters`` gives linear responses free of mean luminance.
    """
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None, None]  # pixel centres, height units
    x = ((np.arange(width, dtype=np.float32) + 0.5) / height)[None, :, None]
    params = {
        name: getattr(pop, name)[neurons].astype(np.float32)
        for name in ("orientation", "wavelength", "sigma", "aspect", "phase")
    }
    cx, cy = pop.centre[neurons].astype(np.float32).T
    cos, sin = np.cos(params["orientation"]), np.sin(params["orientation"])
    along = (x - cx) * cos + (y - cy) * sin  # (H, W, k), across the stripes
    across = -(x - cx) * sin + (y - cy) * cos
    envelope = np.exp(-(along**2 + (params["aspect"] * across) ** 2) / (2 * params["sigma"] ** 2))
    envelope = envelope.reshape(height * width, -1)
    carrier = (2 * np.pi * along / params["wavelength"] + params["phase"]).reshape(height * width, -1)
    filters = []
    for wave in (np.cos(carrier), np.sin(carrier)):
        f = envelope * wave
        f -= envelope * (f.sum(axis=0) / envelope.sum(axis=0))  # remove the DC component
        f /= np.linalg.norm(f, axis=0) + 1e-12
        filters.append(f)
    return filters[0], filters[1]
