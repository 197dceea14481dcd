"""The keys of a trial's results (Tune's ``result.json``, one row per report): what the trainable
(``search.raytune.trainable``) writes and what the readers (``results``, ``study``, the searcher, the stopper)
read. Plain names, no Ray.
"""

from __future__ import annotations

from typing import Any

from sensorium.training.rundir import CURVE_FIELDS

# What a trial reports per epoch: fit's metrics, the trial process's memory (memory_mb) and, on a GPU, the most
# memory torch reserved on the card (the part the memory cap limits: runtime.gpu_memory).
TRIAL_METRICS = (*CURVE_FIELDS, "rss_mb", "private_mb", "peak_gpu_reserved_mb")
TRIAL_ERROR = "trial_error"  # result key of a trial's own failure: its reason (one line)
FIT_DONE = "fit_done"  # result key of a trial whose fit ended by itself (early stopping or max_epochs): its epochs
# Result keys of a trial whose training finished but something after it failed (the trial stands, with its
# scores and checkpoint): fit's final scoring (recorded in metrics.json), and the trainable's own steps after fit.
SCORING_ERROR = "scoring_error"
AFTER_TRAINING_ERROR = "after_training_error"


def ran_to_end(last_result: dict[str, Any], max_t: int) -> bool:
    """True when a trial that stopped was not cut short: its fit ended by itself (early stopping or
    max_epochs: its last result carries FIT_DONE) or it reached ASHA's max_t (where ASHA always stops)."""
    epochs = last_result.get("epoch")
    return FIT_DONE in last_result or (isinstance(epochs, (int, float)) and epochs >= max_t)
