"""``sensorium-search ensemble RUN``: a weighted ensemble of the search's own trials, chosen on validation.

Candidates are the trials that finished (``done``, or ``stopped`` early by ASHA or the time budget) with a
best checkpoint (``best.pt`` of the trial's latest persisted checkpoint: its best epoch up to then); failed
and unfinished trials and trials without one are skipped and counted. Each candidate predicts once (eval
mode, readouts at their means): the validation tier of every scan and both test tiers of every competition
scan, each tier written as ``<data key>.<tier>.npy`` (trials, neurons) float32 under
``RUN/ensemble/cache/<trial id>/`` as soon as it is predicted, then ``key.json`` (the checkpoint's path, mtime
and size and the scans' cache folders); a later call builds no model for an unchanged trial. Predictions
are never all held in memory (at the real data size a trial's are about 240 MB: 7 scans x 500 validation
trials and 2 competition scans x 2,000 test trials, x 8,000 neurons, float32): everything after prediction
reads them from the cache, memory-mapped, one file at a time.

Greedy forward selection with replacement (Caruana et al. 2004, :func:`select_greedy`) starts from the best
single trial and adds, one at a time, the candidate (one already in included) that most raises the
validation single-trial correlation of the averaged prediction, pooled over scans as fit and the search
pool it (``metrics.pooled_single_trial_correlation``), until no addition gains more than ``TOLERANCE`` or
``--max-members`` are in. It keeps the running sum of the members' predictions and the z-scored responses
per scan, so its memory does not grow with the number of candidates. Weights are counts / members;
predictions are averaged in the model's normalised response units, as retrain's seed ensemble averages them.

Writes into ``RUN/ensemble/`` (or ``--out``): the official CSVs ``<data key>/submission_file_{live,final}_test.csv``,
the best single trial's under ``best_trial/``, ``ensemble.json`` and ``ensemble.md``. With ground truth (found
next to the data, or ``--ground-truth``: matched to the scans by trial ids as retrain matches it,
``search.products.scoring.ground_truth_files``) both are scored next to the oracle and to the seed ensemble of the
best config (``--retrain DIR``; default ``RUN/retrain`` when it holds a retrain.json).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.products.scoring import ground_truth_files, read_oracle, score_all_files, score_table
from sensorium.atomic import atomic_write, exclusive_lock, write_text
from sensorium.errors import UserError
from sensorium.metrics import zscore

TOLERANCE = 1e-6  # a step must raise the validation correlation by more than this
MAX_MEMBERS = 10
CACHE_KEY = "key.json"  # written last: a prediction cache folder without a matching one is rebuilt
CACHE_FORMAT = 1
LOCK = ".ensemble.lock"

Slot = tuple[str, str]  # (data key, tier)


# ------------------------------------------------------------------------------------------ selection
@dataclass(frozen=True)
class Step:
    """One step of the selection."""

    member: str  # the candidate added
    val_corr: float  # pooled validation single-trial correlation of the ensemble after this step
    gain: float | None  # val_corr minus the previous step's; None for the first member


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_greedy`: the members in the order chosen (repeats allowed)."""

    steps: tuple[Step, ...]
    singles: dict[str, float]  # each candidate's own validation correlation
    stopped: str  # "no improvement" or "max members"

    @property
    def counts(self) -> dict[str, int]:
        """Member -> times chosen, in the order first chosen."""
        return dict(Counter(s.member for s in self.steps))

    @property
    def weights(self) -> dict[str, float]:
        """Member -> count / members (they sum to 1)."""
        return {m: c / len(self.steps) for m, c in self.counts.items()}

    @property
    def val_corr(self) -> float:
        return self.steps[-1].val_corr


