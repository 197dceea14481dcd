"""Inference: a model's predictions keyed by trial id and neuron id, and the official CSVs written from them
(the ``submit`` command is ``sensorium.submit``).

    >>> model, cfg = load_model("runs/baseline", torch.device("cpu"))           # doctest: +SKIP
    >>> pred = predict(model, data["27204-5-13"], "test", torch.device("cpu"))  # doctest: +SKIP
    >>> pred.values.shape == (len(pred.trial_ids), len(pred.neuron_ids))       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sensorium.data import ScanData
from sensorium.errors import UserError
from sensorium.models import SensoriumModel
from sensorium.memory import scoring_chunk

@dataclass
class Predictions:
    """Model outputs for the trials of some tiers of one scan, in ascending row order.

    values (T, n) and responses (T, n) are in the normalised response units the model is trained and
    scored in; ``responses`` are the recorded ones (zeros where a competition scan withholds them).
    Row t belongs to trial_ids[t] / image_ids[t] / rows[t]; column j to neuron_ids[j].
    """

    data_key: str
    trial_ids: np.ndarray  # (T,) trial_idx values (int or 32-hex str)
    image_ids: np.ndarray  # (T,) frame_image_id
    neuron_ids: np.ndarray  # (n,) unit_ids
    rows: np.ndarray  # (T,) row indices into the scan
    values: np.ndarray  # (T, n) float32 predicted responses
    responses: np.ndarray  # (T, n) float32 recorded responses


def predict(
    model: SensoriumModel,
    data: ScanData,
    tiers: str | Sequence[str],
    device: torch.device,
    batch_size: int = 0,
) -> Predictions:
    """Predict every trial of ``tiers`` of one scan: eval mode (readouts at their means), no grad.

    Runs in chunks of ``batch_size`` trials (0: 64 on a CPU; on a GPU the most whose tensors take no more
    memory than a training batch of 128, ``memory.scoring_chunk``, measured once per model);
    the recorded responses come from the host copy, never through the device. The model's train/eval
    mode is restored afterwards.
    """
    if data.key not in model.readout:
        raise UserError(f"scan {data.key} is not one of this model's scans {model.data_keys}")
    expected = model.core.input_channels
    if data.in_shape[0] != expected:
        raise UserError(
            f"scan {data.key}: batches have {data.in_shape[0]} channels but the model expects {expected} "
            "(data.behavior_channels differs from the one the model was trained with)"
        )
    was_training = model.training
    model.eval()
    values, rows = [], []
    with torch.no_grad():
        chunk = batch_size or scoring_chunk(model, {data.key: data}, device)
        for batch in data.batches(tiers, chunk, rng=None, device=device, responses=False,
                                  history=model.history_length):
            out = model(batch, data.key)  # (B, n)
            values.append(out.float().cpu().numpy())
            rows.append(batch.rows)
    model.train(was_training)
    if not rows:
        raise UserError(f"scan {data.key} has no trials in tier(s) {tiers!r}")
    return keyed(data, np.concatenate(rows), np.concatenate(values))


def keyed(data: ScanData, rows: np.ndarray, values: np.ndarray) -> Predictions:
    """``values`` (T, n) of the scan's ``rows`` (T,) keyed by trial and neuron id, with the recorded responses.

    For predictions made elsewhere: read back from a cache, or averaged over models (``predict`` returns
    the rows of a tier in ascending order, ``data.tier_indices(tier)``).
    """
    rows = np.asarray(rows)
    if values.shape != (len(rows), data.n_neurons):
        raise ValueError(f"scan {data.key}: values {values.shape} for {len(rows)} rows of {data.n_neurons} neurons")
    return Predictions(
        data_key=data.key,
        trial_ids=np.asarray(data.trial_ids)[rows],
        image_ids=np.asarray(data.image_ids)[rows],
        neuron_ids=np.asarray(data.unit_ids),
        rows=rows,
        values=values,
        responses=data.normalised_responses(rows),
    )


def competition_keys(data: Mapping[str, ScanData]) -> list[str]:
    """Data keys of the competition scans (those with a final_test tier); UserError when there are none."""
    keys = [key for key, scan in data.items() if scan.scan.is_competition]
    if not keys:
        raise UserError(f"none of the scans {list(data)} is a competition scan (one with a final_test tier)")
    return keys


def write_submissions(
    model: SensoriumModel,
    data: dict[str, ScanData],
    out: Path,
    device: torch.device,
    batch_size: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write both official CSVs for every competition scan of ``data`` to ``out/<data_key>/``."""
    from sensorium.submission import SUBMISSION_FILES, write_submission

    written = []
    for key in competition_keys(data):
        for name, tier in SUBMISSION_FILES.items():
            pred = predict(model, data[key], tier, device, batch_size)
            path = write_submission(
                out / key / name, pred.trial_ids, pred.image_ids, pred.neuron_ids, pred.values, overwrite=overwrite
            )
            written.append(path)
    return written
