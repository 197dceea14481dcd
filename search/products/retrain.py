"""``sensorium-search retrain RUN_DIR|best_config.yaml``: the best config as a seed ensemble, submitted.

Trains the config with N seeds (``seed``, ``seed + 1``, ...), averages the N models' predictions of every
competition scan (aligned by trial and neuron id), and writes the official CSVs
``OUT/<data key>/submission_file_{live,final}_test.csv`` (each seed's own under ``OUT/seed_<s>/submission/``).
When a ground-truth folder is given or found next to the data, every file is scored: its CSVs are matched to
the scans' test tiers by their trial ids, in any layout (``sensorium.submission.match_ground_truth``: the
synthetic ``<gt>/<key>/ground_truth_<tier>.csv``, the official kit's ``ground_truth_file_<tier>.csv``); the
oracle is reported beside the scores when ``<gt>/<key>/oracle.json`` exists. Everything goes to
``OUT/retrain.json``.

Each seed is one Ray task with its own resources (``--cpus-per-seed``, ``--gpus-per-seed``; by default one
whole GPU per seed when training on CUDA), on a private local Ray or a cluster (``--address``), as many at
once as the resources allow. The driver builds the memory-mapped data cache once; each task maps it, runs
``fit``, writes its seed folder, its submissions and its test-tier predictions as ``.npy`` files
(``seed_<s>/predictions/``), and returns a summary of a few kB: at the real data size a seed's predictions
are about 128 MB, too much for Ray's object store. The driver then averages them one file at a time from
memory maps.

A seed that collapsed (``collapse_reasons``: it kept the untrained model, learned nothing, or scores far below its
best sibling) is left out of the ensemble: a line on stderr names it, its score and its siblings', and retrain.json
(``ensemble_seeds``, ``collapsed``), ``OUT/<data key>/ensemble_members.json`` beside the ensemble CSVs and the
score table's labels (``labelled``) say which seeds were averaged. A lone seed is kept, flagged, with a warning;
when every one of several seeds collapsed, retrain stops (UserError) before writing the ensemble or retrain.json.
``--seed-set S KEY=VALUE`` changes the config of seed S only (e.g. to try a suspect seed at a lower lr).

``--splits K`` trains a split ensemble: member ``k`` trains on the pooled train + validation trials of every
scan less fold ``k`` of K and early-stops on (keeps the best epoch of) that held-out fold (``data.split_folds``,
``split_fold``, ``split_seed`` in its config: ``sensorium.data.splits``; folds are dealt per image; the test tiers
are untouched). Alone, ``--splits K`` trains K members, member ``k`` with seed ``seed + k``; with ``--seeds N``, every
fold with every seed (K x N members). A member's folder is ``OUT/split_<k>_seed_<s>`` (``OUT/seed_<s>`` without
splits) and the ensemble, retrain.json (``ensemble_members``) and the score table name members that way. The
collapse rule compares members validated on different folds alike: a collapse is far outside their differences.

``--train-on-validation`` (a recorded choice) adds the validation tier to the training data; since early
stopping on data the model trains on is meaningless, fit then trains exactly ``train.max_epochs``, set to
the search's best epoch (from the best config's provenance), with no lr schedule, keeping the last weights.
"""

from __future__ import annotations

import json
import re
import sys
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.products.members import run_members, seed_resources
from search.products.scoring import ground_truth_files, read_oracle, score_all_files
from sensorium.atomic import exclusive_lock, write_text
from sensorium.config import ExperimentConfig, apply_overrides, config_hash, load_config, set_value
from sensorium.errors import UserError
from sensorium.runtime import is_cuda_request

DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")  # what --device accepts
RETRAIN_LOCK = ".retrain.lock"  # in the output folder, held by the retrain writing it
MEMBERS_FILE = "ensemble_members.json"  # beside each scan's ensemble CSVs: the members averaged and those left out
DEFAULT_SEEDS = 3  # retrain's seeds without --seeds and --splits

