"""``sensorium-search ensemble RUN``: a weighted ensemble of the search's own trials (``search.products.ensemble``),
its selection steps and its scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.products.ensemble import MAX_MEMBERS, build_ensemble, format_steps
from search.products.scoring import score_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a search run folder")
    parser.add_argument("--max-members", type=int, default=MAX_MEMBERS,
                        help=f"most members, a trial counted as often as it is chosen (default {MAX_MEMBERS})")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN/ensemble)")
    parser.add_argument("--retrain", type=Path,
                        help="retrain's output folder to compare with (default: RUN/retrain, when it holds one)")
    parser.add_argument("--ground-truth", type=Path, help="folder of ground-truth CSVs to score against (any layout: "
                        "each file is matched to a scan's test tier by its trial ids)")
    parser.add_argument("--data", nargs="+", metavar="PATH", help="scans to use instead of the search's data.scans")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    summary = build_ensemble(args.run_dir, max_members=args.max_members, out=args.out, retrain_dir=args.retrain,
                             ground_truth=args.ground_truth, data=args.data, device=args.device,
                             progress=not args.quiet)
    print(format_steps(summary))
    print(score_table(summary))
    print(f"submissions, ensemble.json and ensemble.md in {summary['out']}")
    return 0
