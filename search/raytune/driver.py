"""The search driver: connect to Ray, prepare the data once, run the pre-flight checks, run or resume trials.

Used by the ``run``, ``resume`` and ``demo`` commands and by the tests (which bring their own Ray).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from search.raytune.prepare import absolute_data_paths, prepare_caches
from search.spec.settings import AUTO
from search.spec.space import SearchSpec, with_settings
from search.store.results import (
    ENDED, TrialRecord, compute_spent, load_trials, quiet_missing_metrics, status_counts,
)
from sensorium.atomic import exclusive_lock
from sensorium.config import ExperimentConfig
from sensorium.errors import SearchInterrupted, UserError

if TYPE_CHECKING:
    from search.store.warm_start import WarmStart

# In the run folder, held by the driver for a whole run or resume: a second driver there is refused (one
# line naming the folder and the holder's pid); the kernel frees it when the holder dies, killed or not.
SEARCH_LOCK = ".search.lock"


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
            # share data through the memory-mapped cache, not through Ray objects. Token authentication:
            # Ray 2.60 turns it on for a new local cluster and logs a warning that it did; it stays on, the
            # warning (not ours to act on) is kept out of the command's output. The dashboard is off.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(
                address="local", num_cpus=num_cpus, include_dashboard=False,
                object_store_memory=256 * 1024**2, **common,
            )
    except ConnectionError as err:
        raise UserError(f"--address {address}: cannot connect to a Ray cluster ({err})") from err
    return True


def run_search(spec: SearchSpec, run_dir: Path, *, address: str | None = None, progress: bool = True,
               live_every_s: float = 20.0, warm_start: WarmStart | None = None) -> list[TrialRecord]:
    """Prepare, check and run a new search into ``run_dir``; returns the ranked trial records.

    ``warm_start`` (``search.store.warm_start.plan_warm_start``): earlier trials added to the study first."""
    from search.raytune.tuner import new_tuner

    run_dir = Path(run_dir).resolve()
    base = absolute_data_paths(spec.base)
    spec = _with_base(spec, base)
    with exclusive_lock(run_dir / SEARCH_LOCK, "search"):
        started = ensure_ray(address, num_cpus=None)
        try:
            spec = _prepare_and_check(spec, base, run_dir, progress)
            tuner = new_tuner(spec, run_dir, live_every_s=live_every_s, warm_start=warm_start)
            if warm_start is not None:
                print(warm_start.line(), flush=True)
            return _fit(tuner, run_dir, spec, "search", address)
        finally:
            release_ray(started)


def resume_search(run_dir: Path, *, address: str | None = None, progress: bool = True) -> list[TrialRecord]:
    """Continue an interrupted search: completed trials are kept, unfinished ones resume from checkpoints."""
    from search.spec.space import load_run_spec
    from search.raytune.tuner import restored_tuner

    run_dir = Path(run_dir).resolve()
    spec = load_run_spec(run_dir)
    with exclusive_lock(run_dir / SEARCH_LOCK, "search"):
        started = ensure_ray(address, num_cpus=None)
        try:
            spec = _prepare_and_check(spec, spec.base, run_dir, progress)
            return _fit(restored_tuner(run_dir, spec), run_dir, spec, "resumed search", address)
        finally:
            release_ray(started)


def _prepare_and_check(spec: SearchSpec, base: ExperimentConfig, run_dir: Path, progress: bool) -> SearchSpec:
    """Build the caches, settle ``gpus_per_trial`` (``auto``: ``search.spec.gpu_share``) and run the pre-flight
    checks; returns ``spec`` with its GPUs per trial as the trials will get them."""
    from search.spec.gpu_share import card_memory, choose_gpus_per_trial, memory_plan
    from search.raytune.preflight import alive_nodes, check_memory, preflight
    from sensorium.data import load_data
    from sensorium.memory import ScanShape

    scans = prepare_caches(base, progress=progress)
    s = spec.settings
    nodes = alive_nodes()
    cluster_gpus = sum(n.gpus for n in nodes)
    card = plan = None
    if cluster_gpus and s.gpus_per_trial != 0:  # the memory of trials on GPUs, at the data's real shapes
        card = card_memory(s.gpu_memory_gb)
        plan = memory_plan(spec, ScanShape.of(load_data(base.data, progress=False)))
    if s.gpus_per_trial == AUTO:
        gpus, line = choose_gpus_per_trial(s, nodes, card, plan)
        print(line, flush=True)
        spec = with_settings(spec, gpus_per_trial=gpus)
    elif s.gpus_per_trial == 0 and cluster_gpus:
        print(f"warning: gpus_per_trial 0 on a Ray cluster with {cluster_gpus:g} GPUs: trials will train on the CPU "
              "(gpus_per_trial auto shares the cards)", file=sys.stderr, flush=True)
    gpus = spec.settings.gpus_per_trial
    preflight(s.cpus_per_trial, gpus, str(run_dir), scans)
    if plan is not None and card is not None and gpus > 0:
        check_memory(plan, gpus, card)
    return spec


def _fit(tuner: object, run_dir: Path, spec: SearchSpec, what: str, address: str | None) -> list[TrialRecord]:
    """Run the trials; Ctrl-C or SIGTERM stops them cleanly (SearchInterrupted, with the resume command).

    A search that ran out of its time or compute budget ended normally, with fewer trials than requested
    and the trials it stopped counted as stopped; anything else that ends it short is an interruption.
    """
    from search.store.study import close_orphans

    s = spec.settings
    print(
        f"{what}: {s.num_trials} trials, {s.max_concurrent} at a time, {s.cpus_per_trial:g} CPU"
        f" + {s.gpus_per_trial:g} GPU each -> {run_dir}",
        flush=True,
    )
    start = time.perf_counter()
    with _sigterm_stops_tune(), quiet_missing_metrics():  # Tune reads the trials back when the search ends
        tuner.fit()  # type: ignore[attr-defined]
    records = load_trials(run_dir, s.asha.max_t)
    counts = status_counts(records)
    ended = sum(counts[status] for status in ENDED)
    seconds, epochs = compute_spent(records)
    budget_spent = s.compute_budget_s is not None and seconds >= s.compute_budget_s
    over_budget = bool(s.time_budget_s) or budget_spent  # a budget, not an interruption, ended it short
    if ended == len(records) and (ended >= s.num_trials or over_budget):
        close_orphans(run_dir, records, s.cost)  # the search is over
    budget = f" of a {s.compute_budget_s:g} s budget" if s.compute_budget_s is not None else ""
    print(
        f"{what} ended after {time.perf_counter() - start:.0f} s: {counts['done']} done, {counts['stopped']} "
        f"stopped early, {counts['failed']} failed by themselves, {counts['error']} lost to infrastructure "
        f"failures, {len(records) - ended} unfinished; {counts['retries']} restarts after a lost worker or node; "
        f"compute {seconds:.0f} s of training{budget} in {epochs} trial-epochs",
        flush=True,
    )
    if len(records) - ended > 0 or (ended < s.num_trials and not over_budget):
        command = f"sensorium-search resume {run_dir}" + (f" --address {address}" if address else "")
        raise SearchInterrupted(
            f"the search stopped before its trials ended; every checkpoint is kept. Continue it with: {command}"
        )
    return records


@contextmanager
def _sigterm_stops_tune() -> Iterator[None]:
    """Inside: SIGTERM (what SLURM and `kill` send) stops the search the way Ctrl-C does.

    Tune handles SIGINT and SIGUSR1 by ending the run after saving the experiment state one last time;
    SIGTERM is turned into SIGUSR1 for it. The previous handler comes back on exit.
    """
    def forward(signum: int, frame: object) -> None:
        os.kill(os.getpid(), signal.SIGUSR1)

    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_base(spec: SearchSpec, base: ExperimentConfig) -> SearchSpec:
    import dataclasses

    return dataclasses.replace(spec, base=base)


def release_ray(started: bool) -> None:
    """Shut Ray down if ``ensure_ray`` started it (``started``); leave a caller's own Ray running."""
    if started:
        import ray

        ray.shutdown()
    sys.stdout.flush()
