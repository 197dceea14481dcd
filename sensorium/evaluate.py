"""``sensorium-search evaluate SUBMISSION.csv GROUND_TRUTH.csv [--json OUT.json]``: the three scores.

Both files are official CSVs of the same tier (SENSORIUM.md §5) in standardised response units; rows and
neurons are aligned by id (see :func:`sensorium.submission.score_files`). Prints one line per score and,
with ``--json``, writes them to a file (FEVE is ``null`` when no neuron reaches FEV >= 0.15).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sensorium.atomic import write_text
from sensorium.metrics import FEV_THRESHOLD, SCORE_NAMES
from sensorium.submission import score_files



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="submission CSV (column 'prediction')")
    parser.add_argument("ground_truth", type=Path, help="ground-truth CSV of the same tier (column 'responses')")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the scores here")


def format_scores(scores: dict[str, float]) -> str:
    """One aligned line per score; a NaN FEVE says why it is undefined."""
    lines = []
    for name in SCORE_NAMES:
        value = scores[name]
        text = f"{value:.4f}" if not math.isnan(value) else f"nan (no neuron with FEV >= {FEV_THRESHOLD})"
        lines.append(f"{name:<26} {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    scores = score_files(args.submission, args.ground_truth)
    print(format_scores(scores))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "submission": str(args.submission),
            "ground_truth": str(args.ground_truth),
            **{k: (None if math.isnan(v) else v) for k, v in scores.items()},
        }
        write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0
