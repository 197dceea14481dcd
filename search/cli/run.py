"""``sensorium-search run SEARCH.yaml``: a Ray Tune + Optuna search from a search file."""

from __future__ import annotations

import argparse
from pathlib import Path


def _gpus(text: str) -> float | str:
    """``--gpus-per-trial``: ``auto`` or a number (checked with the search settings)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("search_file", type=Path, help="search YAML (base config, overrides, parameters)")
    parser.add_argument("--trials", type=int, help="number of trials (search.num_trials)")
    parser.add_argument("--concurrent", type=int, help="trials running at once (search.max_concurrent)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial; also its torch thread count")
    parser.add_argument("--gpus-per-trial", type=_gpus, metavar="auto|G",
                        help="GPUs per trial: 0 (CPU), a fraction of a card (0.25: 4 trials share it) or 1; auto "
                             "(the default search files'): as many trials per card as the largest model fits")
    parser.add_argument("--time-budget", type=float, metavar="S", help="stop the search after S seconds")
    parser.add_argument("--compute-budget", type=float, metavar="S",
                        help="stop once the trials' summed training time reaches S seconds (search.compute_budget_s)")
    parser.add_argument("--sampler", choices=("tpe", "random"), help="search.sampler (default: the search file's)")
    parser.add_argument("--scheduler", choices=("asha", "fifo"),
                        help="search.scheduler: asha stops weak trials early, fifo runs every trial to the cap")
    parser.add_argument("--seed", type=int, help="seed of the TPE sampler (search.seed)")
    parser.add_argument("--objective", choices=("val_corr", "val_corr+cost"),
                        help="search.objective: val_corr+cost also minimises the training cost (two objectives)")
    parser.add_argument("--cost", choices=("train_seconds", "parameters"),
                        help="search.cost: median training seconds per epoch, or the model's parameter count")
    parser.add_argument("--warm-start", type=Path, metavar="EARLIER_RUN",
                        help="add the finished trials of an earlier search over the same keys to the study first")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/search-<search file name>)")
    parser.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: local Ray)")
    parser.add_argument("--data", nargs="+", metavar="PATH", help="scan folders/zips (replaces data.scans)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars while the data cache is built")


def run(args: argparse.Namespace) -> int:
    from search.raytune.driver import run_search
    from search.store.results import best_trial
    from search.spec.space import load_search, with_data, with_settings

    spec = load_search(args.search_file)
    if args.data:
        spec = with_data(spec, [str(Path(p)) for p in args.data])
    spec = with_settings(
        spec,
        num_trials=args.trials,
        max_concurrent=args.concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        time_budget_s=args.time_budget,
        compute_budget_s=args.compute_budget,
        sampler=args.sampler,
        scheduler=args.scheduler,
        seed=args.seed,
        objective=args.objective,
        cost=args.cost,
    )
    warm_start = None
    if args.warm_start:  # read and checked before Ray starts
        from search.store.warm_start import plan_warm_start

        warm_start = plan_warm_start(args.warm_start, spec)
    out = args.out or Path("runs") / f"search-{args.search_file.stem}"
    records = run_search(spec, out, address=args.address, progress=not args.quiet, warm_start=warm_start)
    best = best_trial(records)
    print(f"best trial {best.trial_id}: best val corr {best.best_val_corr:.4f} at epoch {best.best_epoch}")
    pick = " --pick cheapest:0.01" if spec.settings.with_cost else ""  # a point on the Pareto front
    print(f"next: sensorium-search export {out}{pick}   |   sensorium-search report {out}")
    return 0
