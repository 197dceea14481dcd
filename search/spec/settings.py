"""Search settings: trial count, concurrency, resources per trial, budgets, seed, sampler, scheduler, objective,
ASHA, TPE.

The ``search:`` section of a search file. Plain dataclasses, checked when built; no Ray or Optuna here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from sensorium import typed
from sensorium.errors import ConfigError

AUTO = "auto"  # gpus_per_trial chosen by the driver (search.spec.gpu_share)


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping: rungs at grace_period * reduction_factor**k epochs (or typical epochs of training
time, ``rungs_in``), up to max_t epochs.

    ``max_t`` is every trial's epoch cap under either scheduler (with ``scheduler: fifo`` there are no rungs,
    but a trial still stops at max_t epochs, or earlier by its own early stopping or train.max_epochs).

    A recipe whose lr schedule spans the run (``train.recipe.kind: modern``: warm-up then cosine) spans
    ``train.max_epochs``, which is fixed for a study: every trial runs the same schedule, so a rung compares
    trials at the same point of it. max_t never shortens it (max_t <= train.max_epochs is required): with max_t
    below train.max_epochs trials stop before the low-lr tail; fix train.max_epochs to max_t in the overrides
    for schedules that end where the trials do.
    """

    grace_period: int = 2
    reduction_factor: float = 2.0
    max_t: int = 20
    # epochs: a rung at grace_period * reduction_factor**k epochs. training_seconds: at that many typical
    # epochs of training time (the median training seconds of the search's first epochs so far), so a
    # configuration that costs 10x more per epoch is judged after a tenth of the epochs, on the same compute
    # as the others (search.raytune.tuner.SecondsASHA); max_t stays every trial's cap in epochs.
    # The default search file (configs/search_default.yaml) sets training_seconds, chosen on the replayed table A
    # (results/bench_search_replay.md, 100 seeds, 2 workers, to the top 5%: 3.01x random search [2.05x-4.58x]
    # against 2.10x [1.43x-3.19x] on epochs; on table B, where nothing was chosen, 2.51x [1.81x-3.70x], while
    # rungs in epochs reached that target in 41% of the seeds). The built-in default stays epochs: its rungs do
    # not depend on timing, so a small search (the tests', the demo's) stops the same trials on any machine.
    rungs_in: Literal["epochs", "training_seconds"] = "epochs"


@dataclass(frozen=True)
class TpeSettings:
    """Optuna TPE settings, pinned because Optuna 5.0 changed its defaults."""

    n_startup_trials: int = 5  # random trials before TPE models the history
    multivariate: bool = True
    constant_liar: bool = True  # running trials count as pessimistic results, so parallel trials differ


@dataclass(frozen=True)
class SearchSettings:
    num_trials: int = 12
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    # GPUs per trial: 0 (CPU trials), a fraction of one card (1/k: k trials share it, each capped at its share of
    # the card's memory), 1, or auto: chosen by the driver before trials start from the cluster's GPUs and the
    # predicted memory of the largest point of the space (search.spec.gpu_share). A trial trains on one card.
    gpus_per_trial: float | Literal["auto"] = field(
        default="auto", metadata={typed.EXPECTED: "auto or a number of GPUs (0, a fraction of a card, or 1)"})
    # The memory of the smallest card trials run on, in GB (10**9 bytes, as cards are labelled: 40, 80, 141), for
    # gpus_per_trial auto and the pre-flight memory check; null: the driver's own card, or 40 GB (the smallest
    # common one) when the driver has none
    gpu_memory_gb: float | None = None
    time_budget_s: float | None = None  # stop starting/continuing trials after this many seconds
    # Stop the search once the trials' summed training time (train_seconds of every epoch of every trial)
    # reaches this: a budget in compute, not wall time, so it means the same at any concurrency and is fair
    # between cheap and expensive architectures. Trials still running are stopped, like the time budget.
    compute_budget_s: float | None = None
    seed: int = 0  # seeds the sampler (trials themselves use the config's seed)
    # Who proposes trials: Optuna's TPE, or Optuna's uniform RandomSampler (the baseline a search must beat);
    # both go through the same Optuna study, so the report and resume work alike.
    # asha: stop weak trials early at the rungs; fifo: no early stopping, every trial runs to asha.max_t
    # epochs (or its own early stopping).
    # Defaults tpe + asha, from bench/bench_search.py (results/bench_search.md: 180 s of training per search,
    # 3 seeds, best val corr mean ± sd): tpe+asha 0.2891 ± 0.0049, tpe+fifo 0.2588 ± 0.0430, random+asha
    # 0.2532 ± 0.0361, random+fifo 0.2532 ± 0.0361, Ray Tune's BOHB 0.2500 ± 0.0178; only tpe+asha reached
    # random+fifo's final best in every seed. Neither half alone helped (our reading: ASHA's cheap extra
    # trials feed TPE's model; random search draws more configs with them but no better ones).
    sampler: Literal["tpe", "random"] = "tpe"
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: Literal["val_corr", "best_val_corr"] = "val_corr"  # what ASHA compares at its rungs
    # What the study optimises: the best-epoch validation correlation alone, or (``val_corr+cost``) that and a
    # training cost at once (Optuna's multi-objective TPE or random sampler; the report draws the Pareto
    # front, ``export --pick cheapest:TOL`` chooses on it). ASHA still stops trials on ``metric`` alone.
    objective: Literal["val_corr", "val_corr+cost"] = "val_corr"
    # The cost (minimised with ``objective: val_corr+cost``; also what ``export --pick cheapest`` compares):
    # train_seconds = the median over a trial's epochs of its training seconds per epoch, on the trial's own
    # resources (cpus_per_trial, gpus_per_trial); parameters = the model's trainable parameter count.
    cost: Literal["train_seconds", "parameters"] = "train_seconds"
    # restarts of a trial from its latest checkpoint after its worker or node died (a trial's own failure,
    # e.g. a non-finite loss, is never retried)
    max_retries: int = 3
    asha: AshaSettings = field(default_factory=AshaSettings)
    tpe: TpeSettings = field(default_factory=TpeSettings)
    # Parameter sets evaluated first (Optuna enqueues them), e.g. the untuned baseline's values;
    # searched keys left out of a set are sampled.
    start_with: tuple[dict[str, Any], ...] = ()

    @property
    def with_cost(self) -> bool:
        """True when the study minimises the cost as a second objective (``objective: val_corr+cost``)."""
        return self.objective == "val_corr+cost"


