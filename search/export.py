"""``sensorium-search export RUN_DIR``: the best trial's full resolved config, ready for ``train``.

``best_config.yaml`` = the experiment config of the trial with the highest best-epoch validation
correlation, plus one top-level ``provenance:`` mapping (``kind: best_config``) that ``load_config`` skips:
trial id, best validation correlation and epoch, config hash, seeds, library versions, git SHA and the
trial's best checkpoint. ``sensorium-search train best_config.yaml`` reruns it; its run folder's config
has the same hash.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


from sensorium.config import BEST_CONFIG_KIND, ExperimentConfig, config_hash, save_config
from sensorium.errors import UserError

HELP = "write best_config.yaml (full config of the best trial + provenance) of a search"
BEST_CONFIG = "best_config.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder of a search")
    parser.add_argument("--out", type=Path, help=f"where to write (default: RUN_DIR/{BEST_CONFIG})")


def run(args: argparse.Namespace) -> int:
    path = export_best(args.run_dir, args.out)
    prov = read_best_config(path)[1]
    print(
        f"best trial {prov['trial_id']}: best val corr {prov['best_val_corr']:.4f} at epoch {prov['best_epoch']}"
        f" (config {prov['config_hash']}) -> {path}"
    )
    print(f"next: sensorium-search train {path}   |   sensorium-search retrain {args.run_dir}")
    return 0


def export_best(run_dir: Path, out: Path | None = None) -> Path:
    """Write the best trial's config with provenance; returns the file's path."""
    from search.results import best_trial, load_run
    from sensorium.runtime import git_sha, library_versions

    run_dir, spec, records = load_run(run_dir)
    best = best_trial(records)
    cfg = spec.resolve(best.params)
    provenance: dict[str, Any] = {
        "kind": BEST_CONFIG_KIND,
        "search_run": str(run_dir),
        "trial_id": best.trial_id,
        "trial_status": best.status,
        "best_val_corr": best.best_val_corr,
        "best_epoch": best.best_epoch,
        "epochs_run": best.epochs,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "search_seed": spec.settings.seed,
        "searched": {p.key: best.params.get(p.key) for p in spec.params},
        "trials": {s: sum(r.status == s for r in records) for s in ("done", "stopped", "error", "running")},
        "checkpoint": str(best.checkpoint / "best.pt") if best.checkpoint else None,
        "git_sha": git_sha(),
        "versions": library_versions(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = Path(out) if out else run_dir / BEST_CONFIG
    save_config(cfg, path, extra={"provenance": provenance})  # whole or not at all: an old file survives a failure
    return path


def read_best_config(path: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """(config, provenance) of a best_config.yaml; UserError when the file is not one."""
    from sensorium.config import load_config, read_yaml_mapping

    prov = read_yaml_mapping(path).get("provenance")
    if not isinstance(prov, dict) or prov.get("kind") != BEST_CONFIG_KIND:
        raise UserError(f"{path}: not a best_config.yaml written by `sensorium-search export`")
    return load_config(path), prov
