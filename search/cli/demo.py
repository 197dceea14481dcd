"""``sensorium-search demo``: every stage on synthetic data (``search.products.demo``), then the summary table and
the commands that open TensorBoard and optuna-dashboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.products.demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--trials", type=int, help="search trials (default 12; smoke 3)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at a time (default 2)")
    parser.add_argument("--seeds", type=int, default=2, help="models in the retrained ensemble (default 2)")
    parser.add_argument("--time-budget", type=float, default=420.0, metavar="S",
                        help="search time budget in seconds (default 420; trials still running are stopped)")
    parser.add_argument("--smoke", action="store_true", help="the same path on tiny data in about a minute")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the sampler")


def run(args: argparse.Namespace) -> int:
    summary = run_demo(args.out, trials=args.trials, concurrent=args.concurrent, seeds=args.seeds,
                       time_budget=args.time_budget, smoke=args.smoke, seed=args.seed)
    print(summary["table"])
    run_dir = summary["search_run"]
    print(f"\nwall time {summary['seconds']['total']:.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items() if k != "total"))
    print(f"summary: {summary['demo_md']}")
    print(f"TensorBoard:      tensorboard --logdir {run_dir} --host 127.0.0.1")
    print(f"optuna-dashboard: pip install optuna-dashboard && optuna-dashboard --host 127.0.0.1 "
          f"{run_dir}/optuna_journal.log")
    return 0
