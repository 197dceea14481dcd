"""Read a search run back: one record per trial, ranked by each trial's best epoch (``best_val_corr``).

Works on a finished, running or interrupted run folder, from Tune's experiment state and each trial's
``result.json``; no Ray cluster is needed. Importing this module imports no Ray: only ``load_trials`` does, when
called, to read Tune's experiment state with Tune's own reader.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.spec.space import SearchSpec, load_run_spec
from search.store.schema import TRIAL_ERROR, TRIAL_METRICS, ran_to_end
from sensorium.errors import UserError

# search.cost -> (the per-epoch result field it is computed from, how the report and export name its unit)
COSTS = {"train_seconds": ("train_seconds", "train s/epoch (median)"), "parameters": ("n_parameters", "parameters")}
# The logger of Ray Tune's ExperimentAnalysis (the reader of a run's trials, which Tune also builds at the end of a
# search); see ``quiet_missing_metrics``.
RAY_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
PICK_HELP = "best, cheapest or cheapest:TOL (TOL >= 0: how far below the best val corr a trial may be)"
DEFAULT_TOLERANCE = 0.01


@dataclass
class TrialRecord:
    """One trial. ``status``: done (fit ended by itself), stopped (ASHA / time budget), failed (the trial's
    own failure: non-finite loss, a config the model rejects, ...; never retried), error (infrastructure
    failures beyond the retries), running, pending. ``retries``: restarts from a checkpoint after its worker
    or node died. ``best_val_corr`` / ``best_epoch`` come from the trial's best epoch, not its last."""

    trial_id: str
    status: str
    params: dict[str, Any]
    best_val_corr: float | None
    best_epoch: int | None
    epochs: int
    path: Path
    checkpoint: Path | None = None  # latest persisted checkpoint folder (holds best.pt and last.pt)
    error: str | None = None  # the reason of a failed trial, the last lines of the error of an errored one
    retries: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)  # per-epoch results, in order

    @property
    def ranked(self) -> bool:
        """Counts for the ranking: finished without error and reported a finite best score."""
        return self.status in ("done", "stopped") and is_finite_number(self.best_val_corr)

    def cost(self, kind: str) -> float | None:
        """The trial's cost of ``kind`` (``search.cost``), from its per-epoch results; None before its first
        epoch (or, for parameters, in a run from before parameter counts were reported)."""
        return trial_cost(self.curve, kind)


def trial_cost(rows: list[dict[str, Any]], kind: str) -> float | None:
    """A trial's cost from its per-epoch results ``rows``: ``train_seconds`` = the median of its training
    seconds per epoch (robust to a first epoch that warms caches up, or a slow neighbour for an epoch),
    ``parameters`` = its model's parameter count (``n_parameters``, the same every epoch). None if no row has it.

    >>> trial_cost([{"train_seconds": 3.0}, {"train_seconds": 1.0}, {"train_seconds": 2.0}], "train_seconds")
    2.0
    """
    key = COSTS[kind][0]
    values = [float(row[key]) for row in rows if is_finite_number(row.get(key))]
    if not values:
        return None
    return statistics.median(values) if kind == "train_seconds" else values[-1]


def load_trials(run_dir: Path, max_t: int | None = None) -> list[TrialRecord]:
    """Every trial of the run, best first (ranked trials by best_val_corr, then the others by id).

    ``max_t``: ASHA's epoch cap (trials that reached it were not cut short); read from the run's
    search.yaml when not given.
    """
    from ray.tune import ExperimentAnalysis

    run_dir = Path(run_dir).resolve()
    if not list(run_dir.glob("experiment_state-*.json")):
        raise UserError(f"{run_dir}: no Ray Tune experiment state here (is it a search run folder?)")
    with quiet_missing_metrics():
        analysis = ExperimentAnalysis(str(run_dir))
    if max_t is None:
        max_t = load_run_spec(run_dir).settings.asha.max_t
    records = [_record(trial, run_dir, max_t) for trial in analysis.trials]
    return sorted(records, key=lambda r: (not r.ranked, -(r.best_val_corr or 0.0) if r.ranked else 0.0, r.trial_id))