# When a seed counts as collapsed (collapse_reasons), judged on its best validation correlation:
# - not above COLLAPSE_FLOOR: a constant prediction scores exactly 0 (the dead output of a diverged model), so a best
#   score at or below 0 means the model learned nothing. No higher absolute floor: what a good model scores depends
#   on the data (about 0.3 on a real scan, 0.04 to 0.13 on the tiny test scans after 4 epochs).
# - below COLLAPSE_FRACTION of its best sibling's: seeds of one config differ by a few percent on a real scan (0.285
#   and 0.280), by up to 3x on the tiny test scans after a few epochs (0.04 to 0.126 over 6 seeds); a collapsed seed
#   scores near 0 (0.003 against 0.285 in the case that motivated this). A fifth is far outside seed noise, far above
#   a collapse.
# - best epoch 0: no epoch beat the untrained model, which is what best.pt then holds (on the tiny scans an untrained
#   model can score 0.08, so only this catches it there). Not with --train-on-validation: fit keeps the last epoch.
COLLAPSE_FLOOR = 0.0
COLLAPSE_FRACTION = 0.2


def retrain(source: Path, *, out: Path | None = None, seeds: int | None = None, splits: int = 0,
            train_on_validation: bool = False, ground_truth: Path | None = None, data: list[str] | None = None,
            force: bool = False, progress: bool = True, device: str | None = None, cpus_per_seed: float | None = None,
            gpus_per_seed: float | None = None, address: str | None = None,
            seed_overrides: Mapping[int, Sequence[str]] | None = None) -> dict[str, Any]:
    """Train, ensemble, write and score; returns what retrain.json holds. ``seeds``: seeds per fold (None: 3
    without ``splits``, else one per fold, see the module docstring); ``splits``: folds of a split ensemble (0:
    the official tiers); ``device``: train.device of every seed (None: the config's); ``cpus_per_seed``, ``gpus_per_seed``: one seed task's resources (None: see
    ``members.seed_resources``); ``address``: a Ray cluster to join (None: this process's Ray, else a local one);
    ``seed_overrides``: seed -> ``KEY=VALUE`` strings applied to that seed's config only (``--seed-set``).
    A folder another retrain is writing is refused (FolderInUse naming the folder and that process).
    Collapsed seeds are left out of the ensemble (``collapse_reasons``, ``pick_members``); UserError when every one
    of several seeds collapsed, before the ensemble or retrain.json is written."""
    from search.raytune.driver import ensure_ray, release_ray
    from search.raytune.preflight import preflight
    from search.raytune.prepare import absolute_data_paths
    from sensorium.data import load_data
    from sensorium.predict import competition_keys

    if seeds is not None and seeds < 1:
        raise UserError(f"--seeds {seeds}: expected at least 1")
    if splits and train_on_validation:
        raise UserError("--splits and --train-on-validation exclude each other: a split member early-stops on its "
                        "held-out fold")
    if splits == 1 or splits < 0:
        raise UserError(f"--splits {splits}: expected at least 2 folds")
    n_seeds = seeds or splits or DEFAULT_SEEDS  # the members' seeds: cfg.seed ... cfg.seed + n_seeds - 1
    n_members = splits * (seeds or 1) if splits else n_seeds  # as member_configs pairs them
    if device is not None and not DEVICES.fullmatch(device):
        raise UserError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if cpus_per_seed is not None and cpus_per_seed <= 0:
        raise UserError(f"--cpus-per-seed {cpus_per_seed:g}: expected a value > 0")
    cfg, provenance, default_out = load_source(Path(source))
    if data:
        cfg = set_value(cfg, "data.scans", [str(Path(p).resolve()) for p in data])
    choices: dict[str, Any] = {"train_on_validation": train_on_validation}
    if device is not None:
        cfg = set_value(cfg, "train.device", device)
        choices["device"] = device
    if train_on_validation:
        epochs = (provenance or {}).get("best_epoch")
        if not epochs:
            raise UserError(f"{source}: --train-on-validation needs the search's best epoch (a best_config.yaml)")
        cfg = set_value(set_value(cfg, "train.train_on_validation", True), "train.max_epochs", max(1, int(epochs)))
        choices["max_epochs"] = max(1, int(epochs))
    if splits:
        choices.update(splits=splits, split_seed=cfg.data.split_seed)
    overrides = check_seed_overrides(cfg, n_seeds, seed_overrides or {})
    if overrides:
        choices["seed_overrides"] = {str(seed): dict(kv.split("=", 1) for kv in items)
                                     for seed, items in overrides.items()}
    if gpus_per_seed == 0 and is_cuda_request(cfg.train.device):
        raise UserError(f"train.device={cfg.train.device!r} needs a GPU, but --gpus-per-seed is 0")
    out = Path(out or default_out).resolve()
    # Held to the end: a second retrain into this folder is refused, not interleaved with this one's files;
    # the kernel frees it if this process dies.
    with exclusive_lock(out / RETRAIN_LOCK, "retrain"):
        if (out / "retrain.json").exists() and not force:
            raise UserError(f"{out} already holds a retrain; pass --force to overwrite or choose --out")
        start = time.perf_counter()
        run_cfg = absolute_data_paths(cfg)  # tasks run in other folders, maybe on other nodes
        started = ensure_ray(address)
        try:
            cpus, gpus = seed_resources(run_cfg.train.device, n_members, cpus_per_seed, gpus_per_seed)
            preflight(cpus, gpus, str(out), [Path(p) for p in run_cfg.data.scans])
            # Builds the memory-mapped cache here, once, before the tasks map it.
            scans = load_data(run_cfg.data, progress=progress)
            if splits:
                check_folds(scans, splits, cfg.data.split_seed)  # before building that many configs
            jobs = member_configs(run_cfg, seeds, splits, overrides)
            competition = competition_keys(scans)
            truth = ground_truth_files(ground_truth, cfg, scans)  # a wrong --ground-truth fails before training
            members, saved = run_members(jobs, out, cpus, gpus, progress)
        finally:
            release_ray(started)
        # Before anything is written: when every one of several members collapsed this raises, and the folder holds
        # only the members' own runs.
        collapsed = pick_members(members, collapse_reasons(members, train_on_validation), out, train_on_validation)
        used = [m for m in members if not collapsed.get(member_name(m), {}).get("left_out")]
        record = {"seeds": [m["seed"] for m in used], "members": [member_name(m) for m in used],
                  **({"split_folds": splits, "split_seed": cfg.data.split_seed} if splits else {}),
                  "collapsed": list(collapsed.values())}
        files = write_seed_average(out, {member_name(m): saved[member_name(m)] for m in used}, scans, record)

        summary: dict[str, Any] = {
            "source": str(source), "out": str(out), "config_hash": config_hash(cfg),
            "seeds": [m["seed"] for m in members], "choices": choices, "search_provenance": provenance,
            "members": members, "ensemble_seeds": record["seeds"], "ensemble_members": record["members"],
            "collapsed": record["collapsed"],
            "collapse_rule": collapse_rule(train_on_validation), "ensemble_files": files,
            "ground_truth": truth and str(truth.root),
            "ground_truth_files": truth and truth.by_key(), "seconds": None,
        }
        if truth is not None:
            summary["scores"] = {"ensemble": score_all_files(files, truth.files),
                                 **{member_name(m): score_all_files(m["files"], truth.files) for m in members}}
            summary["oracle"] = read_oracle(truth.root, competition)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_text(out / "retrain.json", json.dumps(summary, indent=2, default=_jsonable))
    return summary


