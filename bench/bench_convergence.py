"""Better than the baseline at convergence? The untuned baseline and a search's best config, each trained with
the full recipe (early stopping, no epoch cap), 3 seeds each, scored on the test tiers next to the oracle.

1. synthetic scans (one competition scan with withheld test responses, one pre-training scan; the generator
   keeps the ground truth and the oracle);
2. a search with this tool's defaults (TPE + ASHA) over configs/search_bench.yaml, its 8-epoch cap and a
   compute budget (the trials' summed training seconds); ``export`` writes its best config;
3. ``retrain`` of configs/sensorium_plus.yaml (the untuned baseline) and of the best config with the cap
   lifted (train.max_epochs back to the reference 200: early stopping ends each run), 3 seeds each, the seeds
   two at a time on 1 CPU each; every competition test tier scored against the ground truth.

Writes results/bench_convergence.md: per model and tier, single-trial correlation and correlation to average
for every seed, their mean and sd, the seed ensemble, the oracle; and the compute each model took (the
search's budget for the searched one, counted apart). Everything else under runs/bench_convergence/.

    .venv/bin/python bench/bench_convergence.py [--seeds 3] [--budget 300]   # about an hour on 2 CPUs
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench_search import bench_spec, make_data
from search.raytune.driver import ensure_ray, release_ray, run_search
from search.products.export import export_best
from search.products.retrain import retrain
from sensorium.config import load_config, save_config, set_value
from sensorium.data.synth import SynthConfig

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_convergence"
OUT = ROOT / "results" / "bench_convergence.md"
# 2 scans x 300 neurons x 1000 trials, 40 test images x 5 repeats per test tier (200 live-test trials of the
# competition scan scored), twice the default stimulus drive (as bench_search.py): the full recipe ends
# within tens of epochs of seconds each.
SYNTH = SynthConfig(seed=0, n_scans=2, n_competition=1, n_neurons=300, n_trials=1000, image_height=36,
                    image_width=64, n_test_images=40, test_repeats=5, validation_fraction=0.2, signal_strength=2.0)
TIERS = ("test", "final_test")
SCORES = ("single_trial_correlation", "correlation_to_average")


def search_best(data_dir: Path, budget_s: float) -> tuple[Path, float]:
    """The search with this tool's defaults (tpe + asha) until ``budget_s``; returns (best_config.yaml,
    wall seconds)."""
    run_dir = WORK / "search"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    run_search(bench_spec(data_dir, budget_s), run_dir, progress=False, live_every_s=60)
    return export_best(run_dir), time.perf_counter() - start


def full_recipe(config: Path, name: str, data_dir: Path) -> Path:
    """``config`` with the reference 200-epoch cap (early stopping decides) and this benchmark's data."""
    cfg = load_config(config)
    cfg = set_value(set_value(cfg, "train.max_epochs", 200), "data.scans", [str(data_dir)])
    cfg = set_value(cfg, "data.cache_dir", str(WORK / "cache"))
    path = WORK / f"{name}.yaml"
    save_config(cfg, path)
    return path


def table(name: str, summary: dict) -> list[str]:
    """Rows of one model: every seed, mean ± sd, the ensemble; one column pair per tier."""
    scores = summary["scores"]
    key = next(iter(scores["ensemble"]))
    seeds = [k for k in scores if k != "ensemble"]
    rows = []
    for label in seeds + ["mean ± sd", "ensemble"]:
        cells = []
        for tier in TIERS:
            for score in SCORES:
                if label == "mean ± sd":
                    values = [scores[s][key][tier][score] for s in seeds]
                    sd = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
                else:
                    cells.append(f"{scores[label][key][tier][score]:.4f}")
        rows.append(f"| {name} | {label.replace('seed_', 'seed ')} | " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="models per config (default 3)")
    parser.add_argument("--budget", type=float, default=300.0, help="the search's compute budget, training s")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    data_dir = make_data(WORK, SYNTH)
    started = ensure_ray(None)
    try:
        best, search_wall = search_best(data_dir, args.budget)
        models = {"untuned baseline": full_recipe(ROOT / "configs" / "sensorium_plus.yaml", "baseline", data_dir),
                  "searched best": full_recipe(best, "searched", data_dir)}
        results = {}
        for name, config in models.items():
            print(f"== {name}: {args.seeds} seeds, full recipe", file=sys.stderr, flush=True)
            results[name] = retrain(config, out=WORK / name.replace(" ", "_"), seeds=args.seeds, force=True,
                                    ground_truth=WORK / "synth" / "ground_truth", cpus_per_seed=1)
    finally:
        release_ray(started)
    oracle = next(iter(results["untuned baseline"]["oracle"].values()))
    header = " | ".join(f"{tier} {s.split('_')[0]}" for tier in TIERS for s in SCORES)
    lines = [
        "# Untuned baseline vs searched best, each trained to convergence (full recipe)",
        "",
        f"`{' '.join(['.venv/bin/python', 'bench/bench_convergence.py', *sys.argv[1:]])}` on {platform.node()}: "
        f"{os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        f"Data: {SYNTH.n_scans} synthetic scans ({SYNTH.n_competition} competition scan, scored), "
        f"{SYNTH.n_neurons} neurons, {SYNTH.n_trials} trials, {SYNTH.n_test_images} test images x "
        f"{SYNTH.test_repeats} repeats per test tier, stimulus drive x{SYNTH.signal_strength:g}. "
        f"Search: configs/search_bench.yaml, TPE + ASHA, 8-epoch cap, {args.budget:.0f} s of training "
        f"({search_wall:.0f} s wall); its best config then trained like the baseline: early stopping with "
        "4 lr-decay rounds, at most 200 epochs, seeds 42, 43, ... two at a time on 1 CPU each.",
        "",
        f"| model | seed | {header} |",
        "|---|---|" + "---:|" * (len(TIERS) * len(SCORES)),
    ]
    for name, summary in results.items():
        lines += table(name, summary)
    lines.append("| oracle (noise-free truth) | - | " + " | ".join(
        f"{oracle[tier][s]:.4f}" for tier in TIERS for s in SCORES) + " |")
    lines += ["", "| model | epochs per seed (best epoch) | training s per seed | all seeds, s |", "|---|---|---|---:|"]
    for name, summary in results.items():
        members = summary["members"]
        epochs = ", ".join(f"{m['epochs']} ({m['best_epoch']})" for m in members)
        seconds = ", ".join(f"{m['seconds']:.0f}" for m in members)
        lines.append(f"| {name} | {epochs} | {seconds} | {sum(m['seconds'] for m in members):.0f} |")
    lines.append(f"| search (finds the searched config) | - | - | {args.budget:.0f} of training ({search_wall:.0f} wall) |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
