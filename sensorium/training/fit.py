"""``fit``: one training run with the recipe ``train.recipe`` names (default: the reference, SENSORIUM.md §3).
Knows nothing of Ray.

Per epoch: one batch of each scan in turn until the scan with most batches is exhausted (shorter scans start
over: neuralpredictors ``LongCycler``); the gradients of one batch of every scan are accumulated, then the
recipe takes one optimiser step. Loss per batch = sqrt(n_trials_of_scan / batch_size) * Poisson loss (summed
over trials and neurons) + the model's penalties for that scan. After the epoch: validation single-trial
correlation (mean over all neurons of all scans, eval mode, of the weights the recipe evaluates) goes to the
recipe (reference: ReduceLROnPlateau and early stopping with lr-decay rounds; see sensorium.training.recipes);
the best weights are restored when a round ends and when the run ends.

    >>> result = fit(load_config("configs/tiny.yaml"), Path("runs/tiny"))  # doctest: +SKIP
    >>> result.best_val_corr, result.best_epoch                            # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sensorium.config import ExperimentConfig
from sensorium.data import Batch, ScanData
from sensorium.errors import ConfigError, DataError, one_line
from sensorium.memory import scoring_chunk
from sensorium.metrics import pooled_single_trial_correlation, score_all
from sensorium.models import SensoriumModel, build_model, scan_meta
from sensorium.predict import predict
from sensorium.runtime import (
    autocast_dtype, configure_backends, device_info, gpu_memory, resolve_device, seed_everything,
    set_threads, use_channels_last,
)
from sensorium.training.checkpoint import (
    DamagedCheckpoint, checkpoint_path, cpu_state, model_payload, read_checkpoint, save_atomic,
)
from sensorium.training.recipes import Recipe, build_recipe
from sensorium.training.rundir import EpochMetrics, RunDir, write_json

# (epoch 1-based, metrics, checkpoint_dir holding this epoch's best.pt + last.pt, or None when none was written)
ReportFn = Callable[[int, dict[str, float], "Path | None"], None]

POISSON_EPS = 1e-12  # neuralpredictors PoissonLoss bias inside the log
# train.* fields a resumed run may change: where and how fast it runs, not what it computes
RUNTIME_KEYS = ("device", "threads", "channels_last", "checkpoint_every_s")


@dataclass
class FitResult:
    """Outcome of :func:`fit`; ``model`` holds the best weights, in eval mode."""

    best_val_corr: float
    best_epoch: int
    epochs_run: int
    run_dir: Path
    model: SensoriumModel


def fit(
    cfg: ExperimentConfig,
    run_dir: Path,
    *,
    data: Mapping[str, ScanData] | None = None,
    report: ReportFn | None = None,
    resume: Path | None = None,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    checkpoint_epochs: Container[int] = (),
) -> FitResult:
    """Train ``cfg`` into ``run_dir`` and return the best model (see the module docstring for the recipe).

    ``data``: already loaded scans (default: ``load_data(cfg.data)``). ``report(epoch, metrics,
    checkpoint_dir)`` is called once per epoch; metrics keys: CURVE_FIELDS of the run directory (epoch,
    train_loss, val_corr, best_val_corr, best_epoch, lr used in this epoch, epoch_seconds, train_seconds,
    data_seconds: the part of train_seconds spent assembling batches, n_parameters: the model's trainable
    parameters, peak_gpu_memory_mb on a GPU).
    Checkpoints (best.pt, then last.pt with the recipe's whole state, into ``checkpoint_dir``, default
    RUN_DIR/checkpoints) are written
    when ``train.checkpoint_every_s`` has passed since the last one (0: every epoch), at the epochs in
    ``checkpoint_epochs`` (e.g. where a scheduler may stop the run), at the end of every lr-decay round and
    of the run; ``report`` gets the folder on those epochs and None on the others.
    ``resume``: a last.pt (or its run/checkpoints folder) to continue from exactly where it was written;
    the epochs after it are trained again, with the same results. A damaged (truncated, corrupt) last.pt
    holds nothing to continue from: the run starts again from epoch 0, with a warning naming the file
    and the reason, and reaches the same result (see :func:`_resume_state`).
    A non-finite loss raises FloatingPointError naming the epoch, scan and batch.
    """
    set_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    configure_backends(device, cfg.train.deterministic, cfg.train.precision)
    seed_everything(cfg.seed)
    if data is None:
        from sensorium.data import load_data

        data = load_data(cfg.data, progress=progress)
    in_shape = _check_data(cfg, data)
    meta = scan_meta(data)
    model = build_model(cfg.model, meta, in_shape).to(device)  # before the run folder: a bad config writes nothing
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ckpt = _resume_state(cfg, resume) if resume is not None else None  # likewise a refused resume
    run = RunDir(Path(run_dir), checkpoint_dir)
    run.prepare(cfg, resume=ckpt is not None, device=device)
    if use_channels_last(cfg.train.channels_last, device):
        model.use_channels_last()
    model.autocast = autocast_dtype(cfg.train.precision)
    generator = torch.Generator(device=device)  # readout position draws, seeded per epoch (_epoch_seed)
    model.set_generator(generator)
    # evaluation chunk: data.eval_batch_size, else sized so that scoring needs no more than a training step
    eval_size = cfg.data.eval_batch_size or scoring_chunk(model, data, device, cfg.data.batch_size)
    rng = np.random.default_rng(cfg.seed)  # batch shuffling
    t = cfg.train
    recipe = build_recipe(t, model, steps_per_epoch(data, cfg))  # optimiser, schedules, weight average, stopper
    stopper = recipe.stopper

    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        best_state = ckpt["best_model"]
        # a last.pt written before the recipe was a family holds the reference recipe's state at its top level
        recipe.load_state_dict(ckpt.get("recipe") or {k: ckpt[k] for k in ("optimizer", "scheduler", "stopper")})
        rng.bit_generator.state = ckpt["numpy_rng"]
        run.truncate_curves(stopper.epoch)
        if not run.best.exists():  # resumed into a fresh folder (e.g. a restored Ray checkpoint)
            payload = model_payload(best_state, cfg, meta, in_shape, stopper.best_epoch, stopper.best_score)
            save_atomic(payload, run.best)
    else:
        with recipe.evaluated():  # the untrained weights (a weight average starts as them)
            stopper.start(_validation_corr(model, data, device, eval_size))
            best_state = cpu_state(model)
        save_atomic(model_payload(best_state, cfg, meta, in_shape, 0, stopper.best_score), run.best)
    best_saved = stopper.best_epoch  # the epoch whose weights best.pt holds
    last_checkpoint = time.monotonic()

    while not stopper.done:
        start = time.perf_counter()
        epoch = stopper.epoch + 1
        lr = recipe.lr  # at the epoch's first step
        generator.manual_seed(_epoch_seed(cfg.seed, epoch))
        train_loss, data_seconds = _train_epoch(model, data, recipe, cfg, rng, device, epoch, progress)
        train_seconds = time.perf_counter() - start
        with recipe.evaluated():  # the weights the recipe validates and keeps (modern: the weight average)
            val_corr = _validation_corr(model, data, device, eval_size)
            step = recipe.end_epoch(val_corr)
            if step.improved:
                best_state = cpu_state(model)
        if step.action != "continue":  # end of an lr-decay round or of the run: back to the best weights
            model.load_state_dict(best_state)
        metrics = EpochMetrics(
            epoch=epoch, train_loss=train_loss, val_corr=val_corr, best_val_corr=stopper.best_score,
            best_epoch=stopper.best_epoch, lr=lr, epoch_seconds=time.perf_counter() - start,
            train_seconds=train_seconds, data_seconds=data_seconds, n_parameters=n_parameters,
            peak_gpu_memory_mb=gpu_memory(device).get("peak_gpu_memory_mb"),
        ).as_dict()
        run.append_curve(metrics)
        due = (
            step.action != "continue" or epoch in checkpoint_epochs
            or time.monotonic() - last_checkpoint >= t.checkpoint_every_s
        )
        if due:
            if best_saved != stopper.best_epoch:  # best before last: a crash in between replays from last.pt
                payload = model_payload(best_state, cfg, meta, in_shape, stopper.best_epoch, stopper.best_score)
                save_atomic(payload, run.best)
                best_saved = stopper.best_epoch
            last = model_payload(cpu_state(model), cfg, meta, in_shape, epoch, val_corr)
            last.update(best_model=best_state, recipe=recipe.state_dict(), numpy_rng=rng.bit_generator.state)
            save_atomic(last, run.last)
            last_checkpoint = time.monotonic()
        if report is not None:
            report(epoch, metrics, run.checkpoints if due else None)
        if progress:
            print(_summary(metrics, step.action), file=sys.stderr, flush=True)

    model.load_state_dict(best_state)
    model.eval()
    summary: dict[str, Any] = {"best_val_corr": stopper.best_score, "best_epoch": stopper.best_epoch,
                               "epochs_run": stopper.epoch, "device": device_info(device), "eval_chunk": eval_size}
    try:
        summary["scans"] = final_scores(model, data, device, eval_size)
    except Exception as err:  # noqa: BLE001  (out of memory on a shared card, most likely)
        # training finished and best.pt holds its result: no failure here may throw the trained run away; the
        # reason is recorded and the scores can be computed again from the checkpoint (submit, ensemble)
        summary["scans"] = {}
        summary["scoring_error"] = one_line(err)
        warnings.warn(f"{run.root}: final scoring failed ({summary['scoring_error']}); the trained model is kept "
                      f"in {run.best}", stacklevel=2)
    write_json(run.metrics, {**summary, **gpu_memory(device)})  # the peak includes the final scoring
    return FitResult(stopper.best_score, stopper.best_epoch, stopper.epoch, run.root, model)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the readout position draws in ``epoch``: a function of (seed, epoch) only, so a run resumed
    from any epoch, on any device type, needs no generator state."""
    return (seed * 1_000_003 + epoch) % 2**63


