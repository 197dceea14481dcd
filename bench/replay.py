"""Replay searches on a recorded learning-curve table (bench/curves.py) in simulated time.

The production stack is what gets replayed: the searcher this tool builds (``search.raytune.tuner.StudySearch`` with
``make_sampler``'s seeded TPE or random sampler, the fidelity-aware feedback; or Ray's plain ``OptunaSearch``,
as it was before it) and Ray's own ``ASHAScheduler`` / ``FIFOScheduler`` objects, called with the results a
trial would report, epoch by epoch. Time is simulated by ``mfhpo-simulator``'s ask-and-tell worker manager
(asynchronous workers, each result told in order of the simulated time it arrives; a trial's next epoch
charged only its own cost): each job is one epoch of one trial, so ASHA decides on every epoch exactly as in a
run, and a trial it lets continue goes on on the same worker. (The simulator's own continuation bookkeeping,
``continual_max_fidel``, is not used: in mfhpo-simulator 1.4.6 the ask-and-tell manager keeps the charged
increment as the state's runtime, so a third and later continuation of a trial is overcharged; the objective
here returns each epoch's own cost instead.)

A configuration the searcher proposes is looked up in the table by its nearest recorded configuration
(numeric keys on the unit scale of their range, log scale for loguniform; a categorical mismatch counts 1:
the 1-nearest-neighbour surrogate Syne Tune uses for tabulated benchmarks). Its seed is drawn among the seeds
recorded for it. A sampler that concentrates its proposals meets the table's coarseness: on table A (111 runs)
one TPE+ASHA search's 661 proposals fell on 25 configurations, 561 of them on one, whose recorded curve then
repeats; a real search would try 561 distinct neighbours. ``--lookup fresh`` brackets it from the other side: the
nearest configuration the search has not proposed before (while there is one), novelty without locality. An epoch's cost is its recorded CPU seconds, less the recording's own checkpoint writes (bench/curves.py).

    .venv/bin/python bench/replay.py --table A --seeds 100 --workers 2 8 32
    .venv/bin/python bench/replay.py --table A --quick          # 3 methods x 5 seeds: a smoke test

Writes results/bench_search_replay.md (``--out``) and its figure of anytime curves (.png).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import gzip
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench/curves.py, for the real searches' data and settings

from curves import checkpoint_cpu_s  # noqa: E402
from search.spec.space import Param, SearchSpec, load_search  # noqa: E402
from sensorium.atomic import write_text  # noqa: E402

SEARCH_FILE = ROOT / "configs" / "search_curves.yaml"  # the tables' frozen space
RESULTS = ROOT / "results"
TARGETS = (0.10, 0.05, 0.02)  # top fractions of the table's final scores
# The simulator adds each ask's real wall time (the sampler's own work) to its clock. Here an epoch costs about a
# second and a proposal 30 ms (TPE at 300 trials) to 1 s (GP), on a real scan an epoch costs minutes: costs are
# handed to the simulator in milliseconds, so that the sampler's time weighs as little as it does there.
TIME_SCALE = 1000.0
DRAIN_S = 1e9  # a drain job's cost (Stack.ask): beyond any budget


# ---------------------------------------------------------------- the table

@dataclass
class Curve:
    """One recorded run: per epoch (index e = epoch e + 1)."""

    val: np.ndarray  # validation correlation of that epoch
    best: np.ndarray  # best validation correlation so far
    test: np.ndarray  # live-test correlation of the best weights so far
    cost: np.ndarray  # cumulative cost (CPU seconds) at the end of that epoch
    ended: bool  # the recipe's early stopping ended it before the table's epoch count


@dataclass
class Table:
    name: str
    epochs: int  # R
    points: list[dict[str, Any]]  # configuration index -> its point of the space
    curves: dict[int, dict[int, Curve]]  # configuration -> seed -> curve
    first_seed: int = 42
    _coords: np.ndarray | None = field(default=None, repr=False)

    @property
    def configs(self) -> list[int]:
        return sorted(c for c in self.curves if self.first_seed in self.curves[c])

    def final(self, config: int) -> float:
        """A configuration's final score: best validation correlation of its first-seed run."""
        return float(self.curves[config][self.first_seed].best[-1])

    def thresholds(self) -> dict[float, float]:
        """Top fraction -> the score a search must reach (quantile of the final scores)."""
        finals = np.array([self.final(c) for c in self.configs])
        return {q: float(np.quantile(finals, 1 - q)) for q in TARGETS}

    def mean_full_cost(self) -> float:
        return float(np.mean([self.curves[c][self.first_seed].cost[-1] for c in self.configs]))