def member_configs(cfg: ExperimentConfig, seeds: int | None = None, splits: int = 0,
                   overrides: Mapping[int, Sequence[str]] | None = None) -> dict[str, ExperimentConfig]:
    """Member folder name -> its config, in ensemble order: without ``splits``, ``seed_<s>`` for the ``seeds``
    (None: ``DEFAULT_SEEDS``) seeds ``cfg.seed`` ... ``cfg.seed + seeds - 1``; with ``splits`` K and ``seeds`` None,
    one member per fold, ``split_<k>_seed_<cfg.seed + k>``; with both, every fold with every seed (K x N). A split
    member's config says its fold (``data.split_folds``, ``data.split_fold``). ``overrides``: seed -> ``KEY=VALUE``
    strings applied to the members of that seed."""
    if not splits:
        pairs = [(None, cfg.seed + i) for i in range(seeds or DEFAULT_SEEDS)]
    elif seeds is None:
        pairs = [(k, cfg.seed + k) for k in range(splits)]
    else:
        pairs = [(k, cfg.seed + i) for k in range(splits) for i in range(seeds)]
    jobs = {}
    for fold, seed in pairs:
        member_cfg = set_value(cfg, "seed", seed)
        if fold is not None:
            member_cfg = set_value(set_value(member_cfg, "data.split_folds", splits), "data.split_fold", fold)
        member = {"seed": seed} if fold is None else {"seed": seed, "split_fold": fold}
        jobs[member_name(member)] = apply_overrides(member_cfg, list((overrides or {}).get(seed, ())))
    return jobs


