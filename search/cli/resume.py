"""``sensorium-search resume RUN_DIR``: continue a search whose driver stopped (killed, crashed, Ctrl-C)."""

from __future__ import annotations

import argparse
from pathlib import Path



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder of the interrupted search")
    parser.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: local Ray)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars while the data cache is checked")


def run(args: argparse.Namespace) -> int:
    from search.raytune.driver import resume_search
    from search.store.results import best_trial

    records = resume_search(args.run_dir, address=args.address, progress=not args.quiet)
    best = best_trial(records)
    print(f"best trial {best.trial_id}: best val corr {best.best_val_corr:.4f} at epoch {best.best_epoch}")
    return 0
