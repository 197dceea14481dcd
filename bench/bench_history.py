"""Does the history and state modulator pay? The SENSORIUM+ baseline with and without it, on synthetic data
with history effects (the demo preset) and without them (the same preset with the effects off), the same
epochs and seeds for both, scored on the competition scan's test tiers next to the oracle.

For each data set (``synth`` of ``SynthConfig.demo(history=...)``) and model (configs/sensorium_plus.yaml, the
same with ``model.modulator.kind: history`` at its defaults, and with its weights trained at the full learning
rate, ``lr_scale: 1``), ``retrain`` trains ``--seeds`` seeds (42, 43, ...; two at a
time on ``--cpus-per-seed`` CPUs each) for ``--epochs`` epochs (early stopping may end one earlier; the best epoch is kept) and
scores each seed and their ensemble against the ground truth.

Writes results/bench_history.md: test single-trial correlation and correlation to average per seed, mean ± sd,
the gain of each modulator (mean over seeds, and its sd across seed pairs), the oracle, and training seconds.

    .venv/bin/python bench/bench_history.py [--seeds 3] [--epochs 6]   # about 70 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from bench_search import make_data
from search.raytune.driver import ensure_ray, release_ray
from search.products.retrain import retrain
from sensorium.config import load_config, save_config, set_values
from sensorium.data.synth import SynthConfig

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_history"
OUT = ROOT / "results" / "bench_history.md"
TIERS = ("test", "final_test")
SCORES = ("single_trial_correlation", "correlation_to_average")
MODELS = {  # the first is the reference the others are compared with
    "baseline": {},
    "baseline + history modulator": {"model.modulator.kind": "history"},
    "baseline + history modulator, lr_scale 1": {"model.modulator.kind": "history", "model.modulator.lr_scale": 1.0},
}


def config(name: str, changes: dict, data_dir: Path, epochs: int) -> Path:
    """configs/sensorium_plus.yaml with ``changes``, ``epochs`` as the cap and this data; saved under WORK."""
    cfg = set_values(load_config(ROOT / "configs" / "sensorium_plus.yaml"), {
        **changes, "train.max_epochs": epochs, "data.scans": [str(data_dir)],
        "data.cache_dir": str(data_dir.parent.parent / "cache"),
    })
    path = data_dir.parent.parent / f"{slug(name)}.yaml"
    save_config(cfg, path)
    return path


def slug(name: str) -> str:
    """A model's name as a file name."""
    return name.replace(" ", "_").replace("+", "and").replace(",", "")


def rows(data_name: str, model: str, summary: dict) -> tuple[list[str], list[float]]:
    """Table rows of one model on one data set (seeds, mean ± sd), and its seeds' live-test single-trial scores."""
    scores = summary["scores"]
    key = next(iter(scores["ensemble"]))
    seeds = [k for k in scores if k != "ensemble"]
    out = []
    for label in seeds + ["mean ± sd"]:
        cells = []
        for tier in TIERS:
            for score in SCORES:
                values = [scores[s][key][tier][score] for s in seeds]
                if label == "mean ± sd":
                    sd = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells.append(f"**{statistics.mean(values):.4f}** ± {sd:.4f}")
                else:
                    cells.append(f"{scores[label][key][tier][score]:.4f}")
        out.append(f"| {data_name} | {model} | {label.replace('seed_', 'seed ')} | " + " | ".join(cells) + " |")
    return out, [scores[s][key]["test"]["single_trial_correlation"] for s in seeds]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="models per data set and model (default 3)")
    parser.add_argument("--epochs", type=int, default=6, help="epoch cap of every model (default 6)")
    parser.add_argument("--cpus-per-seed", type=float, default=0.66,
                        help="Ray CPUs per seed task (default 0.66: three seeds at once on 2 CPUs, 1 thread each)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    header = " | ".join(f"{tier} {s.split('_')[0]}" for tier in TIERS for s in SCORES)
    lines = [
        "# Baseline vs baseline + history modulator, on data with and without history effects",
        "",
        f"`{' '.join(['.venv/bin/python', 'bench/bench_history.py', *sys.argv[1:]])}`: {os.cpu_count()} CPUs, "
        f"1-min load average {load_before:.1f} before. Data: `SynthConfig.demo()` (2 scans x 300 neurons, 2000 "
        "trials; the competition scan's test tiers scored), with its history and state effects (adaptation 0.5, "
        "drift 0.4, arousal 0.4) and without them. Models: configs/sensorium_plus.yaml and the same with "
        f"`model.modulator.kind: history` (5 trials, 2-dimensional state, time bumps 0.1 apart; its weights at "
        "`lr_scale` 0.1, the default, or 1, the full learning rate), at most "
        f"{args.epochs} epochs each (best epoch kept), seeds 42, 43, ... as Ray tasks of {args.cpus_per_seed:g} CPU "
        "(1 thread) each.",
        "",
        f"| data | model | seed | {header} |",
        "|---|---|---|" + "---:|" * (len(TIERS) * len(SCORES)),
    ]
    gains, oracles, seconds = [], {}, []
    started = ensure_ray(None)
    try:
        for data_name, history in (("with history effects", True), ("without history effects", False)):
            work = WORK / ("history" if history else "plain")
            data_dir = make_data(work, SynthConfig.demo(history=history))
            live: dict[str, list[float]] = {}
            for model, changes in MODELS.items():
                print(f"== {data_name}: {model}", file=sys.stderr, flush=True)
                summary = retrain(config(model, changes, data_dir, args.epochs),
                                  out=work / slug(model), seeds=args.seeds,
                                  force=True, ground_truth=work / "synth" / "ground_truth",
                                  cpus_per_seed=args.cpus_per_seed)
                table, live[model] = rows(data_name, model, summary)
                lines += table
                oracles[data_name] = next(iter(summary["oracle"].values()))
                seconds.append((data_name, model, [m["seconds"] for m in summary["members"]],
                                [m["epochs"] for m in summary["members"]]))
            reference = live.pop("baseline")
            for model, scores in live.items():
                diffs = [b - a for a, b in zip(reference, scores)]
                gains.append((data_name, model, statistics.mean(diffs),
                              statistics.stdev(diffs) if len(diffs) > 1 else 0.0, statistics.mean(reference)))
            oracle = oracles[data_name]
            lines.append(f"| {data_name} | oracle (noise-free truth) | - | " + " | ".join(
                f"{oracle[tier][s]:.4f}" for tier in TIERS for s in SCORES) + " |")
    finally:
        release_ray(started)
    lines += ["", "| data | model | gain over the baseline, live test single-trial (mean of seed pairs ± sd) "
              "| relative to the baseline |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {model} | {mean:+.4f} ± {sd:.4f} | {mean / base:+.1%} |"
              for name, model, mean, sd, base in gains]
    lines += ["", "| data | model | epochs per seed | training s per seed |", "|---|---|---|---|"]
    lines += [f"| {d} | {m} | {', '.join(map(str, e))} | {', '.join(f'{s:.0f}' for s in sec)} |"
              for d, m, sec, e in seconds]
    lines += ["", f"1-min load average after: {os.getloadavg()[0]:.1f}."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