def build_settings(raw: Any) -> SearchSettings:
    """Validate the ``search:`` mapping of a search file (``sensorium.typed``, the reader of every config);
    errors name the key (``search.asha.max_t``)."""
    s = typed.build(SearchSettings, raw, "search.")
    checks = [
        (s.num_trials >= 1, "num_trials", s.num_trials, ">= 1"),
        (s.max_concurrent >= 1, "max_concurrent", s.max_concurrent, ">= 1"),
        (s.cpus_per_trial > 0, "cpus_per_trial", s.cpus_per_trial, "> 0"),
        (s.gpus_per_trial == AUTO or s.gpus_per_trial >= 0, "gpus_per_trial", s.gpus_per_trial, "auto or >= 0"),
        (s.gpu_memory_gb is None or s.gpu_memory_gb > 0, "gpu_memory_gb", s.gpu_memory_gb, "> 0 or null"),
        (s.time_budget_s is None or s.time_budget_s > 0, "time_budget_s", s.time_budget_s, "> 0 or null"),
        (s.compute_budget_s is None or s.compute_budget_s > 0, "compute_budget_s", s.compute_budget_s, "> 0 or null"),
        (s.asha.grace_period >= 1, "asha.grace_period", s.asha.grace_period, ">= 1"),
        (s.asha.reduction_factor > 1, "asha.reduction_factor", s.asha.reduction_factor, "> 1"),
        (s.asha.max_t >= s.asha.grace_period, "asha.max_t", s.asha.max_t, ">= asha.grace_period"),
        (s.tpe.n_startup_trials >= 0, "tpe.n_startup_trials", s.tpe.n_startup_trials, ">= 0"),
        (s.max_retries >= 0, "max_retries", s.max_retries, ">= 0"),
    ]
    for ok, name, value, expected in checks:
        if not ok:
            raise ConfigError(f"search.{name}={value}: expected {expected}")
    if s.gpus_per_trial != AUTO and s.gpus_per_trial > 1:
        raise ConfigError(f"search.gpus_per_trial={s.gpus_per_trial:g}: a trial trains on one card, so more than 1 "
                          "GPU would sit idle; expected auto, 0, a fraction of a card (0.25: 4 trials share it) or 1")
    return s


def gpus_text(gpus: float | str) -> str:
    """``gpus_per_trial`` for messages: ``auto`` or the number (``0.25``, ``1``)."""
    return gpus if isinstance(gpus, str) else f"{gpus:g}"


def plain_settings(s: SearchSettings) -> dict[str, Any]:
    """Plain data that ``build_settings`` reads back."""
    out = dataclasses.asdict(s)
    out["start_with"] = [dict(p) for p in s.start_with]
    return out
