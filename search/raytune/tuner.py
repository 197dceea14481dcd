"""Ray Tune + Optuna wiring: a SearchSpec becomes a Tuner (OptunaSearch TPE or random + ASHA or FIFO, with a
compute budget) over ``train_trial``.

Run folder (``RUN_DIR``, Tune's experiment folder; the pieces this module adds are marked *; the study's own
files are read back by ``search.store.study``, the trials' by ``search.store.results``):

    search.yaml*            the validated search, base config inlined with absolute data paths
    study.json*             Optuna study name and storage file, its objectives, and the warm start it had
    optuna_journal.log*     the Optuna study (JournalStorage file: safe on NFS; optuna-dashboard opens it)
    tuner.pkl, experiment_state-*.json, searcher-state-*.pkl      Tune's own state (resume reads it)
    events.out.tfevents.*   the HParams column list (TensorBoard)
    trial_<id>/             one trial: result.json, progress.csv, TensorBoard events, fit's files
                            (config.yaml, curves.csv, ...), checkpoint_<n>/ (best.pt, last.pt), error.txt

Only the driver writes the Optuna storage (OptunaSearch runs in the driver), so one journal file suffices.

What the study is told (``StudySearch``; ``search.store.study.close_orphans`` for trials a budget stopped):
each epoch's val_corr as it trains (step = epoch), then COMPLETE with its best_val_corr for a trial that trained
to its end, PRUNED for one that ASHA or a budget stopped early, FAIL for one that failed by itself; TPE thus
never takes a score after one epoch for a final one.

With ``search.objective: val_corr+cost`` the study has two objectives, best_val_corr and the cost
(``search.cost``), maximised and minimised (Optuna's multi-objective TPE; constant liar works there too);
Optuna then keeps no intermediate values, a trial stopped early is PRUNED with no value, and the cost of a
trial is computed from its per-epoch results (``results.trial_cost``) when it ends. A warm-started study
(``run --warm-start``) holds the earlier run's finished trials first, COMPLETE and PRUNED as they were there,
with no Tune trial in this run (``search.store.warm_start``).
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from search.raytune.callbacks import LiveTable, TensorBoardHParams
from search.raytune.trainable import train_trial
from search.spec.settings import AUTO
from search.spec.space import SEARCH_FILE, Param, SearchSpec
from search.store.results import COSTS, is_finite_number, read_results, trial_cost
from search.store.schema import FIT_DONE, TRIAL_ERROR, ran_to_end
from search.store.study import (
    JOURNAL_FILE, RANK_METRIC, STUDY_FILE, TUNE_TRIAL_ID, epoch_scores, is_number, journal_storage, study_directions,
    trial_folder,
)
from sensorium.atomic import write_text
from sensorium.errors import UserError

if TYPE_CHECKING:
    from search.store.warm_start import WarmStart

# Tune's own console output is replaced by LiveTable; its auto-added TensorBoard logger would write a
# second, end-of-trial-only HParams entry with sampled values, so loggers are chosen explicitly below.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live table reports trials


class TreeSpace:
    """The search space as an Optuna define-by-run function: samples the top level, then the parameters of the
    options chosen, and returns the fixed values those options bring (Tune adds them to the trial's params).
    Names are the dotted config keys (Tune passes them through unchanged). A class, not a closure, so that
    Tune can save it with the searcher's state."""

    def __init__(self, spec: SearchSpec) -> None:
        self.params = spec.params

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return self._sample(trial, self.params)

    def _sample(self, trial: optuna.Trial, params: tuple[Param, ...]) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        for p in params:  # the public suggest_* methods: Tune captures what they return
            if p.type == "categorical":
                value = trial.suggest_categorical(p.key, list(p.choices))
            elif p.type == "int":
                value = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1))
            else:
                value = trial.suggest_float(p.key, p.low, p.high, log=p.type == "loguniform", step=p.step)
            branch = p.branch(value)
            if branch is not None:
                fixed.update(branch.fixed)
                fixed.update(self._sample(trial, branch.params))
        return fixed


