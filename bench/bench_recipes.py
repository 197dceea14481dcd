"""Do the modern training recipe, the Softplus output link and split ensembles beat the reference?

On two synthetic data sets (one without and one with the history effects the modulator models; each one
competition scan whose test responses are withheld and scored against the generator's ground truth), every
variant of configs/sensorium_plus.yaml is trained by ``retrain`` with the same epoch cap (``--epochs``; the
reference's own early stopping may end a run sooner, and the table says when each run's best epoch was):

- the reference recipe (Adam, plateau decays, early stopping) against the modern one (``train.recipe.kind:
  modern``: AdamW, warm-up then cosine decay, EMA weights, gradient clipping), with ELU+1 and with Softplus
  (``model.link.kind: softplus``), each alone and together, 3 seeds each;
- a 5-member split ensemble (``retrain --splits 5``: 5 train/validation splits of the pooled train and validation
  trials) against a 5-member seed ensemble of the same (reference) config.

Writes results/bench_recipes.md: per data set and variant, the live and final test single-trial correlation
(mean ± sd over seeds, and the variant's seed ensemble) next to the oracle, the difference to the reference and a
verdict (helps / hurts: beyond the reference's seed sd on both tiers, the same way; else within seed noise);
the ensembles' rows; each run's epochs and best epoch, and how much the reference's validation correlation still
rose over the last quarter of the cap (so the reader sees whether its curve had flattened). Everything else under
runs/bench_recipes/.

    .venv/bin/python bench/bench_recipes.py                 # about an hour of CPU on 2 cores (2 runs at a time)
    .venv/bin/python bench/bench_recipes.py --quick         # 2 epochs, 2 seeds, one data set: a smoke test
    .venv/bin/python bench/bench_recipes.py --epochs 120 --report   # the table again from the runs' retrain.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_search import make_data
from search.products.retrain import retrain
from search.raytune.driver import ensure_ray, release_ray
from sensorium.config import load_config, save_config, set_values
from sensorium.data.synth import SynthConfig
from sensorium.data.synth.config import DEMO_HISTORY

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_recipes"
OUT = ROOT / "results" / "bench_recipes.md"
# One competition scan of 200 neurons and 800 trials (480 train, 120 validation, 100 + 100 test trials of 20
# images x 5 repeats), the model at 18x32 (the official images downscaled by 8): an epoch of the baseline costs
# about 2 CPU seconds, so 38 runs of up to 60 epochs fit in about an hour on 2 cores.
_SIZE = dict(n_scans=1, n_competition=1, n_neurons=200, n_trials=800, image_height=36, image_width=64,
             n_test_images=20, test_repeats=5, validation_fraction=0.2, signal_strength=2.0)
DATASETS = {
    "no history effects": SynthConfig(seed=21, **_SIZE),
    "with history effects": SynthConfig(seed=22, **_SIZE, **DEMO_HISTORY),
}
RESOLUTION = {"data.image_height": 18, "data.image_width": 32}
VARIANTS = {  # name -> overrides of configs/sensorium_plus.yaml
    "reference, ELU+1": {},
    "modern, ELU+1": {"train.recipe.kind": "modern"},
    "reference, Softplus": {"model.link.kind": "softplus"},
    "modern, Softplus": {"train.recipe.kind": "modern", "model.link.kind": "softplus"},
}
REFERENCE = "reference, ELU+1"
TIERS = ("test", "final_test")
SCORE = "single_trial_correlation"


def variant_config(name: str, overrides: dict[str, Any], data_dir: Path, epochs: int, work: Path) -> Path:
    """configs/sensorium_plus.yaml with ``overrides``, this data set and the epoch cap, saved under ``work``."""
    cfg = load_config(ROOT / "configs" / "sensorium_plus.yaml")
    cfg = set_values(cfg, {**overrides, **RESOLUTION, "train.max_epochs": epochs, "data.scans": [str(data_dir)],
                           "data.cache_dir": str(work / "cache")})
    path = work / f"{name.replace(', ', '_').replace('+', 'p').lower()}.yaml"
    save_config(cfg, path)
    return path


def scores(summary: dict[str, Any], members: list[str]) -> dict[str, dict[str, float]]:
    """label ('ensemble', 'seed_42', ...) -> tier -> single-trial correlation of the competition scan."""
    key = next(iter(summary["scores"]["ensemble"]))
    return {label: {tier: summary["scores"][label][key][tier][SCORE] for tier in TIERS}
            for label in ["ensemble", *members]}


def member_labels(summary: dict[str, Any]) -> list[str]:
    return [label for label in summary["scores"] if label != "ensemble"]


def late_gain(run_dir: Path) -> float:
    """How much the best validation correlation rose over the last quarter of the epochs a run trained."""
    with open(run_dir / "curves.csv", newline="") as f:
        best = [float(row["best_val_corr"]) for row in csv.DictReader(f)]
    return best[-1] - best[-1 - max(1, len(best) // 4)] if len(best) > 1 else float("nan")


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def trained(config: Path, out: Path, report_only: bool, **members: int) -> dict[str, Any]:
    """``retrain`` of ``config`` into ``out`` (``members``: its ``seeds`` or ``splits``), scored against the data
    set's ground truth; with ``report_only`` the retrain.json an earlier run left there."""
    if report_only:
        return json.loads((out / "retrain.json").read_text())
    return retrain(config, out=out, force=True, ground_truth=out.parent / "synth" / "ground_truth", cpus_per_seed=1,
                   progress=False, **members)


