"""Predictions keyed by trial id and neuron id, and the ``submit`` command that writes the official CSVs.

    >>> model, cfg = load_model("runs/baseline", torch.device("cpu"))           # doctest: +SKIP
    >>> pred = predict(model, data["27204-5-13"], "test", torch.device("cpu"))  # doctest: +SKIP
    >>> pred.values.shape == (len(pred.trial_ids), len(pred.neuron_ids))       # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sensorium.data import ScanData
from sensorium.errors import UserError
from sensorium.models import SensoriumModel
from sensorium.runtime import eval_batch_size

HELP = "write the competition CSVs of a trained run for every competition scan"



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

    Runs in chunks of ``batch_size`` trials (0: the fastest for the device, ``runtime.eval_batch_size``);
    the recorded responses come from the host copy, never through the device. The model's train/eval
    mode is restored afterwards.
    """
    if data.key not in model.readout:
        raise UserError(f"scan {data.key} is not one of this model's scans {model.data_keys}")
    expected = model.core.features[0].conv.in_channels
    if data.in_shape[0] != expected:
        raise UserError(
            f"scan {data.key}: batches have {data.in_shape[0]} channels but the model expects {expected} "
            "(data.behavior_channels differs from the one the model was trained with)"
        )
    was_training = model.training
    model.eval()
    values, rows = [], []
    with torch.no_grad():
        chunk = eval_batch_size(batch_size, device)
        for batch in data.batches(tiers, chunk, rng=None, device=device, responses=False):
            out = model(batch.images, data.key, batch.pupil_center, batch.channel_behavior)  # (B, n)
            values.append(out.float().cpu().numpy())
            rows.append(batch.rows)
    model.train(was_training)
    if not rows:
        raise UserError(f"scan {data.key} has no trials in tier(s) {tiers!r}")
    row_idx = np.concatenate(rows)
    return Predictions(
        data_key=data.key,
        trial_ids=np.asarray(data.trial_ids)[row_idx],
        image_ids=np.asarray(data.image_ids)[row_idx],
        neuron_ids=np.asarray(data.unit_ids),
        rows=row_idx,
        values=np.concatenate(values),
        responses=data.normalised_responses(row_idx),
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


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (or a best.pt checkpoint)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/submission)")
    parser.add_argument("--force", action="store_true", help="overwrite existing submission files")
    parser.add_argument(
        "--data", nargs="+", default=None, metavar="PATH",
        help="scan folders/zips to read instead of the run config's data.scans (e.g. moved data)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def run(args: argparse.Namespace) -> int:
    from sensorium.data import load_data
    from sensorium.runtime import resolve_device
    from sensorium.training.checkpoint import load_model

    device = resolve_device(args.device)
    model, cfg = load_model(args.run_dir, device)
    data_cfg = cfg.data if args.data is None else dataclasses.replace(cfg.data, scans=tuple(map(str, args.data)))
    data = load_data(data_cfg)
    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent.parent
    out = args.out if args.out is not None else run_dir / "submission"
    for path in write_submissions(model, data, out, device, cfg.data.eval_batch_size, overwrite=args.force):
        print(path)
    return 0
