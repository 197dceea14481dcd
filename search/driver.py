"""The search driver: connect to Ray, prepare the data once, run the pre-flight checks, run or resume trials.

Used by the ``run``, ``resume`` and ``demo`` commands and by the tests (which bring their own Ray).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from search.prepare import absolute_data_paths, build_cache
from search.results import TrialRecord, load_trials
from search.space import SearchSpec
from sensorium.config import ExperimentConfig
from sensorium.errors import UserError


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at ``address`` (``auto`` or HOST:PORT), or start a private local Ray.

    Returns True when this call started or connected Ray (the caller shuts it down), False when Ray was
    already initialised in this process (tests, the demo).
    """
    import ray

    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            # "local": never attach to some other Ray found on this machine. A small object store: trials
            # share data through the memory-mapped cache, not through Ray objects.
            ray.init(
                address="local", num_cpus=num_cpus, include_dashboard=False,
                object_store_memory=256 * 1024**2, **common,
            )
    except ConnectionError as err:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({err})") from err
    return True


def run_search(spec: SearchSpec, run_dir: Path, *, address: str | None = None, progress: bool = True,
               live_every_s: float = 20.0) -> list[TrialRecord]:
    """Prepare, check and run a new search into ``run_dir``; returns the ranked trial records."""
    from search.tuner import new_tuner

    run_dir = Path(run_dir).resolve()
    base = absolute_data_paths(spec.base)
    spec = _with_base(spec, base)
    started = ensure_ray(address, num_cpus=None)
    try:
        _prepare_and_check(spec, base, run_dir, progress)
        tuner = new_tuner(spec, run_dir, live_every_s=live_every_s)
        return _fit(tuner, run_dir, spec, "search")
    finally:
        release_ray(started)


def resume_search(run_dir: Path, *, address: str | None = None, progress: bool = True) -> list[TrialRecord]:
    """Continue an interrupted search: completed trials are kept, unfinished ones resume from checkpoints."""
    from search.space import load_run_spec
    from search.tuner import restored_tuner

    run_dir = Path(run_dir).resolve()
    spec = load_run_spec(run_dir)
    started = ensure_ray(address, num_cpus=None)
    try:
        _prepare_and_check(spec, spec.base, run_dir, progress)
        return _fit(restored_tuner(run_dir, spec), run_dir, spec, "resumed search")
    finally:
        release_ray(started)


def _prepare_and_check(spec: SearchSpec, base: ExperimentConfig, run_dir: Path, progress: bool) -> None:
    from search.preflight import preflight

    scans = build_cache(base, progress=progress)
    s = spec.settings
    preflight(s.cpus_per_trial, s.gpus_per_trial, str(run_dir), scans)


def _fit(tuner: object, run_dir: Path, spec: SearchSpec, what: str) -> list[TrialRecord]:
    from search.tuner import close_orphans

    s = spec.settings
    print(
        f"{what}: {s.num_trials} trials, {s.max_concurrent} at a time, {s.cpus_per_trial:g} CPU"
        f" + {s.gpus_per_trial:g} GPU each -> {run_dir}",
        flush=True,
    )
    start = time.perf_counter()
    tuner.fit()  # type: ignore[attr-defined]
    records = load_trials(run_dir, s.asha.max_t)
    counts = {status: sum(r.status == status for r in records) for status in ("done", "stopped", "error")}
    ended = sum(counts.values())
    if ended == len(records) and (ended >= s.num_trials or s.time_budget_s):
        close_orphans(run_dir)  # the search is over: Optuna trials still "running" never ran
    print(
        f"{what} ended after {time.perf_counter() - start:.0f} s: {counts['done']} done, "
        f"{counts['stopped']} stopped early, {counts['error']} failed, {len(records) - ended} unfinished",
        flush=True,
    )
    return records


def _with_base(spec: SearchSpec, base: ExperimentConfig) -> SearchSpec:
    import dataclasses

    return dataclasses.replace(spec, base=base)


def release_ray(started: bool) -> None:
    """Shut Ray down if ``ensure_ray`` started it (``started``); leave a caller's own Ray running."""
    if started:
        import ray

        ray.shutdown()
    sys.stdout.flush()