def verdict(diff: dict[str, float], noise: dict[str, float]) -> str:
    """'helps' / 'hurts' when the mean differs from the reference's by more than the reference's seed sd on both
    tiers in the same direction, else 'within seed noise'."""
    if all(diff[t] > noise[t] for t in TIERS):
        return "helps"
    if all(diff[t] < -noise[t] for t in TIERS):
        return "hurts"
    return "within seed noise"


def run_line(report_only: bool, load_before: float, start: float) -> str:
    command = " ".join([".venv/bin/python", "bench/bench_recipes.py", *(a for a in sys.argv[1:] if a != "--report")])
    if report_only:
        return f"Runs of `{command}`; this table written from their retrain.json files (`--report`)."
    return (f"`{command}` on {platform.node()}: {os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after, {(time.perf_counter() - start) / 60:.0f} min.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="the epoch cap of every run (default 60)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    parser.add_argument("--members", type=int, default=5, help="members of the split and seed ensembles (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 2 seeds, 2 members, one data set")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the table from the retrain.json files of an earlier run")
    args = parser.parse_args()
    datasets = DATASETS
    if args.quick:
        args.epochs, args.seeds, args.members = 2, 2, 2
        datasets = dict(list(DATASETS.items())[:1])
    load_before, start = os.getloadavg()[0], time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    started = None if args.report else ensure_ray(None)
    try:
        for data_name, synth in datasets.items():
            work = WORK / f"seed{synth.seed}"
            data_dir = make_data(work, synth)
            results[data_name] = {}
            for name, overrides in VARIANTS.items():
                # the reference runs as many seeds as the seed ensemble has members: its first seeds are its row
                seeds = max(args.seeds, args.members) if name == REFERENCE else args.seeds
                config = variant_config(name, overrides, data_dir, args.epochs, work)
                print(f"== {data_name}: {name}, {seeds} seeds", file=sys.stderr, flush=True)
                results[data_name][name] = trained(config, work / config.stem, args.report, seeds=seeds)
            config = variant_config(REFERENCE, {}, data_dir, args.epochs, work)
            print(f"== {data_name}: {REFERENCE}, {args.members} splits", file=sys.stderr, flush=True)
            results[data_name]["splits"] = trained(config, work / "splits", args.report, splits=args.members)
    finally:
        if started is not None:
            release_ray(started)

    lines = [
        "# Training recipes, output links and split ensembles against the reference",
        "",
        run_line(args.report, load_before, start),
        f"Data: per data set one synthetic competition scan, {_SIZE['n_neurons']} neurons, {_SIZE['n_trials']} "
        f"trials, {_SIZE['n_test_images']} test images x {_SIZE['test_repeats']} repeats per test tier, the model "
        f"at {RESOLUTION['data.image_height']}x{RESOLUTION['data.image_width']} pixels. Every run: "
        f"configs/sensorium_plus.yaml with the variant's keys, at most {args.epochs} epochs (the reference's "
        "early stopping may end it sooner), seeds 42, 43, ..., two runs at a time on 1 CPU each. Scores: the "
        "competition scan's single-trial correlation on the live (test) and final test tiers.",
        "",
    ]
    for data_name, by_variant in results.items():
        ref = results[data_name][REFERENCE]
        ref_labels = member_labels(ref)[: args.seeds]
        ref_mean = {t: statistics.mean(scores(ref, ref_labels)[s][t] for s in ref_labels) for t in TIERS}
        ref_sd = {t: statistics.stdev(scores(ref, ref_labels)[s][t] for s in ref_labels) if len(ref_labels) > 1
                  else 0.0 for t in TIERS}
        oracle = next(iter(ref["oracle"].values()))
        lines += [f"## {data_name}", "",
                  "| variant | live test, mean ± sd over seeds | vs reference | final test, mean ± sd | "
                  "vs reference | verdict | seed ensemble live / final | epochs run (best epoch) |",
                  "|---|---:|---:|---:|---:|---|---:|---|"]
        for name in VARIANTS:
            summary = by_variant[name]
            labels = member_labels(summary)[: args.seeds]
            got = scores(summary, labels)
            means = {t: statistics.mean(got[s][t] for s in labels) for t in TIERS}
            diff = {t: means[t] - ref_mean[t] for t in TIERS}
            epochs = ", ".join(f"{m['epochs']} ({m['best_epoch']})" for m in summary["members"][: args.seeds])
            ens = "-" if name == REFERENCE and args.members != args.seeds else \
                f"{got['ensemble']['test']:.4f} / {got['ensemble']['final_test']:.4f}"
            lines.append(
                f"| {name} | {mean_sd([got[s]['test'] for s in labels])} | {means['test'] - ref_mean['test']:+.4f} | "
                f"{mean_sd([got[s]['final_test'] for s in labels])} | "
                f"{means['final_test'] - ref_mean['final_test']:+.4f} | "
                f"{'-' if name == REFERENCE else verdict(diff, ref_sd)} | {ens} | {epochs} |")
        lines.append(f"| oracle (noise-free truth) | {oracle['test'][SCORE]:.4f} | | {oracle['final_test'][SCORE]:.4f} "
                     "| | | | |")
        gains = [late_gain(Path(m["run_dir"])) for m in ref["members"]]
        lines += ["", f"The reference's best validation correlation rose by {mean_sd(gains)} over the last quarter "
                  "of each seed's epochs (0: its curve had flattened).", "",
                  f"| {args.members}-member ensemble of the reference | live test | final test | members |",
                  "|---|---:|---:|---|"]
        seeds5 = scores(ref, member_labels(ref))["ensemble"]
        splits = by_variant["splits"]
        split5 = scores(splits, member_labels(splits))["ensemble"]
        lines.append(f"| {args.members} seeds | {seeds5['test']:.4f} | {seeds5['final_test']:.4f} | "
                     f"{', '.join(member_labels(ref))} |")
        lines.append(f"| {args.members} splits | {split5['test']:.4f} | {split5['final_test']:.4f} | "
                     f"{', '.join(member_labels(splits))} |")
        lines.append("")
    lines += ["The defaults stay the reference's: configs/sensorium_plus.yaml is the SENSORIUM+ baseline, pinned by "
              "the tests, and the default search (configs/search_default.yaml) searches `train.recipe.kind` and "
              "`model.link.kind` with their knobs, starting from the baseline.", ""]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