def member_name(member: Mapping[str, Any]) -> str:
    """A member's folder name and key in retrain.json's scores: ``seed_<s>``, or ``split_<k>_seed_<s>`` for a
    member of a split ensemble (``member``: a retrain.json entry, with ``split_fold`` when it has one)."""
    return f"split_{member['split_fold']}_seed_{member['seed']}" if "split_fold" in member else f"seed_{member['seed']}"


def member_label(member: Mapping[str, Any]) -> str:
    """A member as messages name it: ``seed 3`` or ``split 0 seed 3``."""
    return member_name(member).replace("_", " ")


def check_folds(scans: Mapping[str, Any], splits: int, seed: int) -> None:
    """UserError naming ``--splits`` and the scan when a scan of ``scans`` (data key -> ScanData, official tiers)
    has fewer distinct train + validation images than ``splits`` folds."""
    from sensorium.data.splits import POOLED, fold_of_images

    for key, scan in scans.items():
        try:
            fold_of_images(scan.image_ids[scan.tier_indices(POOLED)], splits, seed)
        except UserError as err:
            raise UserError(f"--splits {splits}: scan {key}: {err}") from None


def write_seed_average(out: Path, saved: Mapping[str, Mapping[str, Mapping[str, str]]],
                       scans: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, str]:
    """The ensemble's official CSVs ``out/<data key>/<file name>``: per file, the members' saved predictions
    (``saved``: member name -> "<data key>/<file name>" -> {"values", "rows"} paths, memory-mapped) summed in
    float64 in ``saved``'s order, divided by their number, keyed by trial and neuron id through ``scans`` (data
    key -> ScanData). One file's sum is in memory at a time. Beside them, ``out/<data key>/ensemble_members.json``
    holds ``record`` (the members averaged and those left out). Returns "<data key>/<file name>" -> path.
    RuntimeError when the members predicted different trials."""
    from sensorium.predict import keyed
    from sensorium.submission import write_submission

    files = {}
    for rel in next(iter(saved.values())):
        total, rows = None, None
        for name in saved:
            values = np.load(saved[name][rel]["values"], mmap_mode="r")  # (trials, neurons)
            member_rows = np.load(saved[name][rel]["rows"])
            if total is None:
                total, rows = values.astype(np.float64), member_rows
            elif np.array_equal(rows, member_rows):
                total += values
            else:
                raise RuntimeError(f"{rel}: ensemble members predicted different trials")
        total /= len(saved)
        key, file_name = rel.split("/")
        pred = keyed(scans[key], rows, total)
        path = write_submission(out / key / file_name, pred.trial_ids, pred.image_ids, pred.neuron_ids, pred.values,
                                overwrite=True)
        files[rel] = str(path)
    members = json.dumps(record, indent=2, default=_jsonable)
    for key in sorted({rel.split("/")[0] for rel in files}):
        write_text(out / key / MEMBERS_FILE, members)
    return files