class StudySearch(OptunaSearch):
    """OptunaSearch that tells the study how far each trial trained, so that TPE never takes a score after a
    few epochs for the score of a trial trained to its end.

    Ray's own OptunaSearch reports its metric at Tune's ``training_iteration`` and tells COMPLETE, with the
    last result's value, every trial whose last result holds the metric: a trial ASHA stopped at its first
    rung reached the study as if fully trained. Here, with one objective:

    - each epoch's ``val_corr`` is reported as it trains, as the intermediate value at step = epoch; the
      result the scheduler stops a trial on reaches only ``on_trial_complete``, which reports it too; an epoch
      reported again after a restart from a checkpoint keeps its first value;
    - a trial that trained to its end (``schema.ran_to_end``: its fit ended by itself, its last result
      carrying ``FIT_DONE``, or it reached ``max_t`` epochs) is told COMPLETE with its best_val_corr;
    - a trial the scheduler stopped before its end (ASHA) is told PRUNED: Optuna takes its last intermediate value as
      its value, and TPE counts it, in its startup phase and its model, behind every COMPLETE trial, pruned
      trials ordered by the last epoch they reached, then that value (trials a budget stopped are told the
      same by ``close_orphans``);
    - a trial that failed by itself is told FAIL, with no value. It ends normally for Tune (so Tune does not
      retry it) with a last result carrying ``TRIAL_ERROR``, kept from the intermediate values. A trial Tune
      restarts after an infrastructure failure is told nothing until it ends: the study gets every trial
      exactly once. One stopped before it reported an epoch is FAIL too (Ray would tell it PRUNED): TPE
      ignores it instead of counting a point never trained as a poor one, as ``close_orphans`` does.

    ``cost`` (``search.cost``; None for one objective): a two-objective study, whose metrics are best_val_corr
    and the cost's per-epoch field (``train_seconds`` or ``n_parameters``, which every result carries). Optuna
    keeps no intermediate values there (``Trial.report`` raises; TPE would fail on a pruned trial holding
    some), so a trial stopped early is PRUNED with no value, behind every COMPLETE trial for TPE. The searcher
    keeps the cost field per epoch (an epoch reported again after a restart replaces the earlier one) and
    tells a trial that trained to its end ``[best_val_corr, trial_cost]``; one without both is told FAIL.
    ``max_t`` and the kept fields are part of the searcher's saved state, so a resumed search still has them.
    """

    # class defaults: a searcher pickled before costs existed restores as one-objective; one pickled before
    # max_t judges "trained to its end" by FIT_DONE alone
    cost: str | None = None
    max_t: int | None = None

    def __init__(self, *args: Any, max_t: int, cost: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_t = max_t
        self.cost = cost
        self._epochs: dict[str, dict[int, dict[str, float]]] = {}  # trial id -> epoch -> cost fields

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)  # close_orphans finds its record
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # TRIAL_ERROR and FIT_DONE results repeat the last epoch's metrics; a told trial is finished
        if TRIAL_ERROR in result or FIT_DONE in result or trial_id in self._completed_trials:
            return
        self._keep_cost(trial_id, result)
        if self.cost is None:
            with warnings.catch_warnings():  # an epoch replayed after a restart: Optuna keeps its first value
                warnings.filterwarnings("ignore", message=".*is already reported")
                for epoch, value in epoch_scores([result]):
                    self._ot_trials[trial_id].report(value, epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result is not None:
            self.on_trial_result(trial_id, result)  # the result the scheduler stopped on reaches only this hook
        epochs = list(self._epochs.pop(trial_id, {}).values())
        if error or result is None or TRIAL_ERROR in result or not is_number(result.get("epoch")):
            super().on_trial_complete(trial_id, None, error=True)  # FAIL
            return
        if not (ran_to_end(result, self.max_t) if self.max_t is not None else FIT_DONE in result):
            super().on_trial_complete(trial_id, None)  # stopped early: Ray tells PRUNED when given no result
            return
        best = result.get(RANK_METRIC)
        cost = trial_cost(epochs, self.cost) if self.cost is not None else None
        if not is_finite_number(best) or (self.cost is not None and cost is None):
            super().on_trial_complete(trial_id, None, error=True)  # no score (or, two objectives, no cost)
            return
        if self.cost is not None:
            result = {**result, COSTS[self.cost][0]: cost}  # the trial's cost, not its last epoch's field
        super().on_trial_complete(trial_id, result)

    def _keep_cost(self, trial_id: str, result: dict) -> None:
        field = COSTS[self.cost][0] if self.cost is not None else None
        if field in result and isinstance(result.get("epoch"), (int, float)):
            self._epochs.setdefault(trial_id, {})[int(result["epoch"])] = {field: result[field]}


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """The seeded sampler of ``search.sampler``: TPE with every setting explicit (Optuna 5.0 changed its
    defaults; grouped multivariate on a conditional space), or uniform random sampling (the baseline a search
    has to beat)."""
    s = spec.settings
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    with warnings.catch_warnings():  # "group is an experimental feature" (since Optuna 2.8)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return _tpe(spec)


def _tpe(spec: SearchSpec) -> optuna.samplers.TPESampler:
    s = spec.settings
    return optuna.samplers.TPESampler(
        seed=s.seed,
        n_startup_trials=s.tpe.n_startup_trials,
        multivariate=s.tpe.multivariate,
        # a conditional space (options with their own parameters): one multivariate model per group of trials
        # that share the same parameters, instead of falling back to independent sampling for all of them
        group=s.tpe.multivariate and spec.conditional(),
        constant_liar=s.tpe.constant_liar,
    )


def make_searcher(spec: SearchSpec, run_dir: Path, study_name: str, warm_start: WarmStart | None = None) -> OptunaSearch:
    """OptunaSearch with the seeded sampler of ``search.sampler``, persisting its study in the run folder.

    The study has one objective or two (``study_directions``). A ``warm_start``'s trials are added first (COMPLETE
    or PRUNED), so the sampler's startup phase and model count them before it proposes anything; then
    ``search.start_with`` points are enqueued (partial points allowed: the sampler fills the keys they leave
    out); OptunaSearch then loads the study and hands those out first.
    """
    s = spec.settings
    sampler = make_sampler(spec)
    storage = journal_storage(run_dir)
    study = optuna.create_study(study_name=study_name, storage=storage, directions=study_directions(spec),
                                sampler=sampler)
    for trial in warm_start.trials if warm_start is not None else ():
        study.add_trial(trial)
    for point in s.start_with:
        study.enqueue_trial(dict(point))
    metric, mode = ([RANK_METRIC, COSTS[s.cost][0]], ["max", "min"]) if s.with_cost else (RANK_METRIC, "max")
    return StudySearch(
        space=TreeSpace(spec),
        metric=metric, mode=mode, sampler=sampler, study_name=study_name, storage=storage,
        max_t=s.asha.max_t, cost=s.cost if s.with_cost else None,
    )


def make_scheduler(spec: SearchSpec) -> ASHAScheduler | FIFOScheduler:
    """ASHA on epochs (at each rung a trial continues only if its metric is in the top 1/reduction_factor),
    or FIFO (``search.scheduler: fifo``: no early stopping; ``SearchStopper`` still caps trials at max_t)."""
    if spec.settings.scheduler == "fifo":
        return FIFOScheduler()
    a = spec.settings.asha
    if a.rungs_in == "training_seconds":
        return SecondsASHA(metric=spec.settings.metric, grace_period=a.grace_period,
                           reduction_factor=a.reduction_factor)
    return ASHAScheduler(
        time_attr="epoch",
        metric=spec.settings.metric,
        mode="max",
        max_t=a.max_t,
        grace_period=a.grace_period,
        reduction_factor=a.reduction_factor,
    )


class SecondsASHA(ASHAScheduler):
    """ASHA with its rungs in training seconds: a trial's progress (``UNITS``, added to each result it is told)
    is its summed ``train_seconds`` over its epochs so far, divided by the typical epoch of the search, the
    median of the first epochs' training seconds of the trials it has seen (one trial's own first epoch at
    the start). Rungs at grace_period * reduction_factor**k such units: a trial whose epochs cost 10x the
    typical one reaches the first rung after its first epoch, where it is compared with the others, instead
    of spending 10x their compute before it is judged. The unit follows the search's median as trials come;
    the epochs cap (asha.max_t) is the stopper's. A trial restarted from a checkpoint reports some epochs
    again: each epoch counts once (its last report)."""

    UNITS = "typical_epochs"

    def __init__(self, *, metric: str, grace_period: float, reduction_factor: float) -> None:
        super().__init__(time_attr=self.UNITS, metric=metric, mode="max", max_t=10**9,  # never reached
                         grace_period=grace_period, reduction_factor=reduction_factor)
        self._seconds: dict[str, dict[int, float]] = {}  # trial id -> epoch -> its training seconds
        self._first: list[float] = []  # each trial's first epoch's training seconds

    def _with_units(self, trial: Any, result: dict) -> dict:
        epochs = self._seconds.setdefault(trial.trial_id, {})
        seconds, epoch = result.get("train_seconds"), result.get("epoch")
        if is_finite_number(seconds) and is_finite_number(epoch) and epoch >= 1 and seconds > 0:
            if not epochs:
                self._first.append(float(seconds))
            epochs[int(epoch)] = float(seconds)
        if not epochs:  # nothing trained (a failure before the first epoch): no progress to compare
            return result
        return {**result, self.UNITS: sum(epochs.values()) / statistics.median(self._first)}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, self._with_units(trial, result))

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self._with_units(trial, result))
        self._seconds.pop(trial.trial_id, None)


