"""The response-scaling rule of neuralpredictors' ``NeuroNormalizer`` (SENSORIUM.md §1), in one place.

Used by the loader (``ScanData``) and by the synthetic ground truth, so that ground-truth CSVs are in
exactly the units the model predicts. NumPy only: importing it does not pull in torch.
"""

from __future__ import annotations

import numpy as np


def response_precision(std: np.ndarray) -> np.ndarray:
    """(n,) float32 factor per neuron: ``1 / std``, or ``1 / threshold`` where std is below the threshold.

    ``threshold = 0.01 * mean(std)``: a near-silent neuron is divided by 1% of the mean std instead of by
    its own tiny std. ``raw * response_precision(std)`` gives the standardised responses.
    """
    std = np.asarray(std, dtype=np.float32)
    threshold = np.float32(0.01 * std.mean())
    return (1 / np.maximum(std, threshold)).astype(np.float32)