def collapse_reasons(members: Sequence[Mapping[str, Any]], train_on_validation: bool = False) -> dict[str, str]:
    """member name (``member_name``) -> why that member counts as collapsed, for each one that does. ``members``:
    retrain.json entries (``seed``, ``best_val_corr``, ``best_epoch``, ``split_fold`` for a split member). A member
    collapsed when its best validation correlation is not finite or not above ``COLLAPSE_FLOOR``, when it is below
    ``COLLAPSE_FRACTION`` times its best sibling's (the highest of the others; none with one member), or, unless
    ``train_on_validation``, when its best epoch is 0 (no epoch beat the untrained model). With
    ``train_on_validation`` the validation tier is training data: the score compared is the last epoch's in-sample
    fit to it, which a collapsed model cannot raise either.

    >>> collapse_reasons([{"seed": 0, "best_val_corr": 0.285, "best_epoch": 8},
    ...                   {"seed": 1, "best_val_corr": 0.003, "best_epoch": 0}])["seed_1"]
    'best epoch 0: no epoch beat the untrained model; best val corr 0.0030 < 0.2 x 0.2850 (seed 0, best sibling)'
    """
    reasons: dict[str, str] = {}
    for m in members:
        score, why = float(m["best_val_corr"]), []
        siblings = [(float(o["best_val_corr"]), member_label(o)) for o in members
                    if o is not m and math.isfinite(o["best_val_corr"])]
        if not train_on_validation and m["best_epoch"] == 0:
            why.append("best epoch 0: no epoch beat the untrained model")
        if not math.isfinite(score) or score <= COLLAPSE_FLOOR:
            why.append(f"best val corr {score:.4f} <= {COLLAPSE_FLOOR:g}: no better than a constant prediction")
        elif siblings and score < COLLAPSE_FRACTION * max(siblings)[0]:
            best, label = max(siblings)
            why.append(f"best val corr {score:.4f} < {COLLAPSE_FRACTION:g} x {best:.4f} ({label}, best sibling)")
        if why:
            reasons[member_name(m)] = "; ".join(why)
    return reasons


def pick_members(members: Sequence[Mapping[str, Any]], reasons: Mapping[str, str], out: Path,
                 train_on_validation: bool = False) -> dict[str, dict[str, Any]]:
    """member name -> {seed, [split_fold,] best_val_corr, best_epoch, reason, left_out} for each collapsed member
    (``reasons``), with one stderr line each naming it, its score and its siblings'. Collapsed members are left
    out of the ensemble, except a lone one (nothing to replace it: kept, with a warning). UserError, one line
    naming every member and score, when several members all collapsed (``out``: where their runs are;
    ``train_on_validation``: which rule judged them, for the message)."""
    split = any("split_fold" in m for m in members)
    noun = "member" if split else "seed"
    if len(members) > 1 and len(reasons) == len(members):
        runs = "; ".join(f"{member_label(m)} {m['best_val_corr']:.4f} at epoch {m['best_epoch']}" for m in members)
        folder = "split_<k>_seed_<s>" if split else "seed_<s>"
        raise UserError(f"all {len(members)} {noun}s collapsed ({runs}): no ensemble written; their runs are in "
                        f"{out}/{folder} (rule: {collapse_rule(train_on_validation)['text']})")
    entries = {}
    for m in members:
        name = member_name(m)
        if name not in reasons:
            continue
        left_out = len(members) > 1
        entries[name] = {"seed": m["seed"], **({"split_fold": m["split_fold"]} if "split_fold" in m else {}),
                         "best_val_corr": m["best_val_corr"], "best_epoch": m["best_epoch"],
                         "reason": reasons[name], "left_out": left_out}
        siblings = ", ".join(f"{member_label(o)} {o['best_val_corr']:.4f}" for o in members if o is not m)
        what = "left out of the ensemble" if left_out else f"kept though collapsed (the only {noun})"
        print(f"warning: retrain: {member_label(m)} {what}: best val corr {m['best_val_corr']:.4f} at epoch "
              f"{m['best_epoch']}{f' (siblings: {siblings})' if siblings else ''}: {reasons[name]}",
              file=sys.stderr, flush=True)
    return entries