def cycle_batches(
    data: Mapping[str, ScanData], cfg: ExperimentConfig, rng: np.random.Generator, device: torch.device,
    history: int = 0,
) -> tuple[int, Iterator[tuple[str, Batch]]]:
    """(number of batches, iterator of (data_key, batch)) of one epoch, scans in turn (LongCycler); batches
    carry each trial's ``history`` previous trials when > 0 (a model with a history modulator).

    Each scan yields ``max_batches`` batches, ``max_batches`` being the largest scan's batch count (capped
    by train.max_batches_per_epoch when > 0); a scan that runs out starts over with a fresh shuffle.
    """
    tiers = _training_tiers(cfg)
    size = cfg.data.batch_size
    per_scan = steps_per_epoch(data, cfg)

    def batches() -> Iterator[tuple[str, Batch]]:
        streams = {key: scan.batches(tiers, size, rng, device, history=history) for key, scan in data.items()}
        for _ in range(per_scan):
            for key, scan in data.items():
                batch = next(streams[key], None)
                if batch is None:
                    streams[key] = scan.batches(tiers, size, rng, device, history=history)
                    batch = next(streams[key])
                yield key, batch

    return per_scan * len(data), batches()


def steps_per_epoch(data: Mapping[str, ScanData], cfg: ExperimentConfig) -> int:
    """Optimiser steps in one epoch = batches per scan (the largest scan's count, capped by
    train.max_batches_per_epoch when > 0): each step takes one batch of every scan."""
    tiers, size = _training_tiers(cfg), cfg.data.batch_size
    per_scan = max(scan.n_batches(tiers, size) for scan in data.values())
    if cfg.train.max_batches_per_epoch > 0:
        per_scan = min(per_scan, cfg.train.max_batches_per_epoch)
    return per_scan