def load_table(name: str, results: Path = RESULTS, cost: str = "cpu_s") -> Table:
    """The committed table results/curves_<name>.csv.gz (+ _configs.csv); an epoch costs its ``cost`` column:
    ``cpu_s`` (process CPU seconds less the recording's per-epoch checkpoint writes, the default) or ``train_s`` (fit's training wall seconds, what a real
    search's compute budget counts; runs recorded before it existed get their cpu_s times the median
    train_s / cpu_s ratio of the others)."""
    points: dict[int, dict[str, Any]] = {}
    parameters: dict[int, int] = {}
    with open(results / f"curves_{name}_configs.csv", newline="") as f:
        for row in csv.DictReader(f):
            points[int(row["config"])] = json.loads(row["point"])
            parameters[int(row["config"])] = int(row["n_parameters"])
    rows: dict[tuple[int, int], list[dict[str, str]]] = {}
    with gzip.open(results / f"curves_{name}.csv.gz", "rt", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault((int(row["config"]), int(row["seed"])), []).append(row)
    for (config, _seed), runs in rows.items():  # the recording's per-epoch checkpoint writes: a search's are rare
        for r in runs:
            r["cpu_s"] = max(float(r["cpu_s"]) - checkpoint_cpu_s(parameters[config]), 0.0)
    if cost != "cpu_s":
        ratios = [float(r[cost]) / float(r["cpu_s"]) for runs in rows.values() for r in runs
                  if r.get(cost) not in (None, "") and float(r["cpu_s"]) > 0]
        ratio = float(np.median(ratios)) if ratios else 1.0
        for runs in rows.values():
            for r in runs:
                r["cpu_s"] = r[cost] if r.get(cost) not in (None, "") else float(r["cpu_s"]) * ratio
    return table_from_rows(name, points, rows)


def table_from_rows(name: str, points: dict[int, dict[str, Any]], rows: dict[tuple[int, int], list[dict]],
                    epochs: int | None = None) -> Table:
    """A Table from per-epoch rows (keys: epoch, val_corr, best_val_corr, test_corr, cpu_s, and ``ended``)."""
    r = epochs or max(int(row["epoch"]) for runs in rows.values() for row in runs)
    curves: dict[int, dict[int, Curve]] = {}
    for (config, seed), runs in rows.items():
        runs = sorted(runs, key=lambda row: int(row["epoch"]))
        if not runs:
            continue
        val = np.array([float(x["val_corr"]) for x in runs])
        curves.setdefault(config, {})[seed] = Curve(
            val=np.nan_to_num(val, nan=-1.0),
            best=np.maximum.accumulate(np.nan_to_num(np.array([float(x["best_val_corr"]) for x in runs]), nan=-1.0)),
            test=np.array([float(x["test_corr"]) for x in runs]),
            cost=np.cumsum([float(x["cpu_s"]) for x in runs]),
            ended=len(runs) < r,
        )
    return Table(name, r, [points.get(i, {}) for i in range(max(points) + 1)], curves)


# ---------------------------------------------------------------- nearest recorded configuration

def _encode(params: list[Param], point: dict[str, Any]) -> np.ndarray:
    """A point as a vector: numeric keys on [0, 1] of their range (log scale for loguniform), a categorical key
    one-hot scaled by 1/sqrt(2) (a mismatch adds 1 to the squared distance); a key the point does not have
    (an option it does not choose) sits at the middle."""
    out: list[float] = []
    for p in params:
        v = point.get(p.key)
        if p.type == "categorical":
            hot = [0.0] * len(p.choices)
            if v is not None:
                hot[[str(c) for c in p.choices].index(str(v))] = math.sqrt(0.5)
            out += hot
        elif v is None:
            out.append(0.5)
        elif p.type == "loguniform":
            out.append((math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)))
        else:
            out.append((float(v) - p.low) / (p.high - p.low))
    return np.array(out)


class Lookup:
    """Proposed point -> nearest configuration of the table (among those recorded)."""

    def __init__(self, spec: SearchSpec, table: Table) -> None:
        self.params = list(spec.first_params().values())
        self.configs = np.array(table.configs)
        self.coords = np.stack([_encode(self.params, table.points[c]) for c in self.configs])

    def __call__(self, point: dict[str, Any], exclude: set[int] | frozenset[int] = frozenset()) -> int:
        """The nearest configuration, or the nearest not in ``exclude`` while there is one."""
        d = ((self.coords - _encode(self.params, point)) ** 2).sum(axis=1)
        if exclude and len(exclude) < len(self.configs):
            d[np.isin(self.configs, list(exclude))] = np.inf
        return int(self.configs[int(np.argmin(d))])


# ---------------------------------------------------------------- the production stack, ask and tell

@dataclass
class Method:
    """How a search runs: sampler settings, the scheduler, the searcher class (``study``: this tool's
    StudySearch; ``ray``: Ray's OptunaSearch as it was)."""

    sampler: str = "tpe"
    scheduler: str = "asha"  # asha | fifo
    searcher: str = "study"
    asha: dict[str, Any] = field(default_factory=dict)  # grace_period, reduction_factor, brackets
    rungs_in: str = "epochs"  # epochs | training_seconds (search.asha.rungs_in: the production SecondsASHA)
    gp: bool = False
    bohb: bool = False  # Syne Tune's BOHB (its own KDE searcher and asynchronous successive halving)

    @property
    def slow(self) -> bool:
        """Seconds per replayed search rather than a fraction of one (GP: 40 s at 650 epochs; BOHB: 6 s)."""
        return self.gp or self.bohb


METHODS: dict[str, Method] = {
    "random": Method(sampler="random", scheduler="fifo"),
    "random+asha": Method(sampler="random"),
    "tpe": Method(scheduler="fifo"),
    "tpe+asha (as it was)": Method(searcher="ray"),
    "tpe+asha": Method(),
    "top-1/9 at 3 epochs": Method(sampler="random", asha={"grace_period": 3, "reduction_factor": 9}),
    "hyperband (async, 3 brackets)": Method(sampler="random", asha={"brackets": 3}),
    "tpe+asha grace 3": Method(asha={"grace_period": 3}),
    # first rung where early epochs begin to rank configurations (table A, 111 runs: Spearman with epoch 27
    # -0.08 at epoch 1, 0.17 at 3, 0.57 at 9)
    "tpe+asha grace 9": Method(asha={"grace_period": 9}),
    "random+asha grace 9": Method(sampler="random", asha={"grace_period": 9}),
    "tpe+asha rf 2": Method(asha={"reduction_factor": 2}),
    "tpe+asha on seconds": Method(rungs_in="training_seconds"),
    "gp": Method(scheduler="fifo", gp=True),
    "gp+asha": Method(gp=True),
    "bohb (syne tune)": Method(bohb=True),
}


def make_stack(spec: SearchSpec, method: Method, table: Table, lookup: Lookup, seed: int, **kwargs: Any):
    """The ask-and-tell optimizer of ``method``: this tool's stack, or Syne Tune's BOHB."""
    return (SyneStack if method.bohb else Stack)(spec, method, table, lookup, seed, **kwargs)