def collapse_rule(train_on_validation: bool) -> dict[str, Any]:
    """The collapse rule as retrain.json records it: its thresholds, what is compared, and one line of text."""
    compared = ("the last epoch's correlation on the validation tier, trained on (in-sample fit)"
                if train_on_validation else "the best epoch's correlation on the held-out validation tier")
    text = (f"collapsed: best val corr not above {COLLAPSE_FLOOR:g}, or below {COLLAPSE_FRACTION:g} x the best "
            f"sibling's" + ("" if train_on_validation else ", or best epoch 0"))
    return {"floor": COLLAPSE_FLOOR, "fraction_of_best_sibling": COLLAPSE_FRACTION,
            "best_epoch_0": not train_on_validation, "compared": compared, "text": text}


def ensemble_label(summary: Mapping[str, Any]) -> str:
    """What the ensemble of a retrain.json ``summary`` averages: "ensemble of seeds 0, 2", or of a split ensemble
    "ensemble of split_0_seed_0, split_1_seed_1" (its members' folder names: fold and seed)."""
    names = summary.get("ensemble_members") or []
    if any(name.startswith("split_") for name in names):
        return f"ensemble of {', '.join(names)}"
    seeds = summary.get("ensemble_seeds", summary["seeds"])
    return f"ensemble of seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def labelled(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` with its score labels saying what each model is, for ``scoring.score_table``: "ensemble of
    seeds 0, 2" (``ensemble_label``) and "seed_1 (left out)" (or "(collapsed)" for a lone kept one)."""
    entries = {member_name(c): c for c in summary.get("collapsed") or []}

    def label(model: str) -> str:
        if model == "ensemble":
            return ensemble_label(summary)
        if model in entries:
            return f"{model} ({'left out' if entries[model]['left_out'] else 'collapsed'})"
        return model

    scores = summary.get("scores")
    return {**summary, "scores": scores and {label(model): s for model, s in scores.items()}}


def check_seed_overrides(cfg: ExperimentConfig, seeds: int,
                         overrides: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
    """``overrides`` (seed -> ``KEY=VALUE`` strings, ``--seed-set``) checked before anything runs: each seed one of
    the ``seeds`` trained from ``cfg.seed``, each override a valid config value, none setting ``seed`` or
    ``data.scans`` (what makes the seeds one ensemble of the same data). UserError naming the bad one."""
    valid = range(cfg.seed, cfg.seed + seeds)
    checked = {}
    for seed, items in sorted(overrides.items()):
        if seed not in valid:
            raise UserError(f"--seed-set {seed}: not a seed of this retrain (seeds {valid.start} to {valid.stop - 1})")
        for item in items:
            if item.split("=", 1)[0].strip() in ("seed", "data.scans"):
                raise UserError(f"--seed-set {seed} {item}: the seed and data.scans are the same for every seed")
        apply_overrides(set_value(cfg, "seed", seed), list(items))  # a bad key or value: ConfigError naming it
        checked[seed] = list(items)
    return checked


def load_source(source: Path) -> tuple[ExperimentConfig, dict[str, Any] | None, Path]:
    """(config, search provenance or None, default output folder) of a run folder or a config file."""
    if source.is_dir():
        from search.products.export import BEST_CONFIG, export_best

        best = source / BEST_CONFIG
        if not best.is_file():
            export_best(source)
        source, default_out = best, source / "retrain"
    else:
        default_out = source.parent / f"retrain-{source.stem}"
    if not source.is_file():
        raise UserError(f"{source}: no such run folder or config file")
    from search.products.export import read_best_config

    try:
        cfg, provenance = read_best_config(source)
    except UserError:
        cfg, provenance = load_config(source), None  # a plain experiment config (e.g. the baseline)
    return cfg, provenance, default_out


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
