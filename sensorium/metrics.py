"""The official SENSORIUM 2022 scores as pure NumPy functions (SENSORIUM.md §4).

All arrays are ``(trials, neurons)``: ``pred`` and ``resp`` hold one row per trial of one tier, in the
same row and column order, in the loader's standardised response units (the scores are computed there,
and FEVE is not scale-free). ``image_ids`` ``(trials,)`` groups the repeated presentations of an image.
Every score is computed per neuron and then averaged over neurons (``per_neuron=True`` returns the
per-neuron values instead). Computation is in float64 whatever the input dtype.

>>> import numpy as np
>>> resp = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0]])
>>> round(single_trial_correlation(resp, resp), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCORE_NAMES = ("single_trial_correlation", "correlation_to_average", "feve")
FEV_THRESHOLD = 0.15


EPS = 1e-8  # added to every standard deviation before dividing by it


def zscore(a: np.ndarray, axis: int = 0, eps: float = EPS) -> np.ndarray:
    """``a`` standardised along ``axis`` as float64: minus its mean, over its population std (ddof 0) plus
    ``eps``. A constant input gives zeros, never NaN."""
    a = np.asarray(a, dtype=np.float64)
    return (a - a.mean(axis=axis, keepdims=True)) / (a.std(axis=axis, keepdims=True) + eps)


def corr(a: np.ndarray, b: np.ndarray, axis: int = 0, eps: float = EPS) -> np.ndarray:
    """Pearson correlation along ``axis``: z-score each with the population std (ddof 0) plus ``eps``,
    then the mean of the product.

    A constant input has a zero z-score, so its correlation is 0, never NaN. For ``(trials, neurons)``
    arrays and ``axis=0`` the result has shape ``(neurons,)``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"corr needs equal shapes, got {a.shape} and {b.shape}")
    return (zscore(a, axis, eps) * zscore(b, axis, eps)).mean(axis=axis)


