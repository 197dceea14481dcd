"""Search efficiency: the best model each search method finds against the compute it spent to find it.

Every method searches configs/search_bench.yaml (the SENSORIUM+ baseline, a small search space, an epoch cap)
on the same synthetic scans, 2 trials at a time at 1 CPU each, until the same compute budget is spent
(``search.compute_budget_s``: the trials' summed training seconds, so cheap and expensive architectures pay
what they cost):

- ``random+fifo``: random configurations, each trained to the epoch cap: what one does without this tool;
- ``random+asha``: random configurations, weak ones stopped early by ASHA;
- ``tpe+fifo``: Optuna's TPE proposes, no early stopping;
- ``tpe+asha``: TPE + ASHA, this tool's default;
- ``bohb``: Ray Tune's TuneBOHB searcher with its HyperBandForBOHB scheduler, a multi-fidelity Bayesian
  method (needs ``pip install hpbandster ConfigSpace``, left out with a note without them).

Each search traces the best validation correlation found so far (best_val_corr of the best trial) against
the compute spent so far (train_seconds summed in the order the results arrived; also trial-epochs). The
table gives, per method, the final best (mean ± sd over search seeds), the compute it needs to reach random
search's final best and the ratio random / method; the figure the traces (mean and range over seeds).
Ray is started once; each search has its own run folder under runs/bench_search/.

    .venv/bin/python bench/bench_search.py            # 5 methods x 3 seeds: about 50 min on 2 CPUs
    .venv/bin/python bench/bench_search.py --quick    # random+fifo and tpe+asha, 1 seed, 40 s budget: ~2 min
    .venv/bin/python bench/bench_search.py --reuse --extend-baseline 3   # + random+fifo to 3x the budget

Where a seed of random search ends short of random's mean final best, the compute it needs to reach it is
only bounded (``≥``); ``--extend-baseline X`` runs random+fifo on to X times the budget (same seeds) and
measures it there.

Writes results/bench_search.md and results/bench_search.png (``--quick``: under runs/bench_search/quick/).
Ablations of the default, one setting changed each (ABLATIONS below), for tuning the defaults:

    .venv/bin/python bench/bench_search.py --reuse --methods random+fifo tpe+asha tpe+asha:grace1 tpe+asha:best

reads the two reference methods back from the main run and writes results/bench_search_ablations.{md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from search.raytune.driver import ensure_ray, release_ray, run_search
from search.raytune.prepare import absolute_data_paths, prepare_caches
from search.store.results import ENDED, TrialRecord, compute_spent, load_trials
from search.spec.settings import plain_settings
from search.spec.space import SearchSpec, load_run_spec, load_search, with_data, with_settings
from sensorium.config import set_value
from sensorium.data.synth import SynthConfig, generate
from sensorium.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
SEARCH_FILE = ROOT / "configs" / "search_bench.yaml"
WORK = ROOT / "runs" / "bench_search"
MARKER = "bench_search.json"  # written into a search's folder when it ended: its wall time
# the settings each method changes in the search file (None: bohb, run by run_bohb below)
METHODS: dict[str, dict | None] = {
    "random+fifo": {"sampler": "random", "scheduler": "fifo"},
    "random+asha": {"sampler": "random", "scheduler": "asha"},
    "tpe+fifo": {"sampler": "tpe", "scheduler": "fifo"},
    "tpe+asha": {"sampler": "tpe", "scheduler": "asha"},
    "bohb": None,
}
# one change each to the default (tpe+asha), for tuning the defaults: run with --methods (together with
# random+fifo, the reference, and tpe+asha; --reuse reads those two from the main run); their table and
# figure go to results/bench_search_ablations.{md,png}
ABLATIONS: dict[str, dict] = {
    "tpe+asha:grace1": {"sampler": "tpe", "scheduler": "asha", "asha": {"grace_period": 1}},
    "tpe+asha:rf3": {"sampler": "tpe", "scheduler": "asha", "asha": {"reduction_factor": 3.0}},
    "tpe+asha:best": {"sampler": "tpe", "scheduler": "asha", "metric": "best_val_corr"},
    "tpe+asha:noliar": {"sampler": "tpe", "scheduler": "asha", "tpe": {"constant_liar": False}},
    "tpe+asha:startup2": {"sampler": "tpe", "scheduler": "asha", "tpe": {"n_startup_trials": 2}},
}
BASELINE = "random+fifo"  # the reference every method is compared with: random configs, no early stopping
QUICK_METHODS = ("random+fifo", "tpe+asha")
FULL_BUDGET_S = 180.0  # training seconds per search: 2.5-5 min wall at 2 trials at a time (bohb the longest)
QUICK_BUDGET_S = 40.0
# 2 scans x 300 neurons x 600 trials at 36x64 (about 420 train and 105 validation trials per scan), with twice
# the default stimulus drive: validation correlation then rises steadily within the 8 epochs instead of
# drifting in the noise of 105 validation images.
# Measured on 1 CPU: an epoch of the smallest model of the space 0.5 s, of a mid-size one 1.5-2 s, of the
# largest 5-6 s (the compute budget charges each what it costs).
SYNTH = SynthConfig(seed=0, n_scans=2, n_competition=1, n_neurons=300, n_trials=600, image_height=36,
                    image_width=64, n_test_images=10, test_repeats=5, validation_fraction=0.2, signal_strength=2.0)


@dataclass
class Search:
    """One search: its trace, one point per result in arrival order: (compute s, trial-epochs, best so far)."""

    method: str
    seed: int
    trace: list[tuple[float, int, float]]
    trials: int
    stopped: int  # trials cut short: by ASHA / HyperBand, or still running when the budget was spent
    wall_s: float
    budget_factor: float = 1.0  # > 1: the reference method run on past the common budget (--extend-baseline)

    @property
    def final(self) -> tuple[float, int, float]:
        return self.trace[-1] if self.trace else (0.0, 0, math.nan)


def make_data(work: Path, synth: SynthConfig = SYNTH) -> Path:
    """Synthetic scans under ``work``/synth: generated once, reused while ``synth`` is unchanged."""
    oracle = work / "synth" / "ground_truth" / "oracle.json"
    if oracle.is_file() and json.loads(oracle.read_text())["config"] == asdict(synth):
        return work / "synth" / "data"
    return generate(work / "synth", synth, progress=False, overwrite=True).data_dir


def read_trace(records: list[TrialRecord]) -> list[tuple[float, int, float]]:
    """The search's epochs in arrival order (Tune's per-result timestamp, 1 s resolution), each epoch of a
    trial once (as the compute budget counts them), as (compute s, trial-epochs, best val corr so far)."""
    rows = [(row["timestamp"], row["epoch"], r.trial_id, float(row.get("train_seconds", 0.0)),
             row.get("best_val_corr")) for r in records for row in r.curve]  # ties: by epoch, then trial
    trace, seconds, best = [], 0.0, -math.inf
    for epochs, (*_, train_s, score) in enumerate(sorted(rows, key=lambda row: row[:3]), 1):
        seconds += train_s
        if isinstance(score, (int, float)) and math.isfinite(score):
            best = max(best, score)
        trace.append((seconds, epochs, best if math.isfinite(best) else math.nan))
    return trace


def bench_spec(data_dir: Path, budget_s: float, search_file: Path = SEARCH_FILE) -> SearchSpec:
    """The search every method runs: ``search_file`` on the scans in ``data_dir`` (their cache next to them),
    with the compute budget ``budget_s``."""
    spec = with_data(load_search(search_file), [str(data_dir)])
    base = absolute_data_paths(set_value(spec.base, "data.cache_dir", str(Path(data_dir).parent / "cache")))
    return with_settings(dataclasses.replace(spec, base=base), compute_budget_s=budget_s)


def method_spec(spec: SearchSpec, method: str, seed: int) -> SearchSpec:
    """``spec`` as ``method`` runs it with sampler seed ``seed`` (bohb: the tool's sampler settings unused)."""
    changes = {**METHODS, **ABLATIONS}[method] or {}
    current = plain_settings(spec.settings)
    nested = {k: {**current[k], **v} for k, v in changes.items() if isinstance(v, dict)}  # asha, tpe: one key
    return with_settings(spec, **{**changes, **nested}, seed=seed)


def finished(spec: SearchSpec, run_dir: Path) -> bool:
    """True when ``run_dir`` holds a search of exactly ``spec`` that ran to its end: every trial ended and the
    compute budget spent (``--reuse`` reads such a search instead of running it again)."""
    if not (run_dir / MARKER).is_file():
        return False
    try:
        same = load_run_spec(run_dir).to_dict() == spec.to_dict()  # as search.yaml holds it
    except UserError:
        return False
    records = load_trials(run_dir, spec.settings.asha.max_t)
    ended = all(r.status in ENDED for r in records)
    return same and ended and compute_spent(records)[0] >= (spec.settings.compute_budget_s or math.inf)


def run_one(spec: SearchSpec, method: str, seed: int, run_dir: Path, *, reuse: bool = False) -> Search:
    """One search of ``method`` with sampler seed ``seed`` until the spec's compute budget, into ``run_dir``;
    with ``reuse``, a search that already finished there is read back instead (its wall time as recorded)."""
    spec = method_spec(spec, method, seed)
    if reuse and finished(spec, run_dir):
        wall = json.loads((run_dir / MARKER).read_text())["wall_s"]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh folder: a search run folder is never reused
        start = time.perf_counter()
        if method == "bohb":
            run_bohb(spec, run_dir)
        else:
            run_search(spec, run_dir, progress=False, live_every_s=1e9)
        wall = time.perf_counter() - start
        (run_dir / MARKER).write_text(json.dumps({"wall_s": wall}))
    records = load_trials(run_dir, spec.settings.asha.max_t)
    ran = [r for r in records if r.epochs > 0]
    stopped = sum(r.status == "stopped" for r in ran)
    return Search(method, seed, read_trace(records), len(ran), stopped, wall)


def run_benchmark(spec: SearchSpec, work: Path, *, methods: tuple[str, ...], seeds: int, reuse: bool = False,
                  extend: float = 1.0) -> list[Search]:
    """Every method x seed of ``spec``, one Ray for all, each search in its own folder under ``work``/runs
    (``reuse``: the searches that finished there before are read, not run again). ``extend`` > 1: the
    reference method (BASELINE) also runs each seed on to ``extend`` x the budget, so that the compute it
    needs to reach its own final best is measured where a seed falls short of it within the budget."""
    prepare_caches(spec.base, progress=False)  # once, before any search (each search checks it again: a no-op)
    s = spec.settings
    runs = [(method, seed, 1.0) for method in methods for seed in range(seeds)]
    if extend > 1 and BASELINE in methods:
        runs += [(BASELINE, seed, extend) for seed in range(seeds)]
    started = ensure_ray(None, num_cpus=int(math.ceil(s.max_concurrent * s.cpus_per_trial)))
    searches = []
    try:
        for method, seed, factor in runs:
            budget = s.compute_budget_s * factor
            name = f"{method}-seed{seed}" if factor == 1 else f"{method}-x{factor:g}-seed{seed}"
            print(f"== {method}, seed {seed}: budget {budget:g} s of training", flush=True)
            one = run_one(with_settings(spec, compute_budget_s=budget), method, seed, work / "runs" / name,
                          reuse=reuse)
            searches.append(dataclasses.replace(one, budget_factor=factor))
            print(f"== {method}, seed {seed}: best {one.final[2]:.4f} after {one.final[0]:.0f} s of training "
                  f"({one.trials} trials, {one.wall_s:.0f} s wall)", flush=True)
    finally:
        release_ray(started)
    return searches


# ----------------------------------------------------------------------------------------------- summary
def summarize(searches: list[Search]) -> list[dict]:
    """Per method: final best (mean, sd), compute spent, and the compute to reach random search's final best.

    A seed that never reaches it counts with all the compute it spent (a lower bound: the row says ``≥``), so
    the mean is honest where some seeds fall short; ``not reached`` when no seed reached it. Where the
    reference method also ran on past the budget (``budget_factor`` > 1), its compute to reach the target is
    read from those longer searches (same seeds); everything else from the searches at the common budget.
    """
    longer = {s.seed: s for s in searches if s.budget_factor > 1}
    searches = [s for s in searches if s.budget_factor == 1]
    methods = list(dict.fromkeys(s.method for s in searches))
    baseline = BASELINE if BASELINE in methods else methods[0]
    target = statistics.fmean(s.final[2] for s in searches if s.method == baseline)
    rows = []
    for method in methods:
        group = [s for s in searches if s.method == method]
        finals = [s.final[2] for s in group]
        if method == baseline and longer:
            group_reach = [longer.get(s.seed, s) for s in group]
        else:
            group_reach = group
        reach = [next((p for p in s.trace if p[2] >= target), None) for s in group_reach]
        to_target = [p or s.final for p, s in zip(reach, group_reach)]
        rows.append({
            "method": method, "seeds": len(group), "best": statistics.fmean(finals),
            "sd": statistics.stdev(finals) if len(finals) > 1 else math.nan,
            "trials": statistics.fmean(s.trials for s in group), "stopped": statistics.fmean(s.stopped for s in group),
            "spent_s": statistics.fmean(s.final[0] for s in group),
            "spent_epochs": statistics.fmean(s.final[1] for s in group),
            "reached": sum(p is not None for p in reach), "censored": any(p is None for p in reach),
            "to_target_s": statistics.fmean(p[0] for p in to_target),
            "to_target_epochs": statistics.fmean(p[1] for p in to_target),
        })
    base = next(r for r in rows if r["method"] == baseline)
    for r in rows:
        r["target"], r["baseline"] = target, baseline
        r["ratio"] = base["to_target_s"] / r["to_target_s"] if r["reached"] else math.nan
        # a censored baseline makes the ratio a lower bound, a censored method an upper bound
        r["ratio_bound"] = "" if r is base else {(True, False): "≥", (False, True): "≤", (True, True): "~"}.get(
            (base["censored"], r["censored"]), "")
    return rows


def markdown(rows: list[dict], searches: list[Search], spec: SearchSpec, *, seeds: int, command: str,
             data: str, total_s: float, figure: str = "bench_search.png") -> str:
    """The results page: setup, the headline table, every search, machine and command."""
    target, baseline, s = rows[0]["target"], rows[0]["baseline"], spec.settings
    lines = [
        "# Search efficiency: best model found against compute spent",
        "",
        f"Every method searched `configs/search_bench.yaml` (SENSORIUM+ baseline, {len(spec.params)} searched "
        f"parameters, at most {s.asha.max_t} epochs a trial) on the same synthetic scans ({data}), "
        f"{s.max_concurrent} trials at a time at {s.cpus_per_trial:g} CPU each, until **{s.compute_budget_s:g} s "
        f"of training** (`search.compute_budget_s`: the trials' summed `train_seconds`) were spent; "
        f"{seeds} search seed(s) per method. Target: {baseline}'s final best, mean over seeds = "
        f"**{target:.4f}**.",
        "",
        *[f"- `{m}` changes the search file's settings by `{json.dumps(ABLATIONS[m])}`" for m in
          dict.fromkeys(s.method for s in searches) if m in ABLATIONS],
        "",
        "| method | final best val corr (mean ± sd) | trials (cut short) | compute spent: s / trial-epochs "
        f"| to reach {baseline}'s final best: s | trial-epochs | seeds that reached it | {baseline} / method |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        sd = "–" if math.isnan(r["sd"]) else f"{r['sd']:.4f}"
        bound = "≥ " if r["censored"] else ""
        reach_s = f"{bound}{r['to_target_s']:.0f}" if r["reached"] else "not reached"
        reach_e = f"{bound}{r['to_target_epochs']:.0f}" if r["reached"] else "not reached"
        ratio = "1 (baseline)" if r["method"] == baseline else (
            f"{r['ratio_bound']}{r['ratio']:.2f}x" if r["reached"] else "–")
        lines.append(
            f"| {r['method']} | {r['best']:.4f} ± {sd} | {r['trials']:.1f} ({r['stopped']:.1f}) | "
            f"{r['spent_s']:.0f} / {r['spent_epochs']:.0f} | {reach_s} | {reach_e} | {r['reached']}/{r['seeds']} "
            f"| {ratio} |"
        )
    lines += [
        "",
        "Compute to reach the target: the training seconds (and trial-epochs) spent when the search's best so far "
        "first reached it, mean over seeds; a seed that never reached it counts with all it spent, so `≥` marks "
        "a lower bound, and the ratio becomes a bound in the direction shown (`~`: both are lower bounds). "
        "A search's count passes the budget by the epochs that ended in the step that reached it; epochs in "
        "flight then are cut off and not counted. With the same seed, random and TPE start from the same "
        "configurations (TPE's start-up trials are random), so their comparison is paired.",
        *([f"{baseline}'s own compute to reach the target is read from its searches run on, with the same "
           f"seeds, to {max(x.budget_factor for x in searches):g}x the budget (its final best and every other "
           "column from the searches at the common budget)."] if any(x.budget_factor > 1 for x in searches)
          else []),
        "",
        f"![best val corr against compute]({figure})",
        "",
        "## Every search",
        "",
        "| method | seed | final best | trials | cut short | compute s | trial-epochs | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {s.method}{f' (x{s.budget_factor:g} budget)' if s.budget_factor > 1 else ''} | {s.seed} "
              f"| {s.final[2]:.4f} | {s.trials} | {s.stopped} | {s.final[0]:.0f} | "
              f"{s.final[1]} | {s.wall_s:.0f} |" for s in searches]
    lines += ["", f"Machine: {machine()}. Wall time of this command {total_s / 60:.1f} min (with `--reuse`, the "
              "searches that had finished were read back, each with the wall time recorded when it ran).", "",
              f"Command: `{command}`", ""]
    return "\n".join(lines)


def machine() -> str:
    """CPU model, core count and the versions that matter here."""
    import optuna
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"ray {ray.__version__}, optuna {optuna.__version__}")


def plot(searches: list[Search], rows: list[dict], path: Path) -> None:
    """Best val corr so far against training seconds and trial-epochs: mean over seeds and their range (the
    searches at the common budget)."""
    searches = [s for s in searches if s.budget_factor == 1]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for axis, (column, label) in zip(axes, ((0, "training seconds spent (summed over trials)"),
                                            (1, "trial-epochs spent"))):
        end = max((s.final[column] for s in searches), default=1.0)
        grid = np.linspace(0, end, 300)
        for r in rows:
            group = [s for s in searches if s.method == r["method"] and s.trace]
            curves = np.array([_step(s.trace, column, grid) for s in group])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a seed's first result
                mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
            (line,) = axis.plot(grid, mean, label=f"{r['method']} ({len(group)} seeds)")
            axis.fill_between(grid, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        axis.axhline(rows[0]["target"], color="grey", linestyle="--", linewidth=1,
                     label=f"{rows[0]['baseline']} final best (mean)")
        axis.set_xlabel(label)
        axis.set_ylabel("best validation correlation so far")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Best model found against compute spent (line: mean over seeds; band: min-max)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _step(trace: list[tuple[float, int, float]], column: int, grid: np.ndarray) -> np.ndarray:
    """The best-so-far step function of ``trace`` on ``grid`` (NaN before its first result, flat after its last)."""
    xs = np.array([p[column] for p in trace], dtype=float)
    ys = np.array([p[2] for p in trace], dtype=float)
    index = np.searchsorted(xs, grid, side="right") - 1
    return np.where(index >= 0, ys[np.clip(index, 0, None)], np.nan)


# ------------------------------------------------------------------------------------------------- BOHB
def bohb_available() -> bool:
    """True when TuneBOHB's optional dependencies (hpbandster, ConfigSpace) are installed."""
    try:
        import ConfigSpace  # noqa: F401
        import hpbandster  # noqa: F401
    except ImportError:
        return False
    return True


def run_bohb(spec: SearchSpec, run_dir: Path) -> None:
    """TuneBOHB + HyperBandForBOHB (max_t and reduction factor from ``search.asha``) through Ray Tune, with the
    tool's trainable, run config, callbacks and compute budget (``SearchStopper``).

    HyperBand pauses trials between its rungs and resumes them from their last reported checkpoint, so here
    every epoch ends with one; int ranges with a step become categorical (BOHB has no ordinal type).
    """
    import ConfigSpace as CS
    from ray import tune
    from ray.tune.schedulers.hb_bohb import HyperBandForBOHB
    from ray.tune.search.bohb import TuneBOHB

    from search.raytune.tuner import make_trainable, run_config, trial_name
    from search.store.study import RANK_METRIC

    s = spec.settings
    if spec.conditional():
        raise UserError(f"{spec.source}: the BOHB comparison takes a flat space (no options with their own parameters)")
    space = CS.ConfigurationSpace(seed=s.seed)
    for p in spec.params:
        if p.type == "categorical" or p.step:
            values = list(p.choices) if p.type == "categorical" else list(range(int(p.low), int(p.high) + 1,
                                                                                int(p.step)))
            space.add(CS.CategoricalHyperparameter(p.key, values))
        elif p.type == "int":
            space.add(CS.UniformIntegerHyperparameter(p.key, int(p.low), int(p.high)))
        else:
            space.add(CS.UniformFloatHyperparameter(p.key, p.low, p.high, log=p.type == "loguniform"))
    tune_config = tune.TuneConfig(
        search_alg=TuneBOHB(space=space, metric=RANK_METRIC, mode="max", seed=s.seed),
        scheduler=HyperBandForBOHB(time_attr="epoch", metric=s.metric, mode="max", max_t=s.asha.max_t,
                                   reduction_factor=s.asha.reduction_factor),
        num_samples=s.num_trials, max_concurrent_trials=s.max_concurrent,
        trial_name_creator=trial_name, trial_dirname_creator=trial_name,
    )
    run_dir.mkdir(parents=True)
    trainable = make_trainable(spec, checkpoint_epochs=range(1, s.asha.max_t + 1))
    tuner = tune.Tuner(trainable, tune_config=tune_config,
                       run_config=run_config(run_dir, spec, live_every_s=1e9))
    tuner.fit()


# ------------------------------------------------------------------------------------------------- main
def bench(data_dir: Path, work: Path, out_dir: Path, *, methods: tuple[str, ...], seeds: int, budget_s: float,
          command: str, reuse: bool = False, extend: float = 1.0) -> list[dict]:
    """The whole benchmark (the core the command and the smoke test run): every search on the scans in
    ``data_dir``, run folders under ``work``, then bench_search.md and bench_search.png in ``out_dir`` and the
    raw traces in ``work``/traces.json. Returns the table rows."""
    start = time.perf_counter()
    spec = bench_spec(data_dir, budget_s)
    searches = run_benchmark(spec, work, methods=methods, seeds=seeds, reuse=reuse, extend=extend)
    rows = summarize(searches)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench_search_ablations" if set(methods) & set(ABLATIONS) else "bench_search"
    plot(searches, rows, out_dir / f"{stem}.png")
    text = markdown(rows, searches, spec, seeds=seeds, command=command, data=describe(data_dir),
                    total_s=time.perf_counter() - start, figure=f"{stem}.png")
    if "bohb" not in methods and not bohb_available():
        text += "\nbohb (TuneBOHB + HyperBandForBOHB) not run: `pip install hpbandster ConfigSpace` to add it.\n"
    (out_dir / f"{stem}.md").write_text(text)
    (work / "traces.json").write_text(json.dumps([asdict(s) for s in searches]))
    print(text)
    return rows


def describe(data_dir: Path) -> str:
    """The synthetic scans' size, from their generator's config (next to them), else the folder."""
    oracle = Path(data_dir).parent / "ground_truth" / "oracle.json"
    if not oracle.is_file():
        return str(data_dir)
    c = json.loads(oracle.read_text())["config"]
    return (f"{c['n_scans']} scans x {c['n_neurons']} neurons x {c['n_trials']} trials at "
            f"{c['image_height']}x{c['image_width']}, seed {c['seed']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_METHODS)}, 1 seed, {QUICK_BUDGET_S:g} s budget, under runs/")
    parser.add_argument("--seeds", type=int, help="search seeds per method (default 3; --quick 1)")
    parser.add_argument("--budget", type=float, metavar="S",
                        help=f"compute budget per search, training seconds summed over its trials (default "
                             f"{FULL_BUDGET_S:g}; --quick {QUICK_BUDGET_S:g})")
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, *ABLATIONS],
                        help="default: all (bohb only when hpbandster and ConfigSpace are installed)")
    parser.add_argument("--reuse", action="store_true",
                        help="read the searches that already finished in their run folders (same search, same "
                             "budget) instead of running them again: continues an interrupted benchmark")
    parser.add_argument("--extend-baseline", type=float, default=1.0, metavar="X",
                        help=f"also run {BASELINE} on to X times the budget, to measure the compute it needs to "
                             "reach its own final best where a seed falls short within the budget (default 1: off)")
    args = parser.parse_args(argv)
    if args.extend_baseline < 1:
        parser.error(f"--extend-baseline {args.extend_baseline:g}: expected a factor >= 1")
    methods = tuple(args.methods or (QUICK_METHODS if args.quick else
                                     [m for m in METHODS if m != "bohb" or bohb_available()]))
    if "bohb" in methods and not bohb_available():
        parser.error("method bohb needs: pip install hpbandster ConfigSpace")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = WORK / ("quick" if args.quick else "full")
    bench(make_data(WORK), work, work if args.quick else ROOT / "results", methods=methods,
          seeds=args.seeds or (1 if args.quick else 3),
          budget_s=args.budget or (QUICK_BUDGET_S if args.quick else FULL_BUDGET_S),
          command=" ".join([".venv/bin/python bench/bench_search.py", *(sys.argv[1:] if argv is None else argv)]),
          reuse=args.reuse, extend=args.extend_baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