def asha_rungs(spec: SearchSpec) -> list[int]:
    """The epochs at which the scheduler may stop a trial: ASHA's grace_period * reduction_factor**k < max_t,
    and max_t, where every trial stops (under FIFO only max_t; with rungs in training seconds, any epoch)."""
    a = spec.settings.asha
    if spec.settings.scheduler == "fifo":
        return [a.max_t]
    if a.rungs_in == "training_seconds":
        return list(range(1, a.max_t + 1))
    rungs, t = [], a.grace_period
    while t < a.max_t:
        rungs.append(int(t))
        t *= a.reduction_factor
    return [*rungs, a.max_t]


def make_trainable(spec: SearchSpec, checkpoint_epochs: Iterable[int] | None = None) -> Any:
    """``train_trial`` bound to the base config and wrapped with the per-trial resources; it checkpoints at
    ``checkpoint_epochs``, by default every ASHA rung, so a trial the scheduler stops keeps the weights of
    its last reported epoch (a scheduler that pauses and resumes trials at any epoch needs every epoch)."""
    s = spec.settings
    if s.gpus_per_trial == AUTO:
        raise ValueError("gpus_per_trial auto is settled by the driver before trials start (search.raytune.driver)")
    epochs = asha_rungs(spec) if checkpoint_epochs is None else list(checkpoint_epochs)
    bound = tune.with_parameters(train_trial, base=spec.base.to_dict(), cpus=s.cpus_per_trial,
                                 checkpoint_epochs=epochs, gpus=s.gpus_per_trial)
    return tune.with_resources(bound, {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})


