"""``run --warm-start EARLIER_RUN``: start a study with the finished trials of an earlier search.

The earlier run must have searched the same keys (its ranges may differ). Each of its finished trials is
added to the new study, before any trial starts, in the state it had there, with the new space's distributions
(``study.distributions_for``), so TPE's startup phase and model count it at once: a COMPLETE trial (trained
to its end) as COMPLETE, a PRUNED one (stopped early by ASHA or a budget) as PRUNED, with its per-epoch
intermediate values, which TPE ranks pruned trials by (none in a two-objective study, where Optuna keeps
none). Left out, and counted: points outside the new space (``space.point_problem``, or off a new ``step``
grid), and COMPLETE trials without a finite score or, in a two-objective search, whose cost is unknown.
Everything is read and checked here, before Ray starts. (An earlier run from before PRUNED trials existed
told the study COMPLETE for its stopped trials too; they come in as it holds them.)

Values of a COMPLETE trial: the earlier best_val_corr (the first objective of either kind of study). The cost of a
two-objective search is the earlier study's own second value when it minimised the same cost, else it is
computed, like this run's, from the trial's per-epoch results (``result.json`` in the run it was trained
in): a single-objective run's trials are imported when their results hold the cost (``train_seconds``
always; ``n_parameters`` since parameter counts are reported). Seconds measured on other resources per
trial than this search's are imported all the same, with a note.

Each imported trial carries the run it was trained in and its Tune trial id there (``warm_start_from``,
``source_trial``; a trial the earlier run itself imported keeps its first origin). It has no Tune trial in
the new run: the records, ``export`` and the report list this run's own trials, and ``resume`` never imports
again (the study already holds the trials). ``study.json`` records the warm start.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search.spec.settings import gpus_text
from search.spec.space import SEARCH_FILE, SearchSpec, load_run_spec, point_problem
from search.store.results import COSTS, read_results, trial_cost
from search.store.study import (
    SOURCE_TRIAL, STUDY_FILE, TUNE_TRIAL_ID, WARM_START_FROM, distributions_for, load_study, trial_folder,
)
from sensorium.errors import UserError

OUTSIDE = "outside this search's space"
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@dataclass(frozen=True)
class WarmStart:
    """What a warm start adds: ``trials`` (ready for ``study.add_trial``) of the ``finished`` (COMPLETE or PRUNED)
    trials of the run at ``source``; ``left_out``: reason -> how many; ``example``: one left-out trial and its
    reason."""

    source: Path
    trials: tuple[optuna.trial.FrozenTrial, ...]
    finished: int
    left_out: dict[str, int]
    example: str = ""
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """Plain data for study.json."""
        return {"from": str(self.source), "finished": self.finished, "imported": len(self.trials),
                "left_out": dict(self.left_out), "example": self.example, "note": self.note}

    def line(self) -> str:
        """One line for the run's output."""
        left = sum(self.left_out.values())
        why = ", ".join(f"{n} {reason}" for reason, n in self.left_out.items())
        text = (f"warm start from {self.source}: {len(self.trials)} of its {self.finished} finished trials imported"
                f", {left} left out" + (f" ({why}; e.g. {self.example})" if left else ""))
        return text + (f"; {self.note}" if self.note else "")


def plan_warm_start(source: Path, spec: SearchSpec) -> WarmStart:
    """Read the earlier run at ``source`` and build the trials to import into a search of ``spec``.

    UserError when ``source`` is not a search run folder, its study cannot be read, or it searched other keys.
    """
    source = Path(source).resolve()
    where = f"--warm-start {source}"
    if not (source / SEARCH_FILE).is_file() or not (source / STUDY_FILE).is_file():
        raise UserError(f"{where}: not a search run folder ({SEARCH_FILE} or {STUDY_FILE} is missing)")
    earlier = load_run_spec(source)
    here, there = set(spec.keys()), set(earlier.keys())
    if here != there:
        only_there, only_here = sorted(there - here) or ["none"], sorted(here - there) or ["none"]
        raise UserError(f"{where}: searched other keys (only there: {', '.join(only_there)}; only here: "
                        f"{', '.join(only_here)}); a warm start needs the same keys (ranges may differ)")
    try:
        study = load_study(source)
    except (KeyError, ValueError, OSError) as err:
        raise UserError(f"{where}: cannot read its Optuna study ({type(err).__name__}: {err})") from err
    finished = study.get_trials(deepcopy=False, states=(COMPLETE, PRUNED))
    kind = spec.settings.cost if spec.settings.with_cost else None
    same_cost = earlier.settings.with_cost and earlier.settings.cost == kind
    trials: list[optuna.trial.FrozenTrial] = []
    left_out: Counter[str] = Counter()
    example = ""
    for t in finished:
        origin_run = str(t.user_attrs.get(WARM_START_FROM, source))
        origin_trial = t.user_attrs.get(SOURCE_TRIAL, t.user_attrs.get(TUNE_TRIAL_ID))
        name = f"trial {origin_trial or '#' + str(t.number)}"
        values: list[float] | None = [t.values[0]] if t.state == COMPLETE else None
        if t.state == PRUNED and kind is None:  # Optuna's value for it: its last intermediate value, if any
            values = t.values
        reason, problem = None, point_problem(spec, dict(t.params))
        if problem:
            reason, detail = OUTSIDE, problem
        elif t.state == COMPLETE and not math.isfinite(t.values[0]):
            reason, detail = "without a finite score", f"best_val_corr={t.values[0]}"
        elif t.state == COMPLETE and kind is not None:
            cost = t.values[1] if same_cost else _recorded_cost(origin_run, origin_trial, kind)
            if cost is None:
                reason, detail = "without a recorded cost", f"no {COSTS[kind][0]} in its results"
            values = [t.values[0], cost]
        if reason is None:
            attrs = {WARM_START_FROM: origin_run, SOURCE_TRIAL: origin_trial, "source_number": t.number}
            try:
                trials.append(optuna.trial.create_trial(
                    state=t.state, params=dict(t.params), distributions=distributions_for(spec, t.params),
                    values=values, user_attrs=attrs,
                    # its curve (the order of pruned trials for TPE); a two-objective study holds none
                    intermediate_values=dict(t.intermediate_values) if kind is None else None,
                ))
                continue
            except ValueError as err:  # e.g. a value off the new range's step grid
                reason, detail = OUTSIDE, str(err).splitlines()[0]
        left_out[reason] += 1
        example = example or f"{name}: {detail}"
    note = ""
    s, e = spec.settings, earlier.settings
    if kind == "train_seconds" and (s.cpus_per_trial, s.gpus_per_trial) != (e.cpus_per_trial, e.gpus_per_trial):
        note = (f"its train_seconds were measured with {e.cpus_per_trial:g} CPU + {gpus_text(e.gpus_per_trial)} GPU "
                f"per trial, this search's with {s.cpus_per_trial:g} + {gpus_text(s.gpus_per_trial)}")
    return WarmStart(source, tuple(trials), len(finished), dict(left_out), example, note)


def _recorded_cost(run: str, tune_trial: Any, kind: str) -> float | None:
    """The cost of Tune trial ``tune_trial`` of the run folder ``run``, from its result.json; None if unknown."""
    if not tune_trial:
        return None
    rows, _ = read_results(Path(run) / trial_folder(str(tune_trial)) / "result.json")
    return trial_cost(rows, kind)
