"""The oracle: how well the noise-free expected responses predict the noisy ones — the ceiling of any model.

Correlations are scale-free per neuron, so raw and standardised units give the same values.
"""

from __future__ import annotations

import numpy as np

from sensorium import metrics
from sensorium.data.format import TIERS

ORACLE_METRICS = ("single_trial_correlation", "correlation_to_average")
NEURON_CHUNK = 1000  # the metrics work in float64: chunks keep a full-size scan's memory bounded


def scan_oracle(
    expected: np.ndarray, responses: np.ndarray, tiers: np.ndarray, image_ids: np.ndarray
) -> dict[str, dict[str, float]]:
    """tier -> {single_trial_correlation, correlation_to_average} for every tier present.

    expected, responses (N, n); tiers, image_ids (N,). In the train and validation tiers every image is
    shown once, so there the correlation to average equals the single-trial correlation.
    """
    oracle: dict[str, dict[str, float]] = {}
    for tier in TIERS:
        rows = np.flatnonzero(tiers == tier)
        if len(rows) == 0:
            continue
        single, average = [], []
        for start in range(0, expected.shape[1], NEURON_CHUNK):
            pred = expected[rows, start : start + NEURON_CHUNK]
            resp = responses[rows, start : start + NEURON_CHUNK]
            single.append(metrics.single_trial_correlation(pred, resp, per_neuron=True))
            average.append(metrics.correlation_to_average(pred, resp, image_ids[rows], per_neuron=True))
        oracle[tier] = {
            "single_trial_correlation": float(np.concatenate(single).mean()),
            "correlation_to_average": float(np.concatenate(average).mean()),
        }
    return oracle


def summarise(oracles: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """tier -> metric -> mean over the scans that have that tier."""
    summary: dict[str, dict[str, float]] = {}
    for tier in TIERS:
        values = [scan[tier] for scan in oracles.values() if tier in scan]
        if values:
            summary[tier] = {m: float(np.mean([v[m] for v in values])) for m in ORACLE_METRICS}
    return summary


def format_table(oracles: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per scan and tier."""
    lines = [f"{'scan':<14} {'tier':<11} {'single-trial corr':>17} {'corr to average':>15}"]
    for key, scan in oracles.items():
        for tier, values in scan.items():
            lines.append(
                f"{key:<14} {tier:<11} {values['single_trial_correlation']:>17.3f} "
                f"{values['correlation_to_average']:>15.3f}"
            )
    return "\n".join(lines)