def _training_tiers(cfg: ExperimentConfig) -> tuple[str, ...]:
    return ("train", "validation") if cfg.train.train_on_validation else ("train",)


def batch_objective(model: SensoriumModel, key: str, batch: Batch, n_trials: int, loss_scale: bool) -> torch.Tensor:
    """The reference per-batch objective: sqrt(n_trials / B) * Poisson loss (sum) + the penalties of ``key``.

    Poisson loss = output - target * log(output + 1e-12), summed over the B trials and n neurons
    (neuralpredictors ``PoissonLoss(avg=False)``). Like the reference, ``n_trials`` is the size of the
    whole scan (all tiers: the reference's dataset object), not of its train tier.
    """
    out = model(batch, key)  # (B, n) rates
    poisson = (out - batch.responses * torch.log(out + POISSON_EPS)).sum()
    scale = math.sqrt(n_trials / len(batch)) if loss_scale else 1.0
    return scale * poisson + model.regularizer(key)


def _train_epoch(
    model: SensoriumModel,
    data: Mapping[str, ScanData],
    recipe: Recipe,
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    device: torch.device,
    epoch: int,
    progress: bool,
) -> tuple[float, float]:
    """One epoch of updates; returns (mean per-batch objective, seconds spent assembling batches).

    The losses stay on the device until the epoch ends (one synchronisation per epoch, not per batch);
    a non-finite one then raises FloatingPointError naming the first such batch.
    """
    model.train()
    total, steps = cycle_batches(data, cfg, rng, device, history=model.history_length)
    n_scans = len(data)
    losses: list[torch.Tensor] = []
    keys: list[str] = []
    data_seconds = 0.0
    recipe.optimizer.zero_grad()
    bar = tqdm(total=total, desc=f"epoch {epoch}", file=sys.stderr, leave=False, disable=not progress)
    for i in range(total):
        tick = time.perf_counter()
        key, batch = next(steps)
        data_seconds += time.perf_counter() - tick
        loss = batch_objective(model, key, batch, data[key].scan.n_trials, cfg.train.loss_scale)
        loss.backward()
        if (i + 1) % n_scans == 0:  # one batch of every scan accumulated: one step
            recipe.step()
        losses.append(loss.detach())
        keys.append(key)
        bar.update()
        if progress and i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
    bar.close()
    values = torch.stack(losses).cpu()
    bad = torch.nonzero(~torch.isfinite(values)).flatten()
    if len(bad):
        i = int(bad[0])
        raise FloatingPointError(f"epoch {epoch}, scan {keys[i]}, batch {i + 1}: loss is {values[i].item()} (not finite)")
    return float(values.double().mean()), data_seconds


