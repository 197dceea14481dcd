"""The ground-truth folder of one scan: what the released data withholds or never contains.

``<ground_truth_dir>/<key>/``::

    responses.npy                 (N, n) float32  true noisy responses of every tier, raw units, file order
    expected.npy                  (N, n) float32  noise-free expected responses, raw units, file order
    ground_truth_live_test.csv    official format, column ``responses``, standardised units (tier test)
    ground_truth_final_test.csv   the same for tier final_test (competition scans only)
    oracle.json                   tier -> {single_trial_correlation, correlation_to_average}
    history_gain.npy              (N, n) float32  history and state gain of every trial, file order  } history
    history.json                  effect sizes (``history.history_report``)                         } effects on

Standardised units are the loader's: raw / per-neuron std of ``meta/statistics/responses/all/std.npy``,
with every std below 1% of the mean std replaced by that threshold (SENSORIUM.md §1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sensorium.atomic import write_text
from sensorium.data.normalization import response_precision
from sensorium.submission import GROUND_TRUTH_FILES, write_submission


def write_ground_truth(
    folder: Path,
    responses: np.ndarray,
    expected: np.ndarray,
    trials: dict[str, np.ndarray],
    unit_ids: np.ndarray,
    response_std: np.ndarray,
    oracle: dict[str, dict[str, float]],
) -> Path:
    """Write ``folder`` as described in the module docstring and return it.

    responses, expected (N, n) raw, in file order; trials: the scan's meta/trials arrays (N,);
    unit_ids (n,); response_std (n,) the std written to the scan's statistics.
    """
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "responses.npy", responses.astype(np.float32))
    np.save(folder / "expected.npy", expected.astype(np.float32))
    precision = response_precision(response_std)
    for tier, name in GROUND_TRUTH_FILES.items():
        rows = np.flatnonzero(trials["tiers"] == tier)
        if len(rows):
            write_submission(
                folder / name,
                trials["trial_idx"][rows],
                trials["frame_image_id"][rows],
                unit_ids,
                responses[rows] * precision,
                column="responses",
            )
    write_text(folder / "oracle.json", json.dumps(oracle, indent=2, sort_keys=True) + "\n")
    return folder


def write_history(folder: Path, gains: np.ndarray, report: dict[str, Any]) -> None:
    """Write ``history_gain.npy`` (gains (N, n), file order) and ``history.json`` (``report``) into ``folder``."""
    np.save(folder / "history_gain.npy", gains.astype(np.float32))
    write_text(folder / "history.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