def _check(pred: np.ndarray, resp: np.ndarray, image_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of ``pred`` and ``resp`` after checking they are (trials, neurons) of equal shape."""
    pred = np.asarray(pred, dtype=np.float64)
    resp = np.asarray(resp, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != resp.shape:
        raise ValueError(f"pred and resp must be (trials, neurons) of equal shape, got {pred.shape}, {resp.shape}")
    if pred.shape[0] < 2 or pred.shape[1] == 0:
        raise ValueError(f"scores need at least 2 trials and 1 neuron, got {pred.shape}")
    if image_ids is not None and np.shape(image_ids) != (pred.shape[0],):
        raise ValueError(f"image_ids must have shape ({pred.shape[0]},), got {np.shape(image_ids)}")
    return pred, resp


def _summarise(values: np.ndarray, per_neuron: bool) -> float | np.ndarray:
    return values if per_neuron else float(values.mean())


def _groups(image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by image id: (row order sorting trials by image, start of each group, group sizes)."""
    _, inverse, counts = np.unique(np.asarray(image_ids), return_inverse=True, return_counts=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def _image_means(values: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """(images, neurons) mean over the repeats of each image id, images in sorted id order."""
    order, starts, counts = _groups(image_ids)
    return np.add.reduceat(values[order], starts, axis=0) / counts[:, None]


def single_trial_correlation(pred: np.ndarray, resp: np.ndarray, per_neuron: bool = False) -> float | np.ndarray:
    """corr(prediction, response) over all trials, per neuron, then the mean over neurons."""
    pred, resp = _check(pred, resp)
    return _summarise(corr(pred, resp, axis=0), per_neuron)


def pooled_single_trial_correlation(preds: Sequence[np.ndarray], resps: Sequence[np.ndarray]) -> float:
    """Single-trial correlation of several scans as one population: per-neuron correlations in each scan
    (``preds[s]``, ``resps[s]`` are that scan's (trials, neurons)), then the mean over the neurons of all
    scans, so a scan weighs by its neuron count. The validation objective of fit and the search.
    """
    if len(preds) != len(resps) or not preds:
        raise ValueError(f"expected one response array per prediction array, got {len(preds)} and {len(resps)}")
    per_neuron = [single_trial_correlation(p, r, per_neuron=True) for p, r in zip(preds, resps)]
    return float(np.mean(np.concatenate(per_neuron)))


def correlation_to_average(
    pred: np.ndarray, resp: np.ndarray, image_ids: np.ndarray, per_neuron: bool = False
) -> float | np.ndarray:
    """Average responses and predictions over the repeats of each image id, then corr across images."""
    pred, resp = _check(pred, resp, image_ids)
    return _summarise(corr(_image_means(pred, image_ids), _image_means(resp, image_ids), axis=0), per_neuron)


def _variances(resp: np.ndarray, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(total_var, noise_var), each (neurons,).

    total_var: variance over all trials (ddof 1). noise_var: mean over images of the variance over that
    image's repeats (ddof 1). An image shown once has no repeat variance and is left out of the mean; if
    no image is repeated, noise_var is NaN.
    """
    order, starts, counts = _groups(image_ids)
    total_var = resp.var(axis=0, ddof=1)
    repeated = counts >= 2
    if not repeated.any():
        return total_var, np.full(resp.shape[1], np.nan)
    ordered = resp[order]
    means = np.add.reduceat(ordered, starts, axis=0) / counts[:, None]
    deviations = ordered - np.repeat(means, counts, axis=0)  # two-pass variance, no cancellation
    image_var = np.add.reduceat(deviations**2, starts, axis=0)[repeated] / (counts[repeated][:, None] - 1)
    return total_var, image_var.mean(axis=0)


def _fev(total_var: np.ndarray, noise_var: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (total_var - noise_var) / total_var
    return np.where(total_var > 0, values, np.where(np.isnan(noise_var), np.nan, 0.0))


def fev(resp: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Fraction of explainable variance per neuron, (total_var - noise_var) / total_var, shape (neurons,).

    A neuron with zero total variance (constant response) has nothing to explain: its FEV is 0.
    FEV is NaN only when no image is repeated (the noise cannot be estimated).
    """
    _, resp = _check(resp, resp, image_ids)
    return _fev(*_variances(resp, image_ids))


def feve(
    pred: np.ndarray,
    resp: np.ndarray,
    image_ids: np.ndarray,
    fev_threshold: float = FEV_THRESHOLD,
    per_neuron: bool = False,
) -> float | np.ndarray:
    """Fraction of explainable variance explained.

    Per neuron: ``1 - (mean((resp - pred)**2) - noise_var) / (total_var - noise_var)``, the mean taken
    over all trials. Averaged over the neurons with ``FEV >= fev_threshold`` only.

    Returns the mean FEVE as a float, or ``float('nan')`` when no neuron passes the FEV threshold (the
    score is undefined then; :func:`score_all` reports that NaN as is). With ``per_neuron=True`` it returns
    the FEVE of every neuron, shape (neurons,), NaN for the neurons below the threshold.
    """
    pred, resp = _check(pred, resp, image_ids)
    total_var, noise_var = _variances(resp, image_ids)
    with np.errstate(invalid="ignore", divide="ignore"):
        explainable = total_var - noise_var
        values = 1.0 - (((resp - pred) ** 2).mean(axis=0) - noise_var) / explainable
    passing = _fev(total_var, noise_var) >= fev_threshold  # NaN compares False
    if per_neuron:
        return np.where(passing, values, np.nan)
    return float(values[passing].mean()) if passing.any() else float("nan")


def score_all(pred: np.ndarray, resp: np.ndarray, image_ids: np.ndarray) -> dict[str, float]:
    """The three competition scores of one tier: single-trial correlation, correlation to average, FEVE.

    FEVE is ``nan`` when no neuron reaches FEV >= 0.15 (see :func:`feve`).
    """
    return {
        "single_trial_correlation": single_trial_correlation(pred, resp),
        "correlation_to_average": correlation_to_average(pred, resp, image_ids),
        "feve": feve(pred, resp, image_ids),
    }
