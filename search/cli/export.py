"""``sensorium-search export RUN_DIR [--pick best|cheapest[:TOL]] [--reseed-top K --seeds N]``: write the picked
trial's best_config.yaml (``search.products.export``) and say what was picked (with ``--reseed-top``, every
candidate's scores over seeds: ``search.products.reseed``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.products.export import BEST_CONFIG, export_best, read_best_config
from search.products.reseed import RESEED_DIR, RESEED_SEEDS, format_reseed
from search.store.results import COSTS
from sensorium.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder of a search")
    parser.add_argument("--out", type=Path, help=f"where to write (default: RUN_DIR/{BEST_CONFIG})")
    parser.add_argument("--pick", default="best", metavar="best|cheapest[:TOL]",
                        help="best: highest best val corr (default); cheapest:TOL: the lowest cost (search.cost) "
                             "within TOL of it (default TOL 0.01)")
    parser.add_argument("--reseed-top", type=int, default=0, metavar="K",
                        help=f"retrain the top K trials with --seeds more seeds each (Ray tasks, into "
                        f"RUN_DIR/{RESEED_DIR}/) and pick the best mean validation correlation (default 0: off)")
    parser.add_argument("--seeds", type=int, help=f"with --reseed-top: more seeds per trial (default {RESEED_SEEDS})")
    parser.add_argument("--cpus-per-seed", type=float, help="with --reseed-top: CPUs per seed (default: the largest "
                        "node's CPUs / seeds)")
    parser.add_argument("--gpus-per-seed", type=float, help="with --reseed-top: GPUs per seed (default: 1 when "
                        "train.device is cuda, or auto on a cluster with GPUs; else 0)")
    parser.add_argument("--address", help="with --reseed-top: join a running Ray cluster (default: local Ray)")
    parser.add_argument("--quiet", action="store_true", help="with --reseed-top: no progress lines")


def run(args: argparse.Namespace) -> int:
    given = [f"--{name.replace('_', '-')}" for name in ("seeds", "cpus_per_seed", "gpus_per_seed", "address")
             if getattr(args, name) is not None]
    if given and not args.reseed_top:
        raise UserError(f"{', '.join(given)}: only with --reseed-top K")
    path = export_best(args.run_dir, args.out, pick=args.pick, reseed_top=args.reseed_top, seeds=args.seeds or RESEED_SEEDS,
                       cpus_per_seed=args.cpus_per_seed, gpus_per_seed=args.gpus_per_seed, address=args.address,
                       progress=not args.quiet)
    prov = read_best_config(path)[1]
    if "reseed" in prov:
        print(format_reseed(prov["reseed"]))
    cost = prov["cost"]
    cost_text = f", {cost['kind']} {cost['value']:.4g} {COSTS[cost['kind']][1]}" if cost["value"] is not None else ""
    print(
        f"{prov['pick']} trial {prov['trial_id']}: best val corr {prov['best_val_corr']:.4f} at epoch "
        f"{prov['best_epoch']}{cost_text} (config {prov['config_hash']}) -> {path}"
    )
    imported = (prov.get("warm_start") or {}).get("best_imported")
    if imported and imported["best_val_corr"] > prov["best_val_corr"]:
        print(f"note: trial {imported['source_trial']} of {imported['run']} (imported by the warm start) scored "
              f"higher, {imported['best_val_corr']:.4f}; export it from there: sensorium-search export {imported['run']}")
    print(f"next: sensorium-search train {path}   |   sensorium-search retrain {args.run_dir}")
    return 0
