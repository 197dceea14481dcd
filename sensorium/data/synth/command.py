"""``sensorium-search synth OUT``: write synthetic scans in the official file tree, with their ground truth."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from sensorium.data.synth.config import DEMO_HISTORY, SynthConfig
from sensorium.data.synth.writer import generate
from sensorium.data.synth.oracle import format_table
from sensorium.errors import UserError


_SIZE = re.compile(r"^(\d+)x(\d+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write synthetic scans in the official file tree with their ground truth. Without a preset: the real "
        "SENSORIUM+ size (7 scans: 5 pre-training, 2 competition; 8000 neurons, 6000 trials each, 144x256 "
        "images; about 11 GB and 9 minutes on one core, --workers N scans at once)")
    parser.add_argument("out", type=Path, metavar="OUT", help="output folder (OUT/data, OUT/ground_truth)")
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--tiny", action="store_true", help="preset: 2 scans, 40 neurons, 300 trials, 36x64")
    preset.add_argument(
        "--demo",
        action="store_true",
        help="preset: 2 scans, 300 neurons, 2000 trials, 36x64, history and state effects on "
        f"(adaptation {DEMO_HISTORY['adaptation']:g}, drift {DEMO_HISTORY['drift']:g}, "
        f"arousal {DEMO_HISTORY['arousal']:g})",
    )
    parser.add_argument("--scans", type=int, help="number of scans (default: preset, else 7)")
    parser.add_argument("--competition", type=int, help="how many are competition scans (default: preset, else 2)")
    parser.add_argument("--neurons", type=int, help="neurons per scan (default: preset, else 8000)")
    parser.add_argument("--trials", type=int, help="trials per scan, all tiers (default: preset, else 6000)")
    parser.add_argument("--image-size", metavar="HxW", help="stored image size (default: preset, else 144x256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    history = parser.add_argument_group(
        "history and state effects", "gains that carry over between trials (0 = off; default: preset, else 0)"
    )
    history.add_argument(
        "--adaptation",
        type=float,
        metavar="X",
        help="mean per-neuron strength of adaptation to the neuron's own last responses (time constants 1-5 trials)",
    )
    history.add_argument("--drift", type=float, metavar="X", help="std of the log gain drifting slowly over the session")
    history.add_argument(
        "--arousal",
        type=float,
        metavar="X",
        help="std of the log gain of a latent arousal state (AR(1), 0.8 per trial; pupil dilation carries part of it)",
    )
    history.add_argument(
        "--no-history", action="store_true", help="all three off (e.g. --demo without them: the older demo data)"
    )
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty OUT, replacing its data/ and ground_truth/"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=int, default=1,
                        help="scans simulated at once in worker processes (same bytes; about 2 GB of memory each "
                             "at the real size; default 1)")


_OPTIONS = (
    ("scans", "n_scans"),
    ("competition", "n_competition"),
    ("neurons", "n_neurons"),
    ("trials", "n_trials"),
    ("adaptation", "adaptation"),
    ("drift", "drift"),
    ("arousal", "arousal"),
)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The SynthConfig of a preset (or the defaults) with the explicit options applied."""
    if args.tiny:
        cfg = SynthConfig.tiny(args.seed)
    elif args.demo:
        cfg = SynthConfig.demo(args.seed)
    else:
        cfg = SynthConfig(seed=args.seed)
    if args.no_history:
        given = [f"--{name}" for name in ("adaptation", "drift", "arousal") if getattr(args, name) is not None]
        if given:
            raise UserError(f"--no-history switches every history effect off; drop it or {', '.join(given)}")
        cfg = cfg.without_history()
    changes: dict[str, object] = {}
    for option, field in _OPTIONS:
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    if args.scans is not None and args.competition is None:
        changes["n_competition"] = min(cfg.n_competition, args.scans)
    if args.image_size is not None:
        match = _SIZE.match(args.image_size)
        if not match:
            raise UserError(f"--image-size {args.image_size!r}: expected HEIGHTxWIDTH, e.g. 36x64 or 144x256")
        changes["image_height"], changes["image_width"] = int(match.group(1)), int(match.group(2))
    return cfg.replace(**changes) if changes else cfg


def disk_estimate(cfg: SynthConfig) -> float:
    """Approximate bytes written: float32 .npy files (128-byte headers) plus the raw ground-truth arrays."""
    per_trial = 4 * (cfg.image_height * cfg.image_width + cfg.n_neurons + 3 + 2) + 4 * 128
    truth_per_trial = 2 * 4 * cfg.n_neurons
    return float(cfg.n_scans * cfg.n_trials * (per_trial + truth_per_trial))


def history_settings(cfg: SynthConfig) -> str:
    """``no history effects`` or ``history: adaptation 0.5, drift 0.4, arousal 0.4``."""
    if not cfg.has_history:
        return "no history effects"
    return "history: " + ", ".join(f"{name} {getattr(cfg, name):g}" for name in ("adaptation", "drift", "arousal"))


def history_line(summary: dict) -> str:
    """One sentence on the history effects' size: log-gain std, and the live-test ceiling with and without them."""
    test = summary["tiers"]["test"]["single_trial_correlation"]
    return (
        f"History and state gains: log-gain std {summary['log_gain_std']['total']:.2f} over trials; on the live "
        f"test the true rate scores {test['with_history']:.3f} single-trial corr, the rate without them "
        f"(stimulus and behaviour only) {test['without_history']:.3f} (per scan: ground_truth/<key>/history.json)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out} is not empty; refusing to write into it (--force replaces its data and ground truth)")
    print(
        f"synth: {cfg.n_scans} scans ({cfg.n_competition} competition), {cfg.n_neurons} neurons, "
        f"{cfg.n_trials} trials, {cfg.image_height}x{cfg.image_width} images, seed {cfg.seed}, "
        f"{history_settings(cfg)} (about {disk_estimate(cfg) / 1e9:.2f} GB)",
        flush=True,
    )
    start = time.perf_counter()
    result = generate(out, cfg, progress=not args.quiet, overwrite=args.force, workers=args.workers)
    print("\nOracle (noise-free expected vs noisy responses; the ceiling of any model):")
    print(format_table(result.oracle))
    if result.history is not None:
        print(f"\n{history_line(result.history)}")
    print(f"\nwrote {len(result.keys)} scans to {result.data_dir}")
    extra = ", history_gain.npy, history.json" if result.history is not None else ""
    print(f"wrote ground truth (responses, expected, CSVs, oracle.json{extra}) to {result.ground_truth_dir}")
    print(f"took {time.perf_counter() - start:.1f} s")
    return 0
