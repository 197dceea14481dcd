"""``sensorium-search export RUN_DIR [--pick best|cheapest[:TOL]]``: one trial's full resolved config, ready
for ``train``.

``best_config.yaml`` = the experiment config of the picked trial, plus one top-level ``provenance:`` mapping
(``kind: best_config``) that ``load_config`` skips: trial id, how it was picked and its cost, best validation
correlation and epoch, config hash, seeds, library versions, git SHA, the trial's best checkpoint and its
origin. ``sensorium-search train best_config.yaml`` reruns it; its run folder's config has the same hash.

``--pick best`` (the default): the highest best-epoch validation correlation. ``--pick cheapest:TOL``: the
trial with the lowest cost (``search.cost``) among those within TOL (absolute) of that best, a point on
the Pareto front of a cost-aware search (any search's trials report both costs, so it works on every run).

``--reseed-top K --seeds N`` (``search.products.reseed``): the top K trials retrained with N more seeds each
(Ray tasks, into ``RUN_DIR/reseed/``); the config with the best mean validation correlation over its seeds is
written, and ``provenance.reseed`` records every candidate's per-seed scores, mean and sd, and where the search's
single-seed pick ranks by mean. ``provenance.best_val_corr`` stays the picked trial's search score.

A warm-started run's study also holds trials of an earlier run: export picks among this run's own trials
(their checkpoints are here) and, when an imported trial scored higher, says so and names the run to
export it from (``provenance.warm_start.best_imported``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


from search.products.reseed import RESEED_SEEDS, reseed_top as reseed_candidates
from sensorium.config import BEST_CONFIG_KIND, ExperimentConfig, config_hash, save_config
from sensorium.errors import UserError

BEST_CONFIG = "best_config.yaml"


def export_best(run_dir: Path, out: Path | None = None, pick: str = "best", reseed_top: int = 0, seeds: int = RESEED_SEEDS,
                *, cpus_per_seed: float | None = None, gpus_per_seed: float | None = None,
                address: str | None = None, progress: bool = True) -> Path:
    """Write the config of the trial ``pick`` chooses (``best`` or ``cheapest[:TOL]``, see the module docstring)
    with provenance; returns the file's path. UserError for a bad ``pick``, before anything is read. With
    ``reseed_top`` K > 0, the best mean over ``seeds`` more seeds of the top K trials picks instead
    (``reseed.reseed_top``, with one seed's resources, the Ray cluster and progress lines as retrain takes them)."""
    from search.store.results import COSTS, load_run, parse_pick, pick_trial
    from search.spec.space import active_params
    from sensorium.runtime import git_sha, library_versions

    how = parse_pick(pick)
    if reseed_top and how[0] != "best":
        raise UserError(f"--reseed-top and --pick {pick} exclude each other: --reseed-top picks by the mean over seeds")
    run_dir, spec, records = load_run(run_dir)
    kind = spec.settings.cost
    best = pick_trial(records, how, kind)
    reseed = None
    if reseed_top:
        configs = {r.trial_id: spec.resolve(r.params) for r in records if r.ranked}
        reseed = reseed_candidates(run_dir, configs, records, reseed_top, seeds, cpus_per_seed=cpus_per_seed,
                                   gpus_per_seed=gpus_per_seed, address=address, progress=progress)
        best = next(r for r in records if r.trial_id == reseed["pick"])
    cfg = spec.resolve(best.params)
    provenance: dict[str, Any] = {
        "kind": BEST_CONFIG_KIND,
        "search_run": str(run_dir),
        "trial_id": best.trial_id,
        "pick": (f"best mean of {reseed_top} trials over seeds" if reseed else how[0] if how[0] == "best"
                 else f"cheapest:{how[1]:g}"),
        "cost": {"kind": kind, "value": best.cost(kind), "unit": COSTS[kind][1]},
        "origin": "this run",
        "trial_status": best.status,
        "best_val_corr": best.best_val_corr,
        "best_epoch": best.best_epoch,
        "epochs_run": best.epochs,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "search_seed": spec.settings.seed,
        "searched": {p.key: best.params.get(p.key) for p in active_params(spec, best.params)},
        "trials": {s: sum(r.status == s for r in records) for s in ("done", "stopped", "error", "running")},
        "checkpoint": str(best.checkpoint / "best.pt") if best.checkpoint else None,
        "git_sha": git_sha(),
        "versions": library_versions(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if reseed:
        provenance["reseed"] = reseed
    warm_start = _warm_start(run_dir)
    if warm_start:
        provenance["warm_start"] = warm_start
    path = Path(out) if out else run_dir / BEST_CONFIG
    save_config(cfg, path, extra={"provenance": provenance})  # whole or not at all: an old file survives a failure
    return path


def _warm_start(run_dir: Path) -> dict[str, Any] | None:
    """The run's warm start (study.json) and its best imported trial, or None for a run without one."""
    import json

    from search.store.study import SOURCE_TRIAL, STUDY_FILE, WARM_START_FROM, load_study, trial_best

    info = json.loads((run_dir / STUDY_FILE).read_text()).get("warm_start") if (run_dir / STUDY_FILE).is_file() else None
    if not info:
        return None
    # imported trials, trained to their end (COMPLETE) or stopped early (PRUNED), as the ranking counts both
    scored = [(score, t) for t in load_study(run_dir).get_trials(deepcopy=False)
              if WARM_START_FROM in t.user_attrs and (score := trial_best(t)) is not None]
    score, top = max(scored, key=lambda st: st[0], default=(None, None))
    best = None if top is None else {"run": top.user_attrs[WARM_START_FROM], "source_trial": top.user_attrs.get(SOURCE_TRIAL),
                                     "best_val_corr": score}
    return {"from": info["from"], "imported": info["imported"], "left_out": info["left_out"], "best_imported": best}


def read_best_config(path: Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """(config, provenance) of a best_config.yaml; UserError when the file is not one."""
    from sensorium.config import load_config, read_yaml_mapping

    prov = read_yaml_mapping(path).get("provenance")
    if not isinstance(prov, dict) or prov.get("kind") != BEST_CONFIG_KIND:
        raise UserError(f"{path}: not a best_config.yaml written by `sensorium-search export`")
    return load_config(path), prov
