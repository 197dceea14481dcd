"""``sensorium-search export RUN_DIR --reseed-top K --seeds N``: pick the config by its mean over seeds, not by
one lucky seed.

A search ranks each configuration by one training run, one seed; seeds of one config differ by a few percent,
about the gaps between the top trials. Here the top K trials' configs (by that single run) are trained again with
N more seeds each, ``seed + 1`` ... ``seed + N`` of the trial's config, as Ray tasks (``members.run_members``, the
same tasks as retrain's seeds) into ``RUN_DIR/reseed/<trial id>_seed_<s>``, and the config with the best MEAN
validation correlation is picked.

The search's own run of a trial counts as one more seed when it trained to its end (status ``done``): a trial
that ASHA or the time budget stopped early scored after fewer epochs than its reseeded runs, which would pull its
mean down for a reason that is not the config's; such a run is recorded but not counted.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from search.store.results import TrialRecord
from sensorium.config import ExperimentConfig, set_value
from sensorium.errors import UserError

RESEED_DIR = "reseed"  # in the search's run folder: one folder per candidate and seed
RESEED_SEEDS = 2  # more seeds per candidate without --seeds


def reseed_top(run_dir: Path, configs: dict[str, ExperimentConfig], records: list[TrialRecord], top: int,
               seeds: int, *, cpus_per_seed: float | None = None, gpus_per_seed: float | None = None,
               address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the ``top`` best-ranked trials of ``records`` (ranked best first) with ``seeds`` more seeds each and
    rank them by their mean; ``configs``: trial id -> its resolved config. Returns what the provenance records
    (``reseed``): ``top``, ``seeds``, ``candidates`` (best mean first: trial id, single-seed rank, per-seed scores,
    mean, sd, the search's own run and whether it counted), ``pick`` (the trial id of the best mean) and
    ``single_seed_pick`` (the search's best trial: its rank by mean, its mean, and how far below the pick's mean it
    is). UserError for a bad ``top`` or ``seeds``, before anything trains."""
    from search.products.members import run_members, seed_resources
    from search.raytune.driver import ensure_ray, release_ray
    from search.raytune.preflight import preflight
    from search.raytune.prepare import absolute_data_paths
    from sensorium.data import load_data

    ranked = [r for r in records if r.ranked]
    if top < 1 or seeds < 1:
        raise UserError(f"--reseed-top {top} --seeds {seeds}: expected at least 1 of each")
    if top > len(ranked):
        raise UserError(f"--reseed-top {top}: only {len(ranked)} trial(s) of {run_dir} finished with a score")
    candidates = ranked[:top]
    jobs = {}  # "<trial id>_seed_<s>" -> config
    for r in candidates:
        cfg = absolute_data_paths(configs[r.trial_id])  # tasks run in other folders, maybe on other nodes
        for i in range(1, seeds + 1):
            jobs[f"{r.trial_id}_seed_{cfg.seed + i}"] = set_value(cfg, "seed", cfg.seed + i)
    out = Path(run_dir) / RESEED_DIR
    first = next(iter(jobs.values()))
    started = ensure_ray(address)
    try:
        cpus, gpus = seed_resources(first.train.device, len(jobs), cpus_per_seed, gpus_per_seed)
        preflight(cpus, gpus, str(out), [Path(p) for p in first.data.scans])
        for data in {job.data for job in jobs.values()}:  # the memory-mapped caches, built here once
            load_data(data, progress=progress)
        members, _ = run_members(jobs, out, cpus, gpus, progress, command="export")
    finally:
        release_ray(started)
    scores = dict(zip(jobs, (m["best_val_corr"] for m in members)))
    rows = []
    for rank, r in enumerate(candidates, 1):
        seed = configs[r.trial_id].seed
        per_seed = {seed + i: scores[f"{r.trial_id}_seed_{seed + i}"] for i in range(1, seeds + 1)}
        counted = r.status == "done"
        if counted:
            per_seed = {seed: r.best_val_corr, **per_seed}
        values = list(per_seed.values())
        rows.append({"trial_id": r.trial_id, "single_seed_rank": rank, "scores": per_seed,
                     "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
                     "search_run": {"seed": seed, "best_val_corr": r.best_val_corr, "status": r.status,
                                    "counted": counted}})
    rows.sort(key=lambda row: -row["mean"])
    single = next(i for i, row in enumerate(rows) if row["single_seed_rank"] == 1)
    return {"top": top, "seeds": seeds, "out": str(out), "candidates": rows, "pick": rows[0]["trial_id"],
            "single_seed_pick": {"trial_id": rows[single]["trial_id"], "rank_by_mean": single + 1,
                                 "mean": rows[single]["mean"], "below_pick": rows[0]["mean"] - rows[single]["mean"]}}


def format_reseed(reseed: dict[str, Any]) -> str:
    """The candidates as a plain-text table (best mean first: per-seed scores, mean, sd; ``*`` marks the search's
    own run, ``(not counted)`` one stopped early), then one line on the single-seed pick against the mean pick."""
    lines = [f"{'trial':<24}{'1-seed rank':>12}{'mean':>9}{'sd':>9}  scores by seed (* the search's own run)"]
    for row in reseed["candidates"]:
        own = row["search_run"]
        scores = [f"{seed}: {value:.4f}{'*' if int(seed) == own['seed'] else ''}" for seed, value in row["scores"].items()]
        if not own["counted"]:
            scores.append(f"{own['seed']}: {own['best_val_corr']:.4f}* (not counted: {own['status']})")
        sd = "-" if row["sd"] is None else f"{row['sd']:.4f}"
        lines.append(f"{row['trial_id']:<24}{row['single_seed_rank']:>12}{row['mean']:>9.4f}{sd:>9}  {', '.join(scores)}")
    single = reseed["single_seed_pick"]
    if single["rank_by_mean"] == 1:
        lines.append(f"the search's best trial {single['trial_id']} also has the best mean over seeds")
    else:
        lines.append(f"the search's best trial {single['trial_id']} ranks {single['rank_by_mean']} of "
                     f"{len(reseed['candidates'])} by mean, {single['below_pick']:.4f} below the pick {reseed['pick']}")
    return "\n".join(lines)