class Stack:
    """One search of ``method`` as an ask-and-tell optimizer of mfhpo-simulator (jobs = one epoch of a trial)."""

    def __init__(self, spec: SearchSpec, method: Method, table: Table, lookup: Lookup, seed: int, *,
                 start_with: bool = True, until: float | None = None, fresh: bool = False,
                 max_told: int | None = None) -> None:
        import optuna
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search.optuna import OptunaSearch

        from search.raytune.tuner import SecondsASHA, StudySearch, TreeSpace, make_sampler
        from search.store.study import RANK_METRIC

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        s = spec.settings
        # (settings replaced without with_settings: its validation builds configs, 10 s a search)
        spec = dataclasses.replace(spec, settings=dataclasses.replace(s, sampler=method.sampler, seed=seed))
        if method.gp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.tpe.n_startup_trials)
        else:
            sampler = make_sampler(spec)
        common = dict(space=TreeSpace(spec), metric=RANK_METRIC, mode="max", sampler=sampler,
                      points_to_evaluate=[dict(p) for p in s.start_with] if start_with else None)
        self.searcher = (StudySearch(**common, max_t=table.epochs) if method.searcher == "study"
                         else OptunaSearch(**common))
        np.random.seed(seed)  # ASHA draws a trial's bracket from numpy's global generator
        if method.scheduler == "fifo":
            self.scheduler = FIFOScheduler()
        else:
            a = {"grace_period": 1, "reduction_factor": 3, **method.asha}
            if method.rungs_in == "training_seconds":  # trials end at the table's epochs (Stack.tell)
                self.scheduler = SecondsASHA(metric="val_corr", **a)
            else:
                self.scheduler = ASHAScheduler(time_attr="epoch", metric="val_corr", mode="max", max_t=table.epochs,
                                               **a)
        self._start(table, lookup, seed, until, fresh, max_told)

    def _start(self, table: Table, lookup: Lookup, seed: int, until: float | None, fresh: bool,
               max_told: int | None) -> None:
        """The search's own state, shared by every stack."""
        self.table, self.lookup, self.rng = table, lookup, np.random.default_rng(seed)
        self.trials: dict[int, SimpleNamespace] = {}
        self.next: tuple[int, int] | None = None  # (trial, epoch) the worker just told continues with
        self.until = until  # end the search once a result reaches it (``reached``; see ``ask``)
        self.max_told = max_told  # or once this many epochs have been told
        self.reached = False
        self.fresh, self.used = fresh, set()  # fresh: no configuration twice while unused ones remain
        # per told epoch: trial number, configuration, its best_val_corr, test correlation, the epoch's cost
        self.trace: list[tuple[int, int, float, float, float]] = []

    def ask(self) -> tuple[dict[str, Any], dict[str, int], int]:
        """The next job: the trial the worker just told continues, or a new trial. Once ``until`` is reached,
        a drain job that ``objective`` charges past any budget, so that the simulator ends without asking the
        sampler again (one per worker)."""
        if self.reached:
            number = len(self.trials)
            self.trials[number] = SimpleNamespace(drain=True)
            return {"config": self.table.configs[0], "seed": self.table.first_seed, "drain": True}, {"epoch": 1}, number
        if self.next is not None:
            number, epoch = self.next
            self.next = None
        else:
            number, epoch = len(self.trials), 1
            self.trials[number] = self._new_trial(number)
        t = self.trials[number]
        return {"config": t.config, "seed": t.seed}, {"epoch": epoch}, number

    def tell(self, eval_config: dict[str, Any], results: dict[str, float], fidels: dict[str, int],
             config_id: int) -> None:
        from search.store.schema import FIT_DONE

        t = self.trials[config_id]
        if getattr(t, "drain", False) or self.reached:  # after the end: results in flight are not told
            return
        epoch = int(fidels["epoch"])
        curve = self.table.curves[t.config][t.seed]
        cost = float(curve.cost[epoch - 1] - (curve.cost[epoch - 2] if epoch > 1 else 0.0))
        result = {"epoch": epoch, "training_iteration": epoch, "val_corr": float(curve.val[epoch - 1]),
                  "best_val_corr": float(curve.best[epoch - 1]), "train_seconds": cost}
        last = epoch >= len(curve.val)
        if last and curve.ended:
            result[FIT_DONE] = epoch
        self.trace.append((config_id, t.config, result["best_val_corr"], float(curve.test[epoch - 1]), cost))
        if (self.until is not None and result["best_val_corr"] >= self.until) or (
                self.max_told is not None and len(self.trace) >= self.max_told):
            self.reached = True
            return
        if not self._decide(t, result, last or epoch >= self.table.epochs):
            self.next = (config_id, epoch + 1)

    def _new_trial(self, number: int) -> SimpleNamespace:
        """Ask the searcher for trial ``number``'s point, look it up in the table, add it to the scheduler."""
        from ray.tune.utils.util import flatten_dict

        tid = f"t{number:05d}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = self.searcher.suggest(tid)
        c = self._look_up(flatten_dict(config))  # Tune's nesting undone
        trial = SimpleNamespace(trial_id=tid, config=c, seed=int(self.rng.choice(sorted(self.table.curves[c]))))
        self.scheduler.on_trial_add(None, trial)
        return trial

    def _look_up(self, point: dict[str, Any]) -> int:
        """The table's configuration for a proposed point: the nearest (``fresh``: the nearest this search has not
        proposed before, while there is one)."""
        c = self.lookup(point, self.used if self.fresh else frozenset())
        self.used.add(c)
        return c

    def _decide(self, t: SimpleNamespace, result: dict[str, Any], last: bool) -> bool:
        """Tell the scheduler and the searcher one epoch's result as Tune does; True when the trial ends (the
        scheduler stops it, or ``last``: its fit ended or it reached max_t)."""
        from ray.tune.schedulers import TrialScheduler

        stop = self.scheduler.on_trial_result(None, t, result) == TrialScheduler.STOP or last
        if stop:  # the result a trial stops on reaches the searcher only through on_trial_complete
            self.searcher.on_trial_complete(t.trial_id, result)
            if t.trial_id in getattr(self.scheduler, "_trial_info", {}):
                self.scheduler.on_trial_complete(None, t, result)
        else:
            self.searcher.on_trial_result(t.trial_id, result)
        return stop