@contextmanager
def quiet_missing_metrics() -> Iterator[None]:
    """Inside: Ray Tune's ExperimentAnalysis logs only errors, so not its warning "Failed to fetch metrics for N
    trial(s)" about a trial without a result file: one that a time budget stopped before its first epoch. Its
    record says so (``stopped``, no epochs); Tune would print the warning once at the end of the search and again
    each time the run is read. Only that reader's logger is quieted, and only inside: our own warnings, Ray's
    errors and every other Ray logger are untouched."""
    logger = logging.getLogger(RAY_ANALYSIS_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


ENDED = ("done", "stopped", "failed", "error")  # statuses of trials that will not run again


def status_counts(records: list[TrialRecord]) -> dict[str, int]:
    """How many trials have each status, plus ``retries``: restarts after a lost worker or node, summed."""
    counts = {status: sum(r.status == status for r in records) for status in (*ENDED, "running", "pending")}
    return {**counts, "retries": sum(r.retries for r in records)}


def compute_spent(records: list[TrialRecord]) -> tuple[float, int]:
    """(summed train_seconds, trial-epochs) of a search's trials, as ``SearchStopper`` counts them."""
    rows = [row for r in records for row in r.curve]
    return sum(float(row.get("train_seconds", 0.0)) for row in rows), len(rows)


def load_run(run_dir: Path) -> tuple[Path, SearchSpec, list[TrialRecord]]:
    """The resolved run folder, its search spec (from the saved ``search.yaml``) and its trials, best first."""
    run_dir = Path(run_dir).resolve()
    spec = load_run_spec(run_dir)
    return run_dir, spec, load_trials(run_dir, spec.settings.asha.max_t)


def best_trial(records: list[TrialRecord]) -> TrialRecord:
    """The top-ranked trial; UserError when no trial finished with a score."""
    ranked = [r for r in records if r.ranked]
    if not ranked:
        statuses = ", ".join(f"{r.trial_id}: {r.status}" for r in records) or "no trials"
        raise UserError(f"no trial finished with a validation score yet ({statuses})")
    return ranked[0]


def parse_pick(text: str) -> tuple[str, float]:
    """``export --pick``: ("best", 0.0) or ("cheapest", TOL); UserError naming the value otherwise."""
    name, colon, tol = str(text).partition(":")
    if name == "best" and not colon:
        return "best", 0.0
    if name == "cheapest":
        if not colon:
            return "cheapest", DEFAULT_TOLERANCE
        try:
            value = float(tol)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return "cheapest", value
    raise UserError(f"--pick {text!r}: expected {PICK_HELP}")


def pick_trial(records: list[TrialRecord], pick: tuple[str, float], kind: str) -> TrialRecord:
    """The trial ``pick`` (from :func:`parse_pick`) chooses: the best, or the cheapest (cost ``kind``) of the
    trials whose best val corr is within TOL (absolute) of the best one's; ties go to the higher score.
    UserError when no trial finished with a score, or, for cheapest, none has a cost."""
    best = best_trial(records)
    name, tol = pick
    if name == "best":
        return best
    near = [r for r in records if r.ranked and r.best_val_corr >= best.best_val_corr - tol and r.cost(kind) is not None]
    if not near:
        raise UserError(f"--pick cheapest: no trial reported its {kind} cost ({COSTS[kind][0]} is in no result)")
    return min(near, key=lambda r: (r.cost(kind), -r.best_val_corr))


def _record(trial: Any, run_dir: Path, max_t: int) -> TrialRecord:
    path = run_dir / Path(trial.path).name  # the folder as it is now (the run may have been moved)
    curve, reported = read_results(path / "result.json")
    last = curve[-1] if curve else {}
    status = {"ERROR": "error", "RUNNING": "running", "PENDING": "pending", "PAUSED": "pending"}.get(trial.status)
    error = None
    if status is None and TRIAL_ERROR in reported:  # TERMINATED by its own failure
        status, error = "failed", str(reported[TRIAL_ERROR])
    elif status is None:  # TERMINATED
        status = "done" if ran_to_end(reported, max_t) else "stopped"
    error_name = getattr(trial.run_metadata, "error_filename", None)
    if status == "error":
        error_file = path / (error_name or "error.txt")
        error = _tail(error_file) if error_file.is_file() else "failed (no error file)"
    checkpoint = None
    if trial.checkpoint is not None:
        checkpoint = path / Path(trial.checkpoint.path).name
    best = last.get("best_val_corr")
    return TrialRecord(
        trial_id=trial.trial_id,
        status=status,
        params={k: v for k, v in trial.config.items()},
        best_val_corr=float(best) if is_finite_number(best) else None,
        best_epoch=int(last["best_epoch"]) if is_finite_number(last.get("best_epoch")) else None,
        epochs=int(last.get("epoch", 0) or 0),
        path=path,
        checkpoint=checkpoint if checkpoint is not None and checkpoint.is_dir() else None,
        error=error,
        retries=int(getattr(trial.run_metadata, "num_failures", 0) or 0) - (status == "error"),
        curve=curve,
    )


def read_results(result_json: Path) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Tune's result.json (one JSON object per line): the per-epoch rows, one per epoch (last wins: a trial
    restarted from an older checkpoint reports some epochs again) with the trial's metrics and Tune's
    ``timestamp`` (s, when the driver got the result), and the last result as reported (it carries
    ``TRIAL_ERROR`` or ``FIT_DONE`` when the trial ended by itself)."""
    if not result_json.is_file():
        return [], {}
    rows: dict[int, dict[str, float]] = {}
    last: dict[str, Any] = {}
    for line in result_json.read_text().splitlines():
        if not line.strip():
            continue
        last = json.loads(line)
        if "epoch" in last and TRIAL_ERROR not in last:
            rows[int(last["epoch"])] = {k: last[k] for k in (*TRIAL_METRICS, "timestamp") if k in last}
    return [rows[e] for e in sorted(rows)], last


def _tail(path: Path, lines: int = 3) -> str:
    text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])


def is_finite_number(value: Any) -> bool:
    """A finite int or float (not None, NaN, inf or text)."""
    return isinstance(value, (int, float)) and math.isfinite(value)
