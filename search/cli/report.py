"""``sensorium-search report RUN_DIR``: trials.csv, report.md and the plots of a search (``search.products.report``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.products.report import write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder of a search")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report)")


def run(args: argparse.Namespace) -> int:
    out = write_report(args.run_dir, args.out)
    print(f"report: {out / 'report.md'} (+ trials.csv and PNGs in {out})")
    return 0
