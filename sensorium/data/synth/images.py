"""Natural-looking grayscale stimuli: crops of scikit-image's bundled photographs, optionally mixed with 1/f noise.

Every image is a pure function of ``(seed, image_id, height, width, noise_mix)``: the live-test images are
therefore identical in every scan that shows the same ``frame_image_id``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage import color, data

# Photographs shipped inside scikit-image (no download needed).
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "clock", "brick", "grass", "gravel")
MIN_CROP = 0.35  # smallest crop, as a fraction of the largest crop of the output's aspect ratio that fits
_IMAGE_STREAM = 1  # SeedSequence tag of the image stream (other streams use other tags)


@lru_cache(maxsize=1)
def photo_pyramids() -> tuple[tuple[np.ndarray, ...], ...]:
    """Each photograph as grayscale float32 0-255, with successive blurred half-size copies (level L = 2**-L)."""
    pyramids = []
    for name in PHOTOS:
        photo = getattr(data, name)()
        if photo.ndim == 3:
            photo = color.rgb2gray(photo[..., :3]) * 255.0
        level = np.asarray(photo, dtype=np.float32)
        levels = [level]
        while min(level.shape) >= 32:
            level = ndimage.gaussian_filter(level, sigma=1.0, mode="reflect")[::2, ::2]
            levels.append(level)
        pyramids.append(tuple(levels))
    return tuple(pyramids)


def _linear_sample(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` at fractional indices ``coords`` along ``axis`` (edges clamped)."""
    size = values.shape[axis]
    coords = np.clip(coords, 0.0, size - 1.0)
    low = np.minimum(np.floor(coords).astype(np.int64), size - 2) if size > 1 else np.zeros(coords.shape, np.int64)
    weight = (coords - low).astype(np.float32)
    high = np.minimum(low + 1, size - 1)
    shape = [1, 1]
    shape[axis] = -1
    weight = weight.reshape(shape)
    return np.take(values, low, axis=axis) * (1.0 - weight) + np.take(values, high, axis=axis) * weight


def pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width) float32 noise with a 1/f amplitude spectrum, zero mean and unit std."""
    white = np.fft.rfft2(rng.standard_normal((height, width)))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = np.inf  # no DC component
    noise = np.fft.irfft2(white / radius, s=(height, width))
    return ((noise - noise.mean()) / noise.std()).astype(np.float32)


def crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a random photograph, rescaled to (height, width), flipped left-right half the time.

    The crop keeps the output's aspect ratio; its size is uniform between ``MIN_CROP`` and 1 of the
    largest that fits. Downscaling reads a pre-blurred pyramid level, so fine detail does not alias.
    Returns float32 pixel values 0-255.
    """
    levels = photo_pyramids()[rng.integers(len(PHOTOS))]
    photo_h, photo_w = levels[0].shape
    largest = min(photo_h, photo_w * height / width)
    crop_h = largest * rng.uniform(MIN_CROP, 1.0)
    crop_w = crop_h * width / height
    top = rng.uniform(0.0, photo_h - crop_h)
    left = rng.uniform(0.0, photo_w - crop_w)
    step = crop_h / height  # photo pixels per output pixel
    level = min(int(np.floor(np.log2(max(step, 1.0)))), len(levels) - 1)
    source = levels[level]
    scale = 2.0**level
    rows = (top + (np.arange(height) + 0.5) * step) / scale - 0.5
    cols = (left + (np.arange(width) + 0.5) * step) / scale - 0.5
    if rng.random() < 0.5:
        cols = cols[::-1]
    return _linear_sample(_linear_sample(source, rows, axis=0), cols, axis=1)


def make_image(seed: int, image_id: int, height: int, width: int, noise_mix: float) -> np.ndarray:
    """The stimulus with id ``image_id``: (height, width) uint8, 0-255.

    A photograph crop, mixed with 1/f noise of the same mean and contrast at a random weight in
    ``[0, noise_mix]``.
    """
    rng = np.random.default_rng([seed, _IMAGE_STREAM, int(image_id)])
    image = crop(rng, height, width)
    weight = rng.uniform(0.0, noise_mix)
    if weight > 0:
        noise = image.mean() + image.std() * pink_noise(rng, height, width)
        image = (1.0 - weight) * image + weight * noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def make_images(
    seed: int, image_ids: np.ndarray, height: int, width: int, noise_mix: float
) -> dict[int, np.ndarray]:
    """``make_image`` for each distinct id: id -> (height, width) uint8."""
    return {int(i): make_image(seed, int(i), height, width, noise_mix) for i in np.unique(image_ids)}