class SearchStopper(Stopper, tune.Callback):
    """Stops a trial at ``max_t`` epochs, and the whole search once the compute budget is spent.

    The compute spent is the trials' summed ``train_seconds`` (one value per reported epoch of each trial; an
    epoch a restarted trial reports again replaces the earlier one, as in ``results.load_trials``), so a
    budget means the same whatever the concurrency, and an expensive architecture spends more of it than a
    cheap one. ``budget_s`` None: no budget. The epoch cap is ASHA's own last rung, so under ASHA it changes
    nothing; under FIFO it is what makes ``asha.max_t`` the cap there too.

    It is also a Tune callback, registered in the same run config: at the first step of a resumed search
    it reads the epochs the run folder already holds, so a resumed search continues its budget instead of
    starting a new one (Tune restores the stopper as it was when the search started).
    """

    def __init__(self, max_t: int, budget_s: float | None) -> None:
        self.max_t = max_t
        self.budget_s = budget_s
        self.seconds: dict[str, dict[int, float]] = {}  # trial id -> epoch -> train_seconds
        self._seeded = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        epoch = result.get("epoch")
        if isinstance(epoch, (int, float)) and TRIAL_ERROR not in result and FIT_DONE not in result:
            self.seconds.setdefault(trial_id, {})[int(epoch)] = float(result.get("train_seconds", 0.0))
        return isinstance(epoch, (int, float)) and epoch >= self.max_t

    def stop_all(self) -> bool:
        return self.budget_s is not None and self.spent()[0] >= self.budget_s

    def spent(self) -> tuple[float, int]:
        """(summed train_seconds, trial-epochs) of every result seen so far."""
        return sum(sum(e.values()) for e in self.seconds.values()), sum(map(len, self.seconds.values()))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._seeded:
            return
        self._seeded = True
        for trial in trials:  # a fresh search has no results yet; a resumed one has its earlier epochs
            for row in read_results(Path(trial.path) / "result.json")[0]:
                self(trial.trial_id, row)


