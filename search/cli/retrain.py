"""``sensorium-search retrain RUN_DIR|best_config.yaml``: the best config as a seed ensemble, submitted and scored
(``search.products.retrain``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.products.retrain import DEFAULT_SEEDS, ensemble_label, labelled, retrain
from search.products.scoring import score_table
from sensorium.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="a search run folder, its best_config.yaml, or any config")
    parser.add_argument("--seeds", type=int, help=f"seeds in the ensemble (default {DEFAULT_SEEDS}); with --splits, "
                        "seeds per fold (default: one per fold, fold k with seed seed + k)")
    parser.add_argument("--splits", type=int, default=0, metavar="K",
                        help="a split ensemble: member k trains on the pooled train + validation trials less fold k "
                        "of K (by image) and early-stops on fold k; test tiers untouched (default 0: the official "
                        "tiers)")
    parser.add_argument("--train-on-validation", action="store_true",
                        help="also train on the validation tier, for the search's best number of epochs")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/retrain or next to the config)")
    parser.add_argument("--ground-truth", type=Path, help="folder of ground-truth CSVs to score against (any layout: "
                        "each file is matched to a scan's test tier by its trial ids)")
    parser.add_argument("--data", nargs="+", metavar="PATH", help="scans to use instead of the config's data.scans")
    parser.add_argument("--device", help="train.device of every seed: auto, cpu, cuda or cuda:N (default: the config's)")
    parser.add_argument("--cpus-per-seed", type=float,
                        help="CPUs per seed, also its torch threads (default: the largest node's CPUs / seeds)")
    parser.add_argument("--gpus-per-seed", type=float, help="GPUs per seed; a fraction shares one card (default: 1 "
                        "when train.device is cuda, or auto on a cluster with GPUs; else 0)")
    parser.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: local Ray)")
    parser.add_argument("--seed-set", nargs=2, action="append", default=[], metavar=("SEED", "KEY=VALUE"),
                        help="override one config value for seed SEED only, e.g. --seed-set 1 train.lr=0.005 "
                        "(repeatable; recorded in retrain.json)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing retrain folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    seed_overrides: dict[int, list[str]] = {}
    for seed, item in args.seed_set:
        try:
            seed_overrides.setdefault(int(seed), []).append(item)
        except ValueError:
            raise UserError(f"--seed-set {seed} {item}: SEED must be an integer") from None
    summary = retrain(
        args.source, out=args.out, seeds=args.seeds, splits=args.splits, train_on_validation=args.train_on_validation,
        ground_truth=args.ground_truth, data=args.data, force=args.force, progress=not args.quiet,
        device=args.device, cpus_per_seed=args.cpus_per_seed, gpus_per_seed=args.gpus_per_seed, address=args.address,
        seed_overrides=seed_overrides,
    )
    print(score_table(labelled(summary)))  # the ensemble's members and the left-out ones in the labels
    print(f"submissions (the {ensemble_label(summary)}) and retrain.json in {summary['out']}")
    return 0
