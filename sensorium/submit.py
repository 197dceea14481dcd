"""``sensorium-search submit RUN``: the official CSVs of a trained run for every competition scan.

Reads the run's best checkpoint and its config (the scans of ``data.scans``, or ``--data``), writes
``OUT/<data key>/submission_file_{live,final}_test.csv`` (``sensorium.predict.write_submissions``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


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
    from sensorium.predict import write_submissions
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