def _syne_space(spec: SearchSpec) -> dict[str, Any]:
    """The space as a flat Syne Tune config space (every key, branch keys included: Syne Tune has no
    conditional spaces; a branch key is dropped from the point when its option is not chosen)."""
    from syne_tune import config_space as cs

    out: dict[str, Any] = {}
    for p in spec.first_params().values():
        if p.type == "categorical":
            out[p.key] = cs.choice(list(p.choices))
        elif p.type == "int":
            out[p.key] = cs.finrange(p.low, p.high, int((p.high - p.low) // (p.step or 1)) + 1, cast_int=True)
        elif p.type == "loguniform":
            out[p.key] = cs.loguniform(p.low, p.high)
        else:
            out[p.key] = cs.uniform(p.low, p.high)
    return out


def _active(spec: SearchSpec, point: dict[str, Any]) -> dict[str, Any]:
    from search.spec.space import active_params

    return {p.key: point[p.key] for p in active_params(spec, point) if p.key in point}


class SyneStack(Stack):
    """Syne Tune's BOHB (KDE searcher + asynchronous successive halving at grace 1, reduction 3) behind the same
    ask and tell: its own scheduler decides, Ray and Optuna take no part."""

    def __init__(self, spec: SearchSpec, method: Method, table: Table, lookup: Lookup, seed: int, *,
                 start_with: bool = True, until: float | None = None, fresh: bool = False,
                 max_told: int | None = None) -> None:
        from syne_tune.optimizer.baselines import BOHB

        logging.getLogger("syne_tune").setLevel(logging.ERROR)  # "points_to_evaluate is passed in ..."
        np.random.seed(seed)  # its bracket draw, like Ray's
        a = {"grace_period": 1, "reduction_factor": 3, **method.asha}
        self.spec = spec
        self.scheduler = BOHB(_syne_space(spec), metric="val_corr", time_attr="epoch", max_t=table.epochs,
                              do_minimize=False, random_seed=seed, **a)
        self._start(table, lookup, seed, until, fresh, max_told)

    def _new_trial(self, number: int) -> SimpleNamespace:
        from datetime import datetime

        from syne_tune.backend.trial_status import Trial

        config = self.scheduler.suggest().config
        c = self._look_up(_active(self.spec, config))
        trial = Trial(trial_id=number, config=config, creation_time=datetime.now())
        self.scheduler.on_trial_add(trial)
        return SimpleNamespace(trial_id=number, config=c, seed=int(self.rng.choice(sorted(self.table.curves[c]))),
                               syne=trial)

    def _decide(self, t: SimpleNamespace, result: dict[str, Any], last: bool) -> bool:
        stop = self.scheduler.on_trial_result(t.syne, result) == "STOP"
        if last and not stop:
            self.scheduler.on_trial_complete(t.syne, result)
        return stop or last


# ---------------------------------------------------------------- one search, many searches

def objective(table: Table, trial_start_s: float = 0.0) -> Callable[..., dict[str, float]]:
    """The simulated job: one epoch of a trial costs its own recorded seconds (the trial continues from its
    last epoch); a trial's first epoch also costs ``trial_start_s`` (starting its worker, loading its data,
    building its model: wall time a compute budget does not count)."""

    def run(eval_config: dict[str, Any], fidels: dict[str, int], seed: int | None = None, **_: Any) -> dict:
        if eval_config.get("drain"):  # the search has ended (Stack.ask): past any budget
            return {"runtime": DRAIN_S * TIME_SCALE, "best": -1.0}
        curve = table.curves[eval_config["config"]][eval_config["seed"]]
        e = int(fidels["epoch"])
        start = trial_start_s if e == 1 else 0.0
        cost = start + float(curve.cost[e - 1] - (curve.cost[e - 2] if e > 1 else 0.0))
        return {"runtime": cost * TIME_SCALE, "best": float(curve.best[e - 1])}

    return run


def simulate(spec: SearchSpec, method: Method, table: Table, lookup: Lookup, workers: int, seed: int,
             budget_s: float, stack: Stack | None = None, trial_start_s: float = 0.0) -> np.ndarray:
    """One search: (time s, best validation correlation so far) per told epoch, in simulated-time order;
    ``budget_s`` is the simulated wall time (compute = workers x time). ``stack``: a Stack made by the caller
    (to look into it afterwards); one of ``method`` with ``seed`` by default. ``trial_start_s``: see
    ``objective``."""
    import tempfile

    from benchmark_simulator import ObjectiveFuncWrapper

    stack = stack or make_stack(spec, method, table, lookup, seed)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # "n_workers larger than the number of CPU cores": no worker is a process here
        warnings.simplefilter("ignore")
        wrapper = ObjectiveFuncWrapper(
            obj_func=objective(table, trial_start_s), ask_and_tell=True, n_workers=workers, n_evals=10**7,
            n_actual_evals_in_opt=10**7 + workers, fidel_keys=["epoch"], obj_keys=["best"],
            runtime_key="runtime", max_total_eval_time=budget_s * TIME_SCALE, save_dir_name="replay", tmp_dir=tmp,
            seed=seed,
        )
        wrapper.simulate(stack)
        res = wrapper.get_results()
    times = np.asarray(res["cumtime"], dtype=float) / TIME_SCALE
    best = np.maximum.accumulate(np.asarray(res["best"], dtype=float))
    keep = times <= budget_s
    return np.stack([times[keep], best[keep]], axis=1)


def time_to(trace: np.ndarray, target: float) -> float:
    """Simulated time at which the best so far first reaches ``target`` (inf if never)."""
    hit = np.nonzero(trace[:, 1] >= target)[0] if len(trace) else []
    return float(trace[hit[0], 0]) if len(hit) else math.inf


@dataclass
class Outcome:
    """Per method and worker count: each seed's simulated time to reach each target (inf: not reached)."""

    method: str
    workers: int
    times: dict[float, np.ndarray]  # target fraction -> (seeds,) seconds
    curves: np.ndarray  # (full seeds, grid) best so far on a common time grid (seeds that ran the whole budget)


def run_method(spec: SearchSpec, name: str, table: Table, workers: int, seeds: range, budget_s: float,
               grid: np.ndarray, trial_start_s: float = 0.0, full_seeds: int | None = None,
               fresh: bool = False) -> Outcome:
    """Replay ``name`` with each of ``seeds``. The first ``full_seeds`` (default: all) run the whole budget and
    give the anytime curves; the others end once they reach the highest target, which is all their times to
    the targets need (the sampler's own work grows with the trials told: this halves a replay's cost)."""
    lookup = Lookup(spec, table)
    targets = table.thresholds()
    full = len(seeds) if full_seeds is None else min(full_seeds, len(seeds))
    times = {q: np.full(len(seeds), math.inf) for q in TARGETS}
    curves = np.full((full, len(grid)), np.nan)
    for i, seed in enumerate(seeds):
        stack = make_stack(spec, METHODS[name], table, lookup, seed, until=None if i < full else max(targets.values()),
                           fresh=fresh)
        trace = simulate(spec, METHODS[name], table, lookup, workers, seed, budget_s, stack=stack,
                         trial_start_s=trial_start_s)
        for q, target in targets.items():
            times[q][i] = time_to(trace, target)
        if i < full and len(trace):
            idx = np.searchsorted(trace[:, 0], grid, side="right") - 1
            curves[i] = np.where(idx >= 0, trace[np.maximum(idx, 0), 1], np.nan)
    return Outcome(name, workers, times, curves)


def _method_job(job: tuple) -> Outcome:
    """run_method(*job), in a process of the pool."""
    return run_method(*job)


def save_outcome(o: Outcome, path: Path) -> None:
    """One replayed (method, workers) pair as .npz (times per target, anytime curves), written atomically."""
    from sensorium.atomic import atomic_write

    with atomic_write(path, "wb") as f:
        np.savez(f, method=o.method, workers=o.workers, curves=o.curves,
                 **{f"times_{q}": t for q, t in o.times.items()})


def load_outcome(path: Path) -> Outcome:
    with np.load(path) as z:
        return Outcome(str(z["method"]), int(z["workers"]), {q: z[f"times_{q}"] for q in TARGETS}, z["curves"])


def cache_key(table_file: Path, method: str, workers: int, seeds: int, budget: float, full_seeds: int,
              lookup: str, trial_start_s: float) -> str:
    """The file name of a pair's outcome: everything it depends on, the table by its content's hash."""
    import hashlib

    digest = hashlib.sha1(table_file.read_bytes()).hexdigest()[:10]
    m = hashlib.sha1(repr(dataclasses.asdict(METHODS[method])).encode()).hexdigest()[:6]
    slug = "".join(ch if ch.isalnum() else "-" for ch in method)
    return (f"{table_file.name.split('.')[0]}-{digest}_{slug}-{m}_w{workers}_s{seeds}_b{budget:g}_f{full_seeds}_"
            f"{lookup}_t{trial_start_s:g}.npz")


def median_time(t: np.ndarray) -> float:
    """Median time to target over seeds (inf when fewer than half reached it)."""
    return float(np.median(t)) if np.isfinite(t).mean() > 0.5 else math.inf


def _ratio(r: float, m: float) -> float:
    """random / method of two median times: 0 when the method never reached the target (in half its seeds),
    inf when only the method did, NaN when neither did (no ratio)."""
    if not math.isfinite(m):
        return math.nan if not math.isfinite(r) else 0.0
    return r / m


def speedup_interval(random: np.ndarray, method: np.ndarray, rng: np.random.Generator, n: int = 2000
                     ) -> tuple[float, float, float]:
    """(ratio of median times random / method, bootstrap 2.5% and 97.5% quantiles: seeds of each resampled;
    resamples in which neither reached the target are left out, the quantiles are order statistics so that
    an unbounded end reads inf)."""
    point = _ratio(median_time(random), median_time(method))
    boot = [_ratio(median_time(rng.choice(random, len(random))), median_time(rng.choice(method, len(method))))
            for _ in range(n)]
    boot = [b for b in boot if not math.isnan(b)]
    if not boot:
        return point, math.nan, math.nan
    lo, hi = np.quantile(boot, [0.025, 0.975], method="inverted_cdf")
    return point, float(lo), float(hi)


def exact_random(spec: SearchSpec, table: Table, lookup: Lookup, n: int = 20000, seed: int = 0) -> dict[float, float]:
    """Expected compute (s) for random search without early stopping, one worker, to reach each target: each
    draw is a recorded configuration with the probability that uniform sampling of the space lands nearest to
    it (estimated from ``n`` uniform points); draws before the first configuration that reaches the target
    cost their whole run, that one its cost up to the epoch it reaches it."""
    import optuna

    from search.raytune.tuner import TreeSpace

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = TreeSpace(spec)
    counts: dict[int, int] = {}
    for _ in range(n):
        trial = study.ask()
        space(trial)
        c = lookup(trial.params)
        counts[c] = counts.get(c, 0) + 1
        study.tell(trial, 0.0)
    out = {}
    for q, target in table.thresholds().items():
        p_hit, cost_miss, cost_hit = 0.0, 0.0, 0.0
        for c, k in counts.items():
            w = k / n
            for curve in table.curves[c].values():
                ws = w / len(table.curves[c])
                hit = np.nonzero(curve.best >= target)[0]
                if len(hit):
                    p_hit += ws
                    cost_hit += ws * curve.cost[hit[0]]
                else:
                    cost_miss += ws * curve.cost[-1]
        out[q] = (cost_miss / p_hit) + cost_hit / p_hit if p_hit else math.inf
    return out


def table_statistics(table: Table) -> list[str]:
    """What limits early stopping and selection on this table: how early epochs rank configurations against
    their final score (Spearman), and how far a configuration's final score moves with its seed."""
    from scipy.stats import spearmanr

    configs = table.configs
    final = np.array([table.final(c) for c in configs])
    top = final >= np.quantile(final, 0.9)
    lines = []
    for e in (1, 2, 3, 5, 9, 15, 21):
        if e >= table.epochs:
            continue
        early = np.array([table.curves[c][table.first_seed].best[min(e, len(table.curves[c][table.first_seed].best)) - 1]
                          for c in configs])
        kept = top & (early >= np.quantile(early, 2 / 3))  # what a rung of reduction factor 3 keeps
        lines.append(f"epoch {e}: Spearman {spearmanr(early, final).statistic:.2f}, top-third cut keeps "
                     f"{kept.sum()} of the {top.sum()} final top-10%")
    replicated = [c for c in configs if len(table.curves[c]) > 1]
    seed_noise = "seed noise not measured on this table (no configuration recorded with several seeds)."
    if replicated:
        seed_sd = np.mean([np.std([cv.best[-1] for cv in table.curves[c].values()], ddof=1) for c in replicated])
        seed_noise = f"sd over 3 seeds of one configuration (mean over the {len(replicated)} replicated) {seed_sd:.4f}."
    ended = np.mean([table.curves[c][table.first_seed].ended for c in configs])
    cost = np.array([table.curves[c][table.first_seed].cost[-1] for c in configs])
    return [
        "Rank correlation of the best validation correlation after e epochs with the final one, over "
        f"configurations: {'; '.join(lines)}.",
        f"Final scores: mean {final.mean():.4f}, sd over configurations {final.std(ddof=1):.4f}; {seed_noise}",
        f"{ended:.0%} of the runs ended by the recipe's early stopping before epoch {table.epochs}. Cost of a "
        f"whole run: median {np.median(cost):.0f} s, mean {cost.mean():.0f} s, largest {cost.max():.0f} s "
        "(CPU seconds).",
    ]


def figure(outcomes: list[Outcome], budget_s: dict[int, float], path: Path) -> None:
    """Anytime curves: median (line) and 25-75% band over seeds of the best validation correlation so far
    against compute, one panel per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sensorium.atomic import save_figure

    workers = sorted({o.workers for o in outcomes})
    fig, axes = plt.subplots(1, len(workers), figsize=(5 * len(workers), 4), squeeze=False)
    for ax, w in zip(axes[0], workers, strict=True):
        x = np.linspace(0, budget_s[w] * w, outcomes[0].curves.shape[1])
        for o in (o for o in outcomes if o.workers == w):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # all-NaN columns before the first result
                lo, mid, hi = np.nanpercentile(o.curves, [25, 50, 75], axis=0)
            ax.plot(x, mid, label=o.method)
            ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set(title=f"{w} workers", xlabel="compute (worker CPU-seconds)", ylabel="best validation correlation")
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def _x(ratio: float) -> str:
    return "-" if math.isnan(ratio) else "∞" if math.isinf(ratio) else f"{ratio:.2f}x"


def report(table: Table, outcomes: list[Outcome], exact: dict[float, float], budget_s: dict[int, float],
           seeds: int, notes: list[str], validation: str = "") -> str:
    """The markdown table: per worker count, method x target: median compute to target (worker-seconds),
    speed-up over random with its bootstrap 95% interval, and the share of seeds that reached it; then the
    table's statistics, ``validation`` (the real searches against the replay's band, markdown) and ``notes``."""
    rng = np.random.default_rng(0)
    th = table.thresholds()
    lines = [
        "# Search methods replayed on a recorded learning-curve table",
        "",
        f"Table {table.name}: {len(table.configs)} configurations of configs/search_curves.yaml's space, "
        f"{table.epochs} epochs at most, {sum(len(v) for v in table.curves.values())} runs "
        f"(bench/curves.py). Targets: the top 10 / 5 / 2% of the configurations' final best validation "
        f"correlation = {', '.join(f'{th[q]:.4f}' for q in TARGETS)}. Up to {seeds} seeds per method and "
        f"worker count; compute = workers x simulated time, in CPU seconds of the table (1 thread).",
        "",
        "Random search without early stopping, one worker, exact expectation from the table: "
        + ", ".join(f"top {q:.0%} {exact[q]:.0f} s" for q in TARGETS) + ".",
        "",
    ]
    for w in sorted({o.workers for o in outcomes}):
        group = [o for o in outcomes if o.workers == w]
        base = next((o for o in group if o.method == "random"), None)
        lines += [f"## {w} workers (budget {budget_s[w] * w:.0f} worker-s)", "",
                  "| method | seeds | " + " | ".join(f"top {q:.0%}: median s · speed-up [95%] · reached" for q in TARGETS)
                  + " |", "|---|---|" + "---|" * len(TARGETS)]
        for o in group:
            cells = []
            for q in TARGETS:
                t = o.times[q] * w
                med = median_time(t)
                reach = np.isfinite(t).mean()
                if base is None:
                    sp = ""
                else:
                    point, lo, hi = speedup_interval(base.times[q] * w, t, rng)
                    sp = f" · {_x(point)} [{_x(lo)}, {_x(hi)}]"
                cells.append(f"{med:.0f}{sp} · {reach:.0%}" if math.isfinite(med) else f"> budget{sp} · {reach:.0%}")
            lines.append(f"| {o.method} | {len(o.times[TARGETS[0]])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## The table", "", *[f"- {n}" for n in table_statistics(table)], ""]
    if validation:
        lines += ["## Validation against real searches", "", validation.strip(), ""]
    lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- validation against real searches

def real_spec(table: str, seed: int, budget_s: float, workers: int, rungs_in: str = "epochs") -> SearchSpec:
    """``sensorium-search run configs/search_curves.yaml`` (the table's space) as the table was recorded: its scans at the table's
    resolution and epoch count, 1 thread and 1 CPU per trial, ``workers`` at a time, ASHA at grace 1 and
    reduction 3 on max_t = the table's epochs (the replay's ASHA), its rungs ``rungs_in`` epochs or typical
    epochs of training seconds, until ``budget_s`` training seconds are spent."""
    import curves

    from search.raytune.prepare import absolute_data_paths
    from search.spec.space import with_data, with_settings
    from sensorium.config import set_values

    data_dir = curves.make_data(table, curves.WORK)
    scans = sorted(str(p) for p in data_dir.iterdir() if p.is_dir())
    spec = with_data(load_search(SEARCH_FILE), scans)
    base = absolute_data_paths(set_values(spec.base, curves.run_overrides(curves.WORK / table / "cache", curves.EPOCHS)))
    return with_settings(dataclasses.replace(spec, base=base), seed=seed, compute_budget_s=budget_s,
                         max_concurrent=workers, cpus_per_trial=1, gpus_per_trial=0, num_trials=100_000,
                         asha={"grace_period": 1, "reduction_factor": 3.0, "max_t": curves.EPOCHS,
                               "rungs_in": rungs_in})


VALIDATED = ("tpe+asha", "tpe+asha on seconds")  # the methods --validate can run for real (real_spec)


def validate(table_name: str, tables: Path, runs: int, budget_s: float, seeds: int, work: Path,
             method: str = "tpe+asha") -> list[str]:
    """Run ``runs`` real searches (sampler seeds 0, 1, ...) of ``real_spec`` for ``method`` (one of VALIDATED)
    with 2 workers until ``budget_s``
    training seconds, and replay the same search with ``seeds`` sampler seeds under each lookup (nearest,
    fresh). They are compared at the same number of trial-epochs (each real search's own count, in the order
    they ended), a unit both share without a cost model: the replay's band (5-95%) of the best validation
    correlation and of the trials started by then, and each real search beside it. The time axis is checked
    apart: each real trial's seconds per epoch against its looked-up configuration's recorded cost.
    Returns the markdown lines."""
    from ray.tune.utils.util import flatten_dict

    from search.raytune.driver import run_search
    from search.store.results import load_trials

    busy = os.getloadavg()[0]
    if busy > 0.5:  # the budget counts wall seconds of training: other work stretches them
        print(f"warning: load average {busy:.1f} before the real searches: their trials share the CPUs with other "
              "work (stop it, e.g. kill -STOP the table's recorders, for a clean check)", file=sys.stderr)
    table = load_table(table_name, tables)
    rungs_in = METHODS[method].rungs_in
    real = []
    for seed in range(runs):
        run_dir = work / (f"validate_{table_name}_{seed}" + ("" if rungs_in == "epochs" else f"_{rungs_in}"))
        if not (run_dir / "validated.json").is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
            start = time.perf_counter()
            run_search(real_spec(table_name, seed, budget_s, 2, rungs_in), run_dir, progress=False,
                       live_every_s=1e9)
            write_text(run_dir / "validated.json", json.dumps({"wall_s": time.perf_counter() - start}))
        records = [r for r in load_trials(run_dir, table.epochs) if r.curve]
        rows = sorted((row["timestamp"], row["best_val_corr"]) for r in records for row in r.curve)
        real.append((seed, len(rows), len(records), max(b for _, b in rows), records,
                     json.loads((run_dir / "validated.json").read_text())["wall_s"]))
    spec0 = real_spec(table_name, 0, budget_s, 2, rungs_in)
    lookup = Lookup(spec0, table)
    cost = np.array([np.mean([row["epoch_seconds"] for row in r.curve])
                     / np.diff(np.r_[0.0, table.curves[lookup(flatten_dict(r.params))][table.first_seed].cost]).mean()
                     for *_, records, _ in real for r in records])
    longest = max(n for _, n, *_ in real)
    traces = {}
    for mode in ("nearest", "fresh"):
        traces[mode] = []
        for seed in range(seeds):
            stack = make_stack(spec0, METHODS[method], table, lookup, seed, fresh=mode == "fresh",
                               max_told=longest)
            simulate(spec0, METHODS[method], table, lookup, 2, seed, 1e12, stack=stack)
            traces[mode].append(stack.trace)
    lines = [f"Real searches: `sensorium-search run` of configs/search_curves.yaml on table {table_name}'s data as "
             f"recorded ({method}: grace 1, reduction 3, max_t {table.epochs}, rungs in {rungs_in.replace('_', ' ')}; "
             "2 trials at a time, 1 CPU each), until "
             f"{budget_s:g} training seconds. Replay: the same stack, {seeds} sampler seeds per lookup, read at the "
             "real search's number of trial-epochs. Bands are 5-95% [median].", "",
             "| real search (seed) | trial-epochs | trials | best val corr | replay, nearest | inside | trials | "
             "replay, fresh | inside | trials | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, n, ntrials, best, _, wall in real:
        cells = []
        for mode in ("nearest", "fresh"):
            at = np.array([(max(x[2] for x in tr[:n]), len({x[0] for x in tr[:n]})) for tr in traces[mode]])
            lo, mid, hi = np.percentile(at, [5, 50, 95], axis=0)
            cells += [f"{lo[0]:.4f}-{hi[0]:.4f} [{mid[0]:.4f}]", "yes" if lo[0] <= best <= hi[0] else "no",
                      f"{lo[1]:.0f}-{hi[1]:.0f} [{mid[1]:.0f}]"]
        lines.append(f"| {seed} | {n} | {ntrials} | {best:.4f} | " + " | ".join(cells) + f" | {wall:.0f} |")
    q = np.percentile(cost, [5, 50, 95])
    lines += ["", f"Time axis: a real trial's seconds per epoch / its looked-up configuration's recorded CPU seconds "
              f"per epoch, over the {len(cost)} real trials: median {q[1]:.2f} (5-95%: {q[0]:.2f}-{q[2]:.2f})."]
    return lines


def validation_sections(path: Path) -> dict[str, str]:
    """What --validate wrote to ``path``, per method (its "## method" sections)."""
    if not path.is_file():
        return {}
    parts = path.read_text().split("\n## ")[1:]
    return {part.split("\n", 1)[0].strip(): part.split("\n", 1)[1] for part in parts}


def write_validation(path: Path, method: str, lines: list[str]) -> None:
    """Write ``method``'s section of ``path`` (validate's lines), keeping the other methods' sections."""
    sections = {**validation_sections(path), method: "\n".join(lines)}
    write_text(path, "\n".join(["# Replay against real searches", ""]
                                + [f"## {m}\n\n{sections[m].strip()}\n" for m in VALIDATED if m in sections]))


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", default="A")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    ap.add_argument("--workers", nargs="+", type=int, default=[2, 8, 32])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--slow-seeds", type=int, default=None, help="seeds of the slow methods (gp, bohb); default --seeds")
    ap.add_argument("--full-seeds", type=int, default=10,
                    help="seeds per method that run the whole budget (the anytime curves); the others end at the "
                         "highest target")
    ap.add_argument("--lookup", choices=["nearest", "fresh"], default="nearest",
                    help="a proposal's configuration: the nearest recorded one, or the nearest one the search has not "
                         "proposed before (while there is one): see the module docstring")
    ap.add_argument("--jobs", type=int, default=1, help="replay this many (method, workers) pairs at once, one "
                    "process each")
    ap.add_argument("--budget", type=float, default=100.0,
                    help="compute budget per search, in full trainings of the table's mean configuration")
    ap.add_argument("--trial-start-s", type=float, default=0.0,
                    help="wall seconds a trial costs before its first epoch (worker, data, model); default 0: "
                         "compute as a budget counts it")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    ap.add_argument("--quick", action="store_true", help="random, tpe+asha, tpe+asha (as it was); 5 seeds; 2 workers")
    ap.add_argument("--validate", type=int, default=0, metavar="N",
                    help="run N real searches of the default method on the table's data and check them against "
                         "the replay's band (then nothing else runs)")
    ap.add_argument("--validate-method", choices=VALIDATED, default=VALIDATED[0],
                    help="the method those searches run (rungs in epochs or in training seconds)")
    ap.add_argument("--validate-budget-s", type=float, default=300.0,
                    help="their budget, in training seconds (300: about 2,000 trial-epochs, 12 minutes each here)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "replay", help="folder of the real searches")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "replay" / "outcomes",
                    help="each replayed (method, workers) pair is kept here as it ends, and read back instead of "
                         "replayed again by a later call with the same table, settings and seeds")
    ap.add_argument("--cached-only", action="store_true",
                    help="replay nothing: report the requested pairs found in --cache")
    ap.add_argument("--tables", type=Path, default=RESULTS, help="folder of curves_<table>.csv.gz (default results/)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_search_replay.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.methods, args.seeds, args.workers = ["random", "tpe+asha (as it was)", "tpe+asha"], 5, [2]
    notes = []
    if any(METHODS[m].bohb for m in args.methods) and importlib.util.find_spec("syne_tune") is None:
        args.methods = [m for m in args.methods if not METHODS[m].bohb]
        notes.append('bohb (syne tune) left out: pip install -c constraints.txt -e ".[bench]" installs it')
    validated = args.out.with_name(args.out.stem + "_validation.md")  # the real searches against the replay
    if args.validate:
        lines = validate(args.table, args.tables, args.validate, args.validate_budget_s, args.seeds, args.work,
                         args.validate_method)
        write_validation(validated, args.validate_method, lines)
        print("\n".join(lines))
        return 0
    table = load_table(args.table, args.tables)
    spec = load_search(SEARCH_FILE)
    full = table.mean_full_cost()
    budget = {w: args.budget * full / w for w in args.workers}
    pairs = [(w, name) for w in args.workers for name in args.methods]
    seeds = {name: args.slow_seeds if METHODS[name].slow and args.slow_seeds is not None else args.seeds
             for name in args.methods}
    files = {(w, name): args.cache / cache_key(args.tables / f"curves_{args.table}.csv.gz", name, w, seeds[name],
                                              args.budget, args.full_seeds, args.lookup, args.trial_start_s)
             for w, name in pairs}
    done = {pair: load_outcome(f) for pair, f in files.items() if f.is_file()}
    todo = [] if args.cached_only else [pair for pair in pairs if pair not in done]
    jobs = [(spec, name, table, w, range(seeds[name]), budget[w], np.linspace(0, budget[w], 101),
             args.trial_start_s, args.full_seeds, args.lookup == "fresh") for w, name in todo]
    print(f"{len(done)} of {len(pairs)} pairs read from {args.cache}; {len(jobs)} to replay", file=sys.stderr)
    exact = exact_random(spec, table, Lookup(spec, table))
    notes.append(f"budget: {args.budget:g} x the mean full training ({full:.0f} s) per search; a trial's start "
                 f"costs {args.trial_start_s:g} s; the first {args.full_seeds} seeds of a method run the whole "
                 "budget (the anytime curves), the others end once they reach the top-2% target; lookup: "
                 f"{args.lookup}")
    notes += args.note
    sections = validation_sections(validated)
    validation = "\n".join(f"### {m}\n\n{sections[m].strip()}\n" for m in VALIDATED if m in sections)

    def write_report() -> str:  # after each pair: a long replay leaves a usable report at every point
        outcomes = [done[pair] for pair in pairs if pair in done]
        text = report(table, outcomes, exact, budget, args.seeds, notes, validation)
        write_text(args.out, text)
        if outcomes:
            figure(outcomes, budget, args.out.with_suffix(".png"))
        return text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, (pair, o) in enumerate(_replayed(jobs, todo, args.jobs), 1):
        save_outcome(o, files[pair])
        done[pair] = o
        write_report()
        print(f"[{i}/{len(jobs)}] {o.workers} workers, {o.method}: reached top 5% in "
              f"{np.isfinite(o.times[0.05]).mean():.0%} of {len(o.times[0.05])} seeds, median "
              f"{median_time(o.times[0.05]) * o.workers:.0f} worker-s", file=sys.stderr, flush=True)
    print(write_report())
    return 0


def _replayed(jobs: list[tuple], pairs: list[tuple[int, str]], processes: int):
    """(pair, Outcome) of each job as it ends: in this process, or in ``processes`` spawned ones (not forked:
    a fork of a process where Ray or a thread pool runs can hang on a lock its other threads held)."""
    if processes <= 1 or len(jobs) <= 1:
        for job, pair in zip(jobs, pairs, strict=True):
            yield pair, _method_job(job)
        return
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {pool.submit(_method_job, job): pair for job, pair in zip(jobs, pairs, strict=True)}
        for fut in concurrent.futures.as_completed(running):
            yield running[fut], fut.result()


if __name__ == "__main__":
    raise SystemExit(main())