def _validation_corr(model: SensoriumModel, data: Mapping[str, ScanData], device: torch.device, batch_size: int) -> float:
    """Mean single-trial correlation on ``validation`` over all neurons of all scans (the objective)."""
    preds = [predict(model, scan, "validation", device, batch_size) for scan in data.values()]
    return pooled_single_trial_correlation([p.values for p in preds], [p.responses for p in preds])


def final_scores(
    model: SensoriumModel, data: Mapping[str, ScanData], device: torch.device, batch_size: int
) -> dict[str, dict[str, dict[str, float]]]:
    """data key -> tier -> {single_trial_correlation, correlation_to_average, feve}.

    ``validation`` for every scan; ``test`` only where its responses exist (not in competition scans).
    """
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for key, scan in data.items():
        tiers = ["validation"] if scan.scan.is_competition else ["validation", "test"]
        scores[key] = {}
        for tier in tiers:
            if len(scan.tier_indices(tier)) == 0:
                continue
            pred = predict(model, scan, tier, device, batch_size)
            scores[key][tier] = score_all(pred.values, pred.responses, pred.image_ids)
    return scores


def _check_data(cfg: ExperimentConfig, data: Mapping[str, ScanData]) -> tuple[int, int, int]:
    """The common input shape (C, H, W); every scan must match the config and have train + validation trials."""
    if not data:
        raise DataError("no scans to train on (data.scans is empty)")
    want = (1 + 3 * int(cfg.data.behavior_channels), cfg.data.image_height, cfg.data.image_width)
    for key, scan in data.items():
        if tuple(scan.in_shape) != want:
            raise ConfigError(
                f"scan {key}: batches have shape {tuple(scan.in_shape)} but data.behavior_channels / "
                f"image_height / image_width ask for {want}"
            )
        for tier in ("train", "validation"):
            if len(scan.tier_indices(tier)) == 0:
                raise DataError(f"scan {key} ({scan.scan.source}) has no '{tier}' trials; fit needs both")
    return want


def _resume_state(cfg: ExperimentConfig, resume: Path) -> dict[str, Any] | None:
    """The state in ``resume``'s last.pt, checked against ``cfg``; None (with a warning) when it is damaged.

    A damaged last.pt (truncated by a full disk or a crash while it was copied) holds nothing to continue
    from, and a run is a function of its config, so starting again from epoch 0 reaches the result the
    interrupted run would have: better than failing the run. A missing file or another config's
    checkpoint stays an error: that is a wrong path or config, not damage.
    """
    try:
        ckpt = read_checkpoint(checkpoint_path(resume, "last.pt"))
    except DamagedCheckpoint as err:
        warnings.warn(f"{err}; starting the run again from epoch 0", stacklevel=3)
        return None
    _check_resume(cfg, ckpt["config"], resume)
    return ckpt


def _check_resume(cfg: ExperimentConfig, saved: dict, resume: Path) -> None:
    """A run resumes only with its own config (runtime-only train fields may differ)."""
    mine, theirs = cfg.to_dict(), ExperimentConfig.from_dict(saved).to_dict()
    for key in RUNTIME_KEYS:
        mine["train"].pop(key), theirs["train"].pop(key)
    if mine != theirs:
        diff = _first_difference(mine, theirs)
        raise ConfigError(f"{resume}: checkpoint was trained with a different config ({diff}); resume needs the same")


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a:
        if isinstance(a[key], dict):
            found = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if found:
                return found
        elif a[key] != b[key]:
            return f"{prefix}{key}: {b[key]!r} in the checkpoint, {a[key]!r} now"
    return ""


def _summary(m: dict[str, float], action: str) -> str:
    note = {"continue": "", "decay": "  [patience out: best weights restored]", "stop": "  [stop]"}[action]
    return (
        f"epoch {m['epoch']:3d}  loss {m['train_loss']:.5g}  val_corr {m['val_corr']:.4f}  "
        f"best {m['best_val_corr']:.4f} @ {m['best_epoch']}  lr {m['lr']:.3g}  {m['epoch_seconds']:.1f}s{note}"
    )
