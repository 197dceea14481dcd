"""``sensorium-search export RUN_DIR [--pick best|cheapest[:TOL]]``: write the picked trial's best_config.yaml
(``search.products.export``) and say what was picked."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.products.export import BEST_CONFIG, export_best, read_best_config
from search.store.results import COSTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder of a search")
    parser.add_argument("--out", type=Path, help=f"where to write (default: RUN_DIR/{BEST_CONFIG})")
    parser.add_argument("--pick", default="best", metavar="best|cheapest[:TOL]",
                        help="best: highest best val corr (default); cheapest:TOL: the lowest cost (search.cost) "
                             "within TOL of it (default TOL 0.01)")


def run(args: argparse.Namespace) -> int:
    path = export_best(args.run_dir, args.out, pick=args.pick)
    prov = read_best_config(path)[1]
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