def select_greedy(candidates: Mapping[str, Sequence[np.ndarray]], responses: Sequence[np.ndarray],
                  max_members: int = MAX_MEMBERS, tolerance: float = TOLERANCE) -> Selection:
    """Greedy forward selection with replacement (Caruana et al. 2004) on the single-trial correlation.

    ``candidates``: name -> one (trials, neurons) prediction per scan; ``responses``: the recorded responses
    of the same scans, rows and columns alike. Starts from the best single candidate, then adds the
    candidate whose addition most raises ``pooled_single_trial_correlation`` of the members' mean (ties: the
    first in ``candidates``' order), until the best gain is at most ``tolerance`` or ``max_members`` are in.

    Memory does not grow with the number of candidates: per scan it holds the z-scored responses and the
    members' running sum (float64, (trials, neurons) each) and one candidate's mean at a time. Candidates may
    be lazy sequences of memory maps (:meth:`CachedPredictions.tier`): each step reads every candidate once.

    >>> r = [np.array([[0.0], [1.0], [2.0]])]
    >>> select_greedy({"a": [np.array([[0.0], [1.0], [2.5]])], "b": [np.ones((3, 1))]}, r).counts
    {'a': 1}
    """
    if max_members < 1:
        raise ValueError(f"max_members must be at least 1, got {max_members}")
    if not candidates:
        raise ValueError("no candidates to select from")
    names = list(candidates)
    z = [zscore(r) for r in responses]  # (trials, neurons) per scan, once
    singles = {n: _pooled_corr(z, candidates[n]) for n in names}
    first = max(names, key=lambda n: _finite_or_worst(singles[n]))
    total = [np.array(p, dtype=np.float64) for p in candidates[first]]  # sum of the members, per scan
    steps = [Step(first, singles[first], None)]
    while len(steps) < max_members:
        k = len(steps) + 1
        scores = {n: _pooled_corr(z, candidates[n], total, k) for n in names}
        best = max(names, key=lambda n: _finite_or_worst(scores[n]))  # a member predicting NaN: never
        gain = scores[best] - steps[-1].val_corr
        if not gain > tolerance:  # NaN included
            return Selection(tuple(steps), singles, "no improvement")
        for t, p in zip(total, candidates[best]):
            t += p
        steps.append(Step(best, scores[best], gain))
    return Selection(tuple(steps), singles, "max members")


def _pooled_corr(z: Sequence[np.ndarray], preds: Sequence[np.ndarray], total: Sequence[np.ndarray] | None = None,
                 k: int = 1) -> float:
    """``metrics.pooled_single_trial_correlation`` of ``(total + preds) / k`` (``total`` None: ``preds``
    alone) against the responses whose z-scores are ``z`` (``metrics.zscore``), one (trials, neurons) array per
    scan: per neuron the mean of zscore(mean prediction) * z. A few (trials, neurons) float64 temporaries of one
    scan at a time."""
    per_neuron = []
    for s, (zs, p) in enumerate(zip(z, preds)):
        x = np.array(p, dtype=np.float64) if total is None else np.add(total[s], p, dtype=np.float64)
        x /= k
        per_neuron.append((zscore(x) * zs).mean(axis=0))
    return float(np.mean(np.concatenate(per_neuron)))


def _finite_or_worst(score: float) -> float:
    return score if math.isfinite(score) else -math.inf


def split_candidates(records: Sequence[Any]) -> tuple[list[Any], dict[str, int]]:
    """(trials that finished with a best.pt, in the given order; skipped counts: failed, unfinished,
    no_checkpoint). ``records``: ``search.store.results.TrialRecord``s."""
    chosen, skipped = [], {"failed": 0, "unfinished": 0, "no_checkpoint": 0}
    for r in records:
        if r.status in ("failed", "error"):
            skipped["failed"] += 1
        elif r.status not in ("done", "stopped"):
            skipped["unfinished"] += 1
        elif r.checkpoint is None or not (r.checkpoint / "best.pt").is_file():
            skipped["no_checkpoint"] += 1
        else:
            chosen.append(r)
    return chosen, skipped