def trial_name(trial: Any) -> str:
    """Trial folder and display name: ``trial_<id>`` (sampled values live in the HParams and the report)."""
    return trial_folder(trial.trial_id)


def callbacks(spec: SearchSpec, live_every_s: float, stopper: SearchStopper) -> list[tune.Callback]:
    return [
        stopper,
        LiveTable(max_t=spec.settings.asha.max_t, every_s=live_every_s),
        TensorBoardHParams(spec),
        JsonLoggerCallback(),
        CSVLoggerCallback(),
    ]


def run_config(run_dir: Path, spec: SearchSpec, live_every_s: float) -> tune.RunConfig:
    s = spec.settings
    stopper = SearchStopper(max_t=s.asha.max_t, budget_s=s.compute_budget_s)  # one object: stopper + callback
    return tune.RunConfig(
        name=run_dir.name,
        storage_path=str(run_dir.parent),
        verbose=0,
        stop=stopper,
        callbacks=callbacks(spec, live_every_s, stopper),
        # A trial whose worker or node died restarts from its latest checkpoint, up to max_retries times (the
        # trainable ends a trial that failed by itself normally, with its reason, so it is never retried).
        failure_config=tune.FailureConfig(max_failures=spec.settings.max_retries, fail_fast=False),
        # The latest checkpoint holds both last.pt (to resume) and best.pt (the trial's best epoch).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        sync_config=tune.SyncConfig(sync_artifacts=True),
    )


def new_tuner(spec: SearchSpec, run_dir: Path, live_every_s: float = 20.0,
              warm_start: WarmStart | None = None) -> tune.Tuner:
    """A Tuner for a fresh run folder; writes search.yaml and study.json first (with what ``warm_start``, if
    given, imports: its trials enter the study here, before any trial starts)."""
    if (run_dir / "tuner.pkl").exists():
        raise UserError(f"{run_dir}: already holds a search; continue it with `resume {run_dir}` or pick --out")
    if (run_dir / JOURNAL_FILE).exists():
        raise UserError(f"{run_dir}: holds the Optuna study of a search that never started; delete it or pick --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    study_name = f"sensorium-search-{run_dir.name}"
    write_text(run_dir / SEARCH_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    s = spec.settings
    info: dict[str, Any] = {"study_name": study_name, "storage": JOURNAL_FILE, "metric": RANK_METRIC, "mode": "max"}
    if s.with_cost:
        info.update(metric=[RANK_METRIC, COSTS[s.cost][0]], mode=["max", "min"], cost=s.cost)
    if warm_start is not None:
        info["warm_start"] = warm_start.summary()
    write_text(run_dir / STUDY_FILE, json.dumps(info, indent=1))
    tune_config = tune.TuneConfig(
        search_alg=make_searcher(spec, run_dir, study_name, warm_start),
        scheduler=make_scheduler(spec),
        num_samples=s.num_trials,
        max_concurrent_trials=s.max_concurrent,
        time_budget_s=s.time_budget_s,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
    )
    return tune.Tuner(make_trainable(spec), tune_config=tune_config, run_config=run_config(run_dir, spec, live_every_s))


def restored_tuner(run_dir: Path, spec: SearchSpec) -> tune.Tuner:
    """The Tuner of an interrupted run (``spec``: its saved search): finished trials are kept (trials that
    failed by themselves are finished), unfinished ones (running when the driver stopped) resume from their
    latest checkpoint; trials that ran out of retries after infrastructure failures stay errored (the study
    was told so), and the searcher keeps its history."""
    if not tune.Tuner.can_restore(str(run_dir)):
        raise UserError(f"{run_dir}: no Ray Tune experiment state to resume (is it a search run folder?)")
    return tune.Tuner.restore(
        str(run_dir), trainable=make_trainable(spec), resume_unfinished=True, resume_errored=False
    )

