"""GPU benchmark: one SENSORIUM+ trial alone on a GPU, and 1-8 trials packed onto it through Ray.

All through the real training path (``fit``: the scan cache, the scan held on the device, validation every
epoch, checkpoints) on one synthetic scan of official size (144x256 images, 7500 neurons, 2500 trials).

1. One trial alone, for the baseline (configs/sensorium_plus.yaml) and the largest point of
   configs/search_default.yaml, at each batch size: train images/s, fit's host batch-assembly share, GPU
   utilisation while training (nvidia-smi, 200 ms) and peak GPU memory; then timed steps on the fitted model
   split into batch assembly, host-to-device copy and compute, with fit's device-resident batches and with
   batches assembled on the host and copied.
2. Packing: 1, 2, 4, 8 baseline trials at once, 1/N GPU and CPUs/N each, through ``search.driver.run_search``
   (a search file written at run time): total and per-trial train images/s, summed peak GPU memory and each
   trial's recorded device. Each trial trains for the epochs one trial alone needs for --packing-seconds.

Writes results/bench_gpu.md (``--quick``: runs/bench_gpu/bench_gpu.md) after every measurement and prints it
at the end (also after an error or SIGTERM). On the GPU machine (about 4-5 minutes on one H200):
    .venv/bin/python bench/bench_gpu.py
CPU smoke test of the same code path (1.5-3 minutes on 2 cores):
    .venv/bin/python bench/bench_gpu.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import yaml

from search.driver import ensure_ray, release_ray, run_search
from search.space import load_search
from sensorium.config import ExperimentConfig, get_value, load_config, set_value
from sensorium.data import ScanData, load_data
from sensorium.data.synth import SynthConfig, generate
from sensorium.models import SensoriumModel
from sensorium.training.fit import batch_objective, fit

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_gpu"
BASELINE = ROOT / "configs" / "sensorium_plus.yaml"
SEARCH = ROOT / "configs" / "search_default.yaml"
SIZE_KEYS = ("model.core.layers", "model.core.hidden_channels", "model.core.input_kern",
             "model.core.hidden_kern", "model.readout.samples")
CPUS = len(os.sched_getaffinity(0))
WARMUP_STEPS = 3  # untimed steps before the timed ones (cuDNN autotuning, Adam state, page cache)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class GpuSampler:
    """``nvidia-smi`` utilisation (%) and memory used (MB) every 200 ms, in a subprocess for the whole run;
    no samples where nvidia-smi is missing (CPU machines)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), utilisation, memory.used)
        exe = shutil.which("nvidia-smi")
        self.proc = None if exe is None else subprocess.Popen(
            [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        if self.proc is not None:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            try:
                util, memory = (float(x) for x in line.split(","))
            except ValueError:  # "[N/A]", a partial line
                continue
            self.samples.append((time.time(), util, memory))

    def window(self, start: float, stop: float) -> tuple[list[float], list[float]]:
        inside = [(u, m) for t, u, m in self.samples if start <= t <= stop]
        return [u for u, _ in inside], [m for _, m in inside]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def synthetic_scan(neurons: int, trials: int) -> Path:
    """One pre-training scan at official image size under runs/bench_gpu/, reused when its config is unchanged."""
    cfg = SynthConfig(seed=0, n_scans=1, n_competition=0, n_neurons=neurons, n_trials=trials,
                      n_test_images=max(2, trials // 50))  # 10 repeats each: 20% test, 72% train
    out = WORK / f"synth-{neurons}x{trials}"
    oracle = out / "ground_truth" / "oracle.json"
    if not (oracle.exists() and json.loads(oracle.read_text())["config"] == dataclasses.asdict(cfg)):
        log(f"generating {trials} trials x {neurons} neurons (144x256 images) into {out}")
        start = time.perf_counter()
        generate(out, cfg, progress=False, overwrite=True)
        log(f"generated in {time.perf_counter() - start:.1f} s")
    return next((out / "data").iterdir())


def largest_point() -> ExperimentConfig:
    """configs/search_default.yaml with every SIZE_KEYS parameter at its maximum, the rest at the base values."""
    spec = load_search(SEARCH)
    values = {p.key: max(p.choices) if p.type == "categorical" else int(p.high)  # type: ignore[arg-type]
              for p in spec.params if p.key in SIZE_KEYS}
    return spec.resolve(values)


def bench_config(cfg: ExperimentConfig, folder: Path, batch: int, epochs: int, device: str) -> ExperimentConfig:
    settings = {"data.scans": [str(folder)], "data.cache_dir": str(WORK / "cache"), "data.batch_size": batch,
                "train.max_epochs": epochs, "train.device": device, "train.threads": CPUS}
    for key, value in settings.items():
        cfg = set_value(cfg, key, value)
    return cfg


@dataclasses.dataclass
class Alone:
    """One trial alone: fit's epochs, then the timed steps of both batch paths."""

    model: str
    batch: int
    parameters: int
    images_per_s: float
    epoch_s: float
    data_share: float  # fit's data_seconds / train_seconds
    util: list[float]  # nvidia-smi samples inside the training parts of the counted epochs
    peak_mb: float | None
    val_corr: float
    steps: dict[str, np.ndarray]  # path -> ms per batch: (assembly, host-to-device, compute)


def one_trial(name: str, cfg: ExperimentConfig, data: Mapping[str, ScanData], n_train: int, n_steps: int,
              gpu: GpuSampler) -> Alone:
    device = torch.device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the fits run one after another in this process
    epochs: list[dict[str, float]] = []
    windows: list[tuple[float, float]] = []  # time.time() span of each epoch's training part

    def report(epoch: int, metrics: dict[str, float], _checkpoints: Path | None) -> None:
        start = time.time() - metrics["epoch_seconds"]  # a checkpoint write in between shifts it a little
        windows.append((start, start + metrics["train_seconds"]))
        epochs.append(metrics)
        log(f"{name} b={cfg.data.batch_size} epoch {epoch}: {n_train / metrics['train_seconds']:.0f} images/s, "
            f"train {metrics['train_seconds']:.2f} s (assembling batches {metrics['data_seconds']:.2f} s), "
            f"epoch {metrics['epoch_seconds']:.2f} s, val_corr {metrics['val_corr']:.4f}")

    result = fit(cfg, WORK / "fits" / f"{name}-b{cfg.data.batch_size}", data=data, report=report, progress=False)
    counted = epochs[1:] or epochs
    util = [u for start, stop in (windows[1:] or windows) for u in gpu.window(start, stop)[0]]
    steps = {path: timed_steps(result.model, cfg, data, device, path == "host", n_steps) for path in ("device", "host")}
    log(f"{name} b={cfg.data.batch_size} {n_steps} timed steps, ms per batch (assembly, host-to-device, compute): "
        + ", ".join(f"{path} batches {' '.join(f'{x:.2f}' for x in ms)}" for path, ms in steps.items()))
    return Alone(
        name, cfg.data.batch_size, sum(p.numel() for p in result.model.parameters()),
        float(np.median([n_train / e["train_seconds"] for e in counted])),
        float(np.median([e["epoch_seconds"] for e in counted])),
        sum(e["data_seconds"] for e in counted) / sum(e["train_seconds"] for e in counted),
        util, epochs[-1].get("peak_gpu_memory_mb"), epochs[-1]["val_corr"], steps,
    )


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed_steps(model: SensoriumModel, cfg: ExperimentConfig, data: Mapping[str, ScanData], device: torch.device,
                on_host: bool, n_steps: int) -> np.ndarray:
    """Mean ms per training step of (batch assembly, host-to-device copy, forward + backward + Adam step).
    ``on_host`` False: fit's path (gathered from the scan held on the device; the copy is a no-op); True:
    assembled on the host from the memory-mapped cache, then copied with a blocking ``.to(device)``."""
    scan, size, rng = next(iter(data.values())), cfg.data.batch_size, np.random.default_rng(0)
    passes = (scan.batches("train", size, rng, torch.device("cpu") if on_host else device) for _ in itertools.count())
    batches = (b for one_pass in passes for b in one_pass if len(b) == size)  # shuffled full batches, endlessly
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    model.train()
    total = np.zeros(3)
    for step in range(WARMUP_STEPS + n_steps):
        marks = [synced(device)]
        batch = next(batches)
        marks.append(synced(device))
        batch = dataclasses.replace(
            batch, images=batch.images.to(device), responses=batch.responses.to(device),  # type: ignore[union-attr]
            behavior=batch.behavior.to(device), pupil_center=batch.pupil_center.to(device),
        )
        marks.append(synced(device))
        batch_objective(model, scan.key, batch, scan.scan.n_trials, cfg.train.loss_scale).backward()
        optimizer.step()
        optimizer.zero_grad()
        marks.append(synced(device))
        if step >= WARMUP_STEPS:
            total += np.diff(marks)
    return 1000 * total / n_steps


@dataclasses.dataclass
class Packed:
    """One packing level: ``n`` trials at once, each with ``gpus`` GPU and ``cpus`` CPUs, for ``epochs``."""

    n: int
    gpus: float
    cpus: int
    epochs: int
    wall_s: float
    per_trial: list[float]  # train images/s of each trial, median over its epochs after the first
    peaks_mb: list[float]  # each trial's peak_gpu_memory_mb (0 on the CPU)
    devices: list[str]  # each trial's provenance.json device: GPU name, or cpu
    errors: list[str]
    overlap_s: float  # seconds all trials were in their epoch loops at once (Tune's whole-second timestamps)
    span_s: float  # median seconds one trial spent in its epoch loop
    util: list[float]  # nvidia-smi utilisation samples inside the overlap
    memory: list[float]  # nvidia-smi memory.used samples over the whole level


def packing_level(n: int, epochs: int, folder: Path, args: argparse.Namespace, n_train: int, gpu: GpuSampler) -> Packed:
    gpus, cpus = (1 / n, max(1, CPUS // n)) if args.device != "cpu" else (0.0, 1)
    run_dir = WORK / "packing" / f"n{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    search_file = WORK / f"search-packing-n{n}.yaml"
    search_file.write_text(yaml.safe_dump({
        "base": str(BASELINE),
        # patience beyond the last epoch: no lr decay or early stop, every trial trains all its epochs
        "overrides": {"data.scans": [str(folder)], "data.cache_dir": str(WORK / "cache"), "train.max_epochs": epochs,
                      "train.patience": epochs + 1, "train.device": args.device},
        # a search needs a searched parameter: the batch size, with one choice
        "parameters": {"data.batch_size": {"type": "categorical", "choices": [args.packing_batch], "role": "nuisance"}},
        "search": {"num_trials": n, "max_concurrent": n, "cpus_per_trial": cpus, "gpus_per_trial": gpus,
                   "asha": {"grace_period": epochs, "max_t": epochs}},  # nothing stops early
    }))
    log(f"packing: {n} trial(s) at once, {gpus:g} GPU + {cpus} CPU(s) each, batch {args.packing_batch}, "
        f"{epochs} epochs")
    start = time.time()
    records = run_search(load_search(search_file), run_dir, progress=False, live_every_s=3600)
    wall_s = time.time() - start
    per_trial, peaks, devices, errors, spans = [], [], [], [], []
    for r in records:
        if r.status == "error" or not r.curve:
            errors.append(f"{r.trial_id}: {r.error or r.status}")
            continue
        speeds = [n_train / row["train_seconds"] for row in r.curve]
        per_trial.append(float(np.median(speeds[1:] or speeds)))
        peaks.append(max(row.get("peak_gpu_memory_mb", 0.0) for row in r.curve))
        device = json.loads((r.path / "provenance.json").read_text())["device"]
        devices.append(device.get("name", device["type"]))
        rows = [json.loads(line) for line in (r.path / "result.json").read_text().splitlines() if line.strip()]
        spans.append((rows[0]["timestamp"] - rows[0]["epoch_seconds"], rows[-1]["timestamp"]))
    last_start, first_end = max((s for s, _ in spans), default=0.0), min((e for _, e in spans), default=0.0)
    level = Packed(n, gpus, cpus, epochs, wall_s, per_trial, peaks, devices, errors, max(0.0, first_end - last_start),
                   float(np.median([e - s for s, e in spans])) if spans else 0.0,
                   gpu.window(last_start, first_end)[0], gpu.window(start, start + wall_s)[1])
    log(f"packing {n}: {sum(per_trial):.0f} images/s in total ({' '.join(f'{x:.0f}' for x in per_trial)} per trial), "
        f"all training at once {level.overlap_s:.0f} s, {wall_s:.0f} s wall, {len(errors)} failed")
    return level


def packing_epochs(args: argparse.Namespace, alone: list[Alone]) -> int:
    """Epochs one baseline trial alone trains in ``--packing-seconds`` (from part 1), at least 3."""
    rows = [a for a in alone if a.model == "baseline"]
    ref = next((a for a in rows if a.batch == args.packing_batch), rows[0])
    return max(3, math.ceil(args.packing_seconds / ref.epoch_s))


def mean(values: list[float]) -> str:
    return f"{np.mean(values):.0f} (n={len(values)})" if values else "-"


def machine(device: torch.device) -> str:
    rest = (f"{CPUS} CPUs ({platform.machine()}), torch {torch.__version__}, "
            f"Python {platform.python_version()}")
    if device.type != "cuda":
        return f"no GPU (--device {device.type}), {rest}"
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.total_memory / 2**20:.0f} MB), CUDA {torch.version.cuda}, {rest}"


def render(head: list[str], alone: list[Alone], packed: list[Packed]) -> str:
    lines = [*head, "", "## 1. One trial alone", "",
             "| model (parameters) | batch | train images/s | s/epoch (incl. val) | host batch assembly (share of "
             "train time) | GPU util % while training | peak GPU MB | val corr (last epoch) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in alone:
        peak = "-" if a.peak_mb is None else f"{a.peak_mb:.0f}"
        lines.append(f"| {a.model} ({a.parameters / 1e6:.2f} M) | {a.batch} | {a.images_per_s:.0f} | {a.epoch_s:.2f} "
                     f"| {100 * a.data_share:.1f}% | {mean(a.util)} | {peak} | {a.val_corr:.4f} |")
    lines += ["", "Per training step, ms per batch (timed steps after the fit, same model and data):", "",
              "| model | batch | batches | assembly | host-to-device | compute | total | images/s |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    paths = {"device": "on the device (fit's path)", "host": "on the host, then copied"}
    for a in alone:
        for path, ms in a.steps.items():
            lines.append(f"| {a.model} | {a.batch} | {paths[path]} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} "
                         f"| {ms.sum():.2f} | {1000 * a.batch / ms.sum():.0f} |")
    if packed:
        lines += ["", "## 2. Baseline trials packed on one device (Ray, the search path)", "",
                  "| trials at once | GPU + CPUs per trial | epochs | total train images/s | per trial | vs 1 trial "
                  "| summed peak GPU MB | max memory.used MB | GPU util % while all train | all training at once "
                  "| devices | wall s |", "|---:|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|"]
        for p in packed:
            total, first = sum(p.per_trial), sum(packed[0].per_trial)
            devices = ", ".join(f"{p.devices.count(d)} x {d}" for d in sorted(set(p.devices))) or "-"
            devices += f"; {len(p.errors)} failed: {'; '.join(p.errors)}" if p.errors else ""
            speeds = " ".join(f"{x:.0f}" for x in p.per_trial)
            lines.append(
                f"| {p.n} | {p.gpus:g} + {p.cpus} | {p.epochs} | {total:.0f} | {speeds} "
                f"| {f'{total / first:.2f}x' if first else '-'} | {sum(p.peaks_mb):.0f} "
                f"| {f'{max(p.memory):.0f}' if p.memory else '-'} | {mean(p.util)} "
                f"| {p.overlap_s:.0f} s of {p.span_s:.0f} s | {devices} | {p.wall_s:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each single-trial fit")
    parser.add_argument("--neurons", type=int, default=7500)
    parser.add_argument("--trials", type=int, default=2500, help="trials of the synthetic scan (72%% train)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, default=50, help="timed training steps per batch path")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="trials at once")
    parser.add_argument("--packing-batch", type=int, default=load_config(BASELINE).data.batch_size)
    parser.add_argument("--packing-seconds", type=float, default=10.0,
                        help="packed trials train for the epochs one trial alone needs for this long (>= 3 epochs)")
    parser.add_argument("--skip-packing", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 300 neurons, 150 trials, 2 epochs, batch 32, 3 steps, 1-2 trials x 3 epochs")
    parser.add_argument("--out", type=Path, help="table path (default results/bench_gpu.md)")
    args = parser.parse_args()
    if args.quick:
        args.neurons, args.trials, args.epochs, args.batch_sizes, args.steps = 300, 150, 2, [32], 3
        args.concurrency, args.packing_seconds = [1, 2], 0.0
    out = args.out or (WORK if args.quick else ROOT / "results") / "bench_gpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still prints the partial table

    folder = synthetic_scan(args.neurons, args.trials)
    models = {"baseline": load_config(BASELINE), "largest": largest_point()}
    data = load_data(bench_config(models["baseline"], folder, 1, 1, args.device).data, progress=False)
    scan = next(iter(data.values()))
    n_train, n_val = len(scan.tier_indices("train")), len(scan.tier_indices("validation"))
    log(f"scan {scan.key} cached and loaded: {n_train} train, {n_val} validation trials")
    largest = ", ".join(f"{key.split('.')[-1]} {get_value(models['largest'], key)}" for key in SIZE_KEYS)
    head = [
        "# GPU benchmark: one trial alone, and trials packed on one GPU", "", f"Machine: {machine(device)}.", "",
        f"Command: `{' '.join(['.venv/bin/python', 'bench/bench_gpu.py', *sys.argv[1:]])}`", "",
        f"Data: one synthetic scan, {args.neurons} neurons, {args.trials} trials ({n_train} train, {n_val} "
        f"validation), stored 144x256, model input 4x36x64. Baseline: configs/sensorium_plus.yaml; largest: "
        f"configs/search_default.yaml at {largest} (all else, depth_separable too, at the base value).", "",
        f"Part 1: `fit`, {args.epochs} epochs; images/s = train images / fit's `train_seconds`, median over the "
        "epochs after the first (cuDNN autotuning); host batch assembly = fit's `data_seconds` (host time queueing "
        "the gathers); GPU util = mean nvidia-smi sample inside those epochs' training; peak = "
        f"`max_memory_allocated` (no CUDA context). Steps: {args.steps} after {WARMUP_STEPS} warm-up, each phase "
        "between `torch.cuda.synchronize` calls; host batches copied with a blocking `.to(device)`.", "",
        f"Part 2: baseline trials at batch {args.packing_batch} via `search.driver.run_search` (nothing stops "
        "early); images/s per trial as in part 1, total = their sum, valid while the trials overlap ('all "
        "training at once'); memory.used includes every CUDA context, this script's too.",
    ]
    alone: list[Alone] = []
    packed: list[Packed] = []
    gpu = GpuSampler()
    try:
        for name, base in models.items():
            for batch in args.batch_sizes:
                cfg = bench_config(base, folder, batch, args.epochs, args.device)
                alone.append(one_trial(name, cfg, data, n_train, args.steps, gpu))
                out.write_text(render(head, alone, packed))
        del data, scan
        torch.cuda.empty_cache()  # a no-op without CUDA
        if not args.skip_packing:
            epochs = packing_epochs(args, alone)
            started = ensure_ray(None, num_cpus=CPUS)
            try:
                for n in args.concurrency:
                    packed.append(packing_level(n, epochs, folder, args, n_train, gpu))
                    out.write_text(render(head, alone, packed))
            finally:
                release_ray(started)
    finally:
        gpu.close()
        print(render(head, alone, packed), end="", flush=True)
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
