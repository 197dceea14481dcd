"""``sensorium-search train CONFIG.yaml [--set key=value ...] [--out RUN_DIR] [--data PATH ...]``.

    sensorium-search train configs/sensorium_plus.yaml --data data/ --set train.threads=2 --out runs/baseline

``--resume`` continues the run in ``--out`` from its ``checkpoints/last.pt``. When that file is damaged
(truncated by a full disk, corrupt), the run starts again from epoch 0 with a warning naming the file and
the reason: what the user asked for is the finished run, the damaged state cannot give it, and a fresh
start reproduces it (a refusal would leave only deleting the file by hand). A missing last.pt is still
refused: it means a wrong ``--out``, not damage.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sensorium.config import load_config, set_value
from sensorium.errors import UserError



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment config (YAML), e.g. configs/sensorium_plus.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=0.005 (repeatable)",
    )
    parser.add_argument(
        "--data", nargs="+", default=None, metavar="PATH",
        help="scan folders, official zips or directories holding them (sets data.scans)",
    )
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<name>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last.pt (a damaged one: start again, with a warning)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.data is not None:
        cfg = set_value(cfg, "data.scans", [str(p) for p in args.data])
    if not cfg.data.scans:
        raise UserError(f"{args.config}: data.scans is empty; give scans with --data PATH ...")
    if args.resume and args.out is None:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    out = args.out if args.out is not None else Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    resume = out / "checkpoints" / "last.pt" if args.resume else None
    if resume is None and (out / "checkpoints" / "last.pt").exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    from sensorium.training.fit import fit  # heavy imports only once the arguments are valid

    result = fit(cfg, out, resume=resume, progress=not args.quiet)
    print(f"best validation correlation {result.best_val_corr:.4f} at epoch {result.best_epoch} "
          f"({result.epochs_run} epochs); run directory: {result.run_dir}")
    return 0