# ------------------------------------------------------------------------------------------ build
def build_ensemble(run_dir: Path, *, max_members: int = MAX_MEMBERS, out: Path | None = None,
                   retrain_dir: Path | None = None, ground_truth: Path | None = None,
                   data: list[str] | None = None, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Predict (or read the cache), select, write and score; returns what ensemble.json holds. ``data``
    replaces the search's data.scans; ``device`` runs the predictions (auto: a GPU when visible)."""
    from search.store.results import load_run
    from sensorium.config import set_value
    from sensorium.predict import competition_keys
    from sensorium.runtime import resolve_device
    from sensorium.submission import SUBMISSION_FILES

    if max_members < 1:
        raise UserError(f"--max-members {max_members}: expected at least 1")
    start = time.perf_counter()
    run_dir, spec, records = load_run(Path(run_dir))
    chosen, skipped = split_candidates(records)
    if not chosen:
        raise UserError(f"{run_dir}: no finished trial with a best checkpoint ({_skipped_text(skipped)})")
    previous = _read_retrain(retrain_dir, run_dir)
    torch_device = resolve_device(device)
    out = Path(out).resolve() if out else run_dir / "ensemble"
    say = _printer(progress)
    say(f"ensemble: {len(chosen)} candidate trials ({_skipped_text(skipped)})")
    configs = {r.trial_id: spec.resolve(r.params) for r in chosen}
    if data:
        scans_given = [str(Path(p).resolve()) for p in data]
        configs = {t: set_value(c, "data.scans", scans_given) for t, c in configs.items()}
    with ExitStack() as locks:  # the cache, and the output folder when elsewhere
        for folder in dict.fromkeys([run_dir / "ensemble", out]):
            locks.enter_context(exclusive_lock(folder / LOCK, "ensemble"))
        loaded: dict[Any, dict[str, Any]] = {}  # data-loading settings -> scans (trials differ in batch size only)
        first_cfg = configs[chosen[0].trial_id]
        # before any prediction: a --ground-truth that matches nothing fails at once
        truth = ground_truth_files(ground_truth, first_cfg, _load(first_cfg, loaded, progress))
        preds: dict[str, CachedPredictions] = {}
        cached = 0
        for i, r in enumerate(chosen, 1):
            t0, cfg = time.perf_counter(), configs[r.trial_id]
            scans = _load(cfg, loaded, progress)
            cache = run_dir / "ensemble" / "cache" / r.trial_id
            preds[r.trial_id], hit = trial_predictions(r.checkpoint / "best.pt", scans, cache, torch_device,
                                                       cfg.data.eval_batch_size)
            cached += hit
            say(f"ensemble: predict {i}/{len(chosen)} {r.trial_id} "
                + ("(cached)" if hit else f"({time.perf_counter() - t0:.1f} s)"))
        scans = next(iter(loaded.values()))
        val = {k: scans[k].tier_indices("validation") for k in scans}
        selection = select_greedy({t: p.tier(list(scans), "validation") for t, p in preds.items()},
                                  [scans[k].normalised_responses(rows) for k, rows in val.items()], max_members)
        say(f"ensemble: {len(selection.steps)} members, {len(selection.counts)} distinct trials, validation "
            f"single-trial corr {selection.val_corr:.4f} (best single {selection.steps[0].val_corr:.4f}); "
            f"stopped: {selection.stopped}")
        competition = competition_keys(scans)
        slots = [(k, name, tier) for k in competition for name, tier in SUBMISSION_FILES.items()]
        files = _write_average(out, selection.weights, preds, scans, slots)
        best_files = _write_average(out / "best_trial", {selection.steps[0].member: 1.0}, preds, scans, slots)

        by_id = {r.trial_id: r for r in chosen}
        summary: dict[str, Any] = {
            "run": str(run_dir), "out": str(out), "max_members": max_members, "tolerance": TOLERANCE,
            "candidates": len(chosen), "skipped": skipped, "predicted": len(chosen) - cached, "cached": cached,
            "stopped": selection.stopped, "val_corr": selection.val_corr, "best_trial": selection.steps[0].member,
            "steps": [{"step": i, "added": s.member, "val_corr": s.val_corr, "gain": s.gain}
                      for i, s in enumerate(selection.steps, 1)],
            "members": [{"trial_id": t, "count": c, "weight": selection.weights[t], "val_corr": selection.singles[t],
                         "search_best_val_corr": by_id[t].best_val_corr, "best_epoch": by_id[t].best_epoch,
                         "checkpoint": str(by_id[t].checkpoint / "best.pt")} for t, c in selection.counts.items()],
            "singles": selection.singles, "files": files, "best_trial_files": best_files,
            "retrain": previous and previous["out"],  # the seeds of retrain's ensemble (collapsed ones left out)
            "retrain_seeds": previous and previous.get("ensemble_seeds", previous.get("seeds")),
            "ground_truth": truth and str(truth.root), "ground_truth_files": truth and truth.by_key(), "seconds": None,
        }
        if truth is not None:
            scores = {"trial_ensemble": score_all_files(files, truth.files),
                      "best_trial": score_all_files(best_files, truth.files)}
            if previous:
                existing = {rel: p for rel, p in previous["ensemble_files"].items() if Path(p).is_file()}
                scores["seed_ensemble"] = score_all_files(existing, truth.files)
            summary["scores"], summary["oracle"] = scores, read_oracle(truth.root, competition)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        write_text(out / "ensemble.json", json.dumps(summary, indent=2))
        write_text(out / "ensemble.md", _markdown(summary))
    return summary


@dataclass(frozen=True)
class CachedPredictions:
    """One trial's predictions in its cache folder: ``<data key>.<tier>.npy``, (trials, neurons) float32 in
    normalised response units, rows in ``tier_indices`` order.

    ``cached[(key, tier)]`` memory-maps one file when asked and keeps nothing open: a held map also holds a
    file descriptor, and a hundred trials' files would pass the usual limit of 1,024.
    """

    folder: Path

    def __getitem__(self, slot: Slot) -> np.ndarray:
        key, tier = slot
        return np.load(self.folder / f"{key}.{tier}.npy", mmap_mode="r")

    def tier(self, keys: Sequence[str], tier: str) -> Sequence[np.ndarray]:
        """The tier's predictions of the scans ``keys``, one per scan, each memory-mapped when indexed."""
        return _Lazy(self, [(key, tier) for key in keys])


class _Lazy(Sequence[np.ndarray]):
    """Some tiers of one cached trial, one array per slot, memory-mapped only while in use."""

    def __init__(self, cached: CachedPredictions, slots: list[Slot]) -> None:
        self.cached, self.slots = cached, slots

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return self.cached[self.slots[i]]


def trial_predictions(checkpoint: Path, scans: Mapping[str, Any], cache: Path, device: Any,
                      batch_size: int = 0) -> tuple[CachedPredictions, bool]:
    """One checkpoint's predictions in ``cache``, and whether they were there already: the validation tier of
    every scan and the submission tiers of every competition scan. A cache whose key (checkpoint path,
    mtime, size, the scans' cache folders) or shapes differ is rebuilt: the model is loaded (eval mode) and
    predicts one tier of one scan at a time, each written whole and released before the next, key.json
    last."""
    from sensorium.predict import predict
    from sensorium.submission import SUBMISSION_FILES
    from sensorium.training.checkpoint import load_model

    slots = [(k, "validation") for k in scans]
    slots += [(k, tier) for k, s in scans.items() if s.scan.is_competition for tier in SUBMISSION_FILES.values()]
    stat = checkpoint.stat()
    key = {"format": CACHE_FORMAT, "checkpoint": str(checkpoint), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size,
           "scans": {k: s.scan.cache_dir.name for k, s in scans.items()}}
    cached = CachedPredictions(cache)
    try:
        if json.loads((cache / CACHE_KEY).read_text()) == key and all(
                cached[k, t].shape == (len(scans[k].tier_indices(t)), scans[k].n_neurons) for k, t in slots):
            return cached, True
    except (OSError, ValueError):  # no cache yet, or a damaged one: predict again
        pass
    (cache / CACHE_KEY).unlink(missing_ok=True)  # no key may vouch for files half replaced
    model, _ = load_model(checkpoint, device)
    for k, t in slots:
        values = predict(model, scans[k], t, device, batch_size).values  # (trials, neurons) float32
        with atomic_write(cache / f"{k}.{t}.npy", "wb") as f:
            np.save(f, values)
        del values  # before the next tier is predicted: one tier's predictions in memory at a time
    write_text(cache / CACHE_KEY, json.dumps(key, indent=2))
    return cached, False


def _load(cfg: Any, loaded: dict[Any, dict[str, Any]], progress: bool) -> dict[str, Any]:
    """The scans of a trial's config, loaded once per data-loading setting (all must hold the same keys)."""
    from sensorium.data import load_data

    d = cfg.data
    setting = (d.scans, d.cache_dir, d.image_height, d.image_width, d.behavior_channels, d.behavior_scaling)
    if setting not in loaded:
        loaded[setting] = load_data(d, progress=progress)
        first = next(iter(loaded.values()))
        if list(loaded[setting]) != list(first):
            raise UserError(f"trials read different scans ({list(first)} and {list(loaded[setting])})")
    return loaded[setting]


def _write_average(out: Path, weights: Mapping[str, float], preds: Mapping[str, CachedPredictions],
                   scans: Mapping[str, Any], slots: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """The weighted mean of the members' predictions (float64, then float32 in the file) as the official
    CSVs ``out/<key>/<name>``, one file's mean in memory at a time; returns "<key>/<name>" -> path."""
    from sensorium.predict import keyed
    from sensorium.submission import write_submission

    files = {}
    for key, name, tier in slots:
        mean = sum(w * np.asarray(preds[t][(key, tier)], dtype=np.float64) for t, w in weights.items())
        pred = keyed(scans[key], scans[key].tier_indices(tier), mean)
        path = write_submission(out / key / name, pred.trial_ids, pred.image_ids, pred.neuron_ids, pred.values,
                                overwrite=True)
        files[f"{key}/{name}"] = str(path)
    return files


def _read_retrain(retrain_dir: Path | None, run_dir: Path) -> dict[str, Any] | None:
    """retrain.json of ``retrain_dir`` (a folder or the file), or of RUN/retrain when not given and there."""
    path = Path(retrain_dir) if retrain_dir else run_dir / "retrain" / "retrain.json"
    if path.is_dir():
        path = path / "retrain.json"
    if not path.is_file():
        if retrain_dir:
            raise UserError(f"--retrain {retrain_dir}: no retrain.json there (an output folder of `retrain`)")
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable retrain.json ({err})") from err
    if not isinstance(summary, dict) or "ensemble_files" not in summary:
        raise UserError(f"{path}: not a retrain.json written by `sensorium-search retrain`")
    return {**summary, "out": str(path.parent)}


def format_steps(summary: Mapping[str, Any]) -> str:
    """The selection as a plain-text table: step, member added, validation corr after it, gain."""
    lines = [f"{'step':>4}  {'member added':<24}{'val corr':>10}{'gain':>10}"]
    for s in summary["steps"]:
        gain = "start" if s["gain"] is None else f"{s['gain']:+.4f}"
        lines.append(f"{s['step']:>4}  {s['added']:<24}{s['val_corr']:>10.4f}{gain:>10}")
    return "\n".join(lines)


def _markdown(summary: Mapping[str, Any]) -> str:
    members = len(summary["steps"])
    lines = [
        f"# Trial ensemble of `{summary['run']}`", "",
        f"- candidates: {summary['candidates']} finished trials with a best checkpoint "
        f"({_skipped_text(summary['skipped'])}); {summary['predicted']} predicted, {summary['cached']} from the cache",
        f"- greedy forward selection with replacement (Caruana et al. 2004) on the validation single-trial "
        f"correlation of the averaged prediction (mean over the neurons of all scans), at most "
        f"{summary['max_members']} members; stopped: {summary['stopped']}",
        f"- validation single-trial corr {summary['val_corr']:.4f} with {members} members "
        f"({len(summary['members'])} distinct trials) vs {summary['steps'][0]['val_corr']:.4f} for the best "
        f"single trial `{summary['best_trial']}`", "",
        "| step | member added | val single-trial corr | gain |", "|---:|---|---:|---:|",
        *(f"| {s['step']} | `{s['added']}` | {s['val_corr']:.4f} | "
          f"{'start' if s['gain'] is None else format(s['gain'], '+.4f')} |" for s in summary["steps"]), "",
        "| trial | weight | count | own val corr | search's best val corr (epoch) |", "|---|---:|---:|---:|---:|",
        *(f"| `{m['trial_id']}` | {m['weight']:.3f} | {m['count']} | {m['val_corr']:.4f} | "
          f"{_f(m['search_best_val_corr'])} ({m['best_epoch']}) |" for m in summary["members"]), "",
        "## Test scores", "",
    ]
    if summary.get("scores"):
        seeds = (f"retrain's {len(summary['retrain_seeds'] or [])} seeds of the best config (`{summary['retrain']}`)"
                 if summary["retrain"] else "none (no retrain folder found or given)")
        lines += [f"Ground truth: `{summary['ground_truth']}`. trial_ensemble: this ensemble; best_trial: its first "
                  f"member alone; seed_ensemble: {seeds}.", ""]
    lines += ["```", score_table(dict(summary)), "```", ""]
    return "\n".join(lines)


def _skipped_text(skipped: Mapping[str, int]) -> str:
    return (f"skipped: {skipped['failed']} failed, {skipped['unfinished']} unfinished, "
            f"{skipped['no_checkpoint']} without a checkpoint")


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _printer(progress: bool) -> Any:
    def say(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)
    return say
