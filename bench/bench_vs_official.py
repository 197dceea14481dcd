"""Training speed of our ``fit`` against a faithful reproduction of the official SENSORIUM+ pipeline (CPU).

One run, one machine, one synthetic scan (1000 neurons, official 144x256 images), the same SENSORIUM+
baseline model, seed and batch size:

(a) reference: neuralpredictors ``FileTreeDataset`` with the official ``static_loader`` transforms
    (NeuroNormalizer, AddBehaviorAsChannels, ScaleInputs(0.25), Subsample, ToTensor), a torch DataLoader
    (num_workers=0) over a SubsetRandomSampler of the train tier, the baseline built from neuralpredictors
    parts (Stacked2dCore, FullGaussian2d with the cortex grid-mean predictor, MLPShifter, elu+1) and the
    ``standard_trainer`` step: LongCycler, sqrt(n_trials / B) * PoissonLoss(sum) + penalties, Adam 0.009;
(b) ours: ``sensorium.training.fit.fit`` with the defaults of configs/sensorium_plus.yaml.

Per epoch: train seconds, seconds spent waiting for batches, train images/s, validation seconds and the
validation single-trial correlation. Also the training FLOPs per image (FlopCounterMode, forward + backward)
and a torch.mm 2048^2 fp32 peak on the same threads, giving GFLOP/s and the share of that peak.
Batch sizes run interleaved (a then b, then b then a) to spread machine-load drift.
Writes results/bench_vs_official.md (``--quick``: runs/bench_vs_official/bench_vs_official.md).

    .venv/bin/python bench/bench_vs_official.py [--epochs 5] [--trials 1000] [--threads 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.measures.modules import PoissonLoss
from neuralpredictors.training import LongCycler

from reference import IN_SHAPE, ReferenceModel, reference_loaders
from sensorium.config import load_config
from sensorium.data import load_data
from sensorium.data.synth import SynthConfig, generate
from sensorium.metrics import single_trial_correlation
from sensorium.runtime import seed_everything
from sensorium.training.fit import fit

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "bench_vs_official"
N_NEURONS = 1000


@dataclasses.dataclass
class Epoch:
    """One epoch of one pipeline; data_s / val_s are None where the pipeline does not report them."""

    train_s: float
    data_s: float | None
    val_s: float | None
    epoch_s: float
    val_corr: float


class Timed:
    """Iterator wrapper that adds up the seconds spent waiting for ``next``."""

    def __init__(self, iterable: Iterable) -> None:
        self.it, self.seconds = iter(iterable), 0.0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> object:
        start = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - start


def synthetic_scan(trials: int) -> Path:
    """One pre-training scan at official image size under runs/, reused when its config is unchanged."""
    cfg = SynthConfig(seed=0, n_scans=1, n_competition=0, n_neurons=N_NEURONS, n_trials=trials,
                      n_test_images=max(2, trials // 50))  # 10 repeats each: ~72% of the trials are train
    out = WORK / f"synth-{trials}"
    oracle = out / "ground_truth" / "oracle.json"
    if not (oracle.exists() and json.loads(oracle.read_text())["config"] == dataclasses.asdict(cfg)):
        print(f"generating {cfg.n_trials} trials x {cfg.n_neurons} neurons into {out}", file=sys.stderr)
        generate(out, cfg, progress=False, overwrite=True)
    return next((out / "data").iterdir())


def run_reference(folder: Path, batch_size: int, epochs: int, seed: int) -> list[Epoch]:
    """(a): the official pipeline, ``standard_trainer``'s inner loop with one scan (one batch per step)."""
    seed_everything(seed)
    key = folder.name.split("static")[1].split("-GrayImageNet")[0]
    dat, train_loader, val_loader = reference_loaders(folder, batch_size)
    model = ReferenceModel(key, np.asarray(dat.neurons.cell_motor_coordinates, dtype=np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.009)
    criterion = PoissonLoss(avg=False)
    result = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        batches = Timed(LongCycler({key: train_loader}))
        for data_key, batch in batches:
            out = model(batch.images, data_key, batch.pupil_center)
            scale = math.sqrt(len(dat) / batch.images.shape[0])
            loss = scale * criterion(out, batch.responses) + model.core.regularizer() + model.readout[data_key].regularizer()
            loss.backward()
            optimizer.step()  # one scan: every batch is one step
            optimizer.zero_grad()
        train_s = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            pairs = [(model(b.images, key, b.pupil_center).numpy(), b.responses.numpy()) for b in val_loader]
        corr = float(single_trial_correlation(np.concatenate([p for p, _ in pairs]), np.concatenate([r for _, r in pairs])))
        total = time.perf_counter() - start
        result.append(Epoch(train_s, batches.seconds, total - train_s, total, corr))
        log(f"reference b={batch_size}", epoch, result[-1])
    return result


def run_ours(folder: Path, batch_size: int, epochs: int, seed: int, threads: int, run_dir: Path,
             precision: str = "fp32") -> list[Epoch]:
    """(b): ``fit`` with the defaults of configs/sensorium_plus.yaml (only data, size, epochs, seed, threads;
    ``precision`` bf16 for the opt-in autocast setting)."""
    overrides = [f"data.scans={json.dumps([str(folder)])}", f"data.batch_size={batch_size}",
                 f"train.max_epochs={epochs}", f"seed={seed}", f"train.threads={threads}",
                 f"data.cache_dir={WORK / 'cache'}", f"train.precision={precision}"]
    cfg = load_config(ROOT / "configs" / "sensorium_plus.yaml", overrides)
    data = load_data(cfg.data, progress=False)
    result = []

    def report(epoch: int, metrics: dict[str, float], _checkpoints: Path | None) -> None:
        train_s = metrics.get("train_seconds")
        val_s = None if train_s is None else metrics["epoch_seconds"] - train_s
        result.append(Epoch(metrics["epoch_seconds"] if train_s is None else train_s, metrics.get("data_seconds"),
                            val_s, metrics["epoch_seconds"], metrics["val_corr"]))
        log(f"ours {precision} b={batch_size}", epoch, result[-1])

    fit(cfg, run_dir, data=data, report=report, progress=False)
    return result


def log(name: str, epoch: int, e: Epoch) -> None:
    data = "-" if e.data_s is None else f"{e.data_s:.1f}"
    val = "-" if e.val_s is None else f"{e.val_s:.1f}"
    print(f"{name} epoch {epoch}: train {e.train_s:.1f}s (data {data}s), val {val}s, "
          f"val_corr {e.val_corr:.4f}", file=sys.stderr, flush=True)


def conv_backward_flops(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: object,
                        _stride: object, _padding: object, _dilation: object, transposed: bool,
                        _output_padding: object, _groups: int, output_mask: list[bool], **_: object) -> int:
    """Input and weight gradients of a (non-transposed) conv each cost as many FLOPs as its forward.

    torch 2.13's own formula ignores ``groups`` in the weight gradient and so counts every depthwise 7x7
    conv of the core 64x too high (2.3 GFLOP per image instead of about 0.45).
    """
    assert not transposed, "the baseline has no transposed convolutions"
    return conv_flop_count(x_shape, w_shape, grad_out_shape) * (int(output_mask[0]) + int(output_mask[1]))


def flops_per_image(coords: np.ndarray, batch_size: int = 32) -> float:
    """FLOPs (convolutions and matrix products) of one training forward + backward, per image."""
    torch.manual_seed(0)
    model = ReferenceModel("scan", coords)
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        model(torch.randn(batch_size, *IN_SHAPE), "scan", torch.randn(batch_size, 2)).sum().backward()
    return counter.get_total_flops() / batch_size


def matmul_gflops(repeats: int = 5, n: int = 2048) -> float:
    """Median GFLOP/s of torch.mm on two n x n float32 matrices (current torch threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


@dataclasses.dataclass
class Summary:
    images_per_s: float  # median over the counted epochs
    data_share: float | None  # seconds waiting for batches / train seconds; None where not reported
    epoch_s: float  # median, train + validation


def summarise(epochs: list[Epoch], n_train: int) -> Summary:
    data = [e.data_s for e in epochs if e.data_s is not None]
    return Summary(
        float(np.median([n_train / e.train_s for e in epochs])),
        sum(data) / sum(e.train_s for e in epochs) if len(data) == len(epochs) else None,
        float(np.median([e.epoch_s for e in epochs])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--trials", type=int, default=1000, help="trials of the synthetic scan (~72%% train)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43],
                        help="each pipeline runs once per seed (their spread is the run-to-run noise)")
    parser.add_argument("--bf16", action="store_true", help="also run ours with train.precision=bf16 (opt-in)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole protocol")
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 trials, 1 epoch, batch 32")
    parser.add_argument("--out", type=Path, help="table path (default results/bench_vs_official.md)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.batch_sizes, args.seeds = 200, 1, [32], [42]
    out = args.out or (WORK if args.quick else ROOT / "results") / "bench_vs_official.md"
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    folder = synthetic_scan(args.trials)
    tiers = np.load(folder / "meta" / "trials" / "tiers.npy")
    n_train, n_val = int((tiers == "train").sum()), int((tiers == "validation").sum())
    coords = np.load(folder / "meta" / "neurons" / "cell_motor_coordinates.npy").astype(np.float32)
    flops = flops_per_image(coords)
    peak_start = matmul_gflops()
    print(f"{flops / 1e6:.0f} MFLOP per training image; matmul {peak_start:.0f} GFLOP/s", file=sys.stderr)

    runs: list[tuple[int, str, int, int, list[Epoch]]] = []  # (batch, pipeline, seed, round, epochs)
    pipelines = ("reference", "ours", *(("ours-bf16",) if args.bf16 else ()))
    for r in range(1, args.rounds + 1):
        for i, b in enumerate(args.batch_sizes):
            for j, seed in enumerate(args.seeds):
                order = pipelines if (i + j + r) % 2 else pipelines[::-1]
                for name in order:
                    if name == "reference":
                        epochs = run_reference(folder, b, args.epochs, seed)
                    else:
                        precision = "bf16" if name == "ours-bf16" else "fp32"
                        run_dir = WORK / f"fit-{precision}-b{b}-s{seed}-r{r}"
                        epochs = run_ours(folder, b, args.epochs, seed, args.threads, run_dir, precision)
                    runs.append((b, name, seed, r, epochs))
    peak = max(peak_start, matmul_gflops())
    load_after = os.getloadavg()

    warmup = 1 if args.epochs >= 3 else 0
    counted = f"epochs {warmup + 1}-{args.epochs} (epoch 1 = warm-up, excluded)" if warmup else "all epochs"
    fit_timed = all(e.data_s is not None for _, name, _, _, epochs in runs if name != "reference" for e in epochs)
    lines = [
        "# Our training loop vs the official SENSORIUM+ pipeline (CPU)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}, {args.threads} torch threads; load average (1/5/15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after.",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'bench/bench_vs_official.py', *sys.argv[1:]])}`",
        "",
        f"Data: one synthetic scan (`sensorium.data.synth`), {N_NEURONS} neurons, {args.trials} trials "
        f"({n_train} train, {n_val} validation), stored 144x256, model input {'x'.join(map(str, IN_SHAPE))}. "
        f"{args.epochs} epoch(s) per pipeline, batch size and seed (seeds {' '.join(map(str, args.seeds))}: "
        "the spread between seeds is the run-to-run noise the curves are compared against), "
        f"{args.rounds} round(s), pipelines interleaved.",
        "",
        f"Training FLOPs per image: {flops / 1e6:.0f} MFLOP (FlopCounterMode, one forward + backward of the "
        f"reference model); matmul peak {peak:.0f} GFLOP/s (torch.mm 2048x2048 fp32, {args.threads} threads, "
        f"best of the medians at start {peak_start:.0f} and end).",
        "",
        f"Train images/s and s/epoch: median over {counted}. Data-loading share: seconds waiting for batches / "
        "train seconds over the same epochs (reference: the DataLoader; ours: fit's `data_seconds`). "
        "The reference's first epoch also reads the .npy files from disk (FileTreeDataset caches them after); "
        "fit's validation before epoch 1 and its checkpoint writes fall outside its epoch times.",
    ]
    if not fit_timed:
        lines.append("Ours: fit reported no `train_seconds`/`data_seconds`; its train time is the whole epoch "
                     "(incl. validation), so its images/s is an underestimate.")
    lines += ["", "| batch | pipeline | seed | round | train images/s | data-loading share | s/epoch (incl. val) "
              "| val corr per epoch | GFLOP/s | % of matmul peak |", "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    pooled: dict[tuple[int, str], list[Epoch]] = {}
    for b, name, seed, r, epochs in sorted(runs, key=lambda x: (-x[0], pipelines.index(x[1]), x[2], x[3])):
        s = summarise(epochs[warmup:], n_train)
        gflops = flops * s.images_per_s / 1e9
        share = "-" if s.data_share is None else f"{100 * s.data_share:.1f}%"
        corrs = " ".join(f"{e.val_corr:.4f}" for e in epochs)
        lines.append(f"| {b} | {name} | {seed} | {r} | {s.images_per_s:.1f} | {share} | {s.epoch_s:.1f} | {corrs} "
                     f"| {gflops:.1f} | {100 * gflops / peak:.1f}% |")
        pooled.setdefault((b, name), []).extend(epochs[warmup:])
    lines += ["", "| batch | pipeline / reference (train images/s) | last-epoch val corr, mean over seeds |",
              "|---:|---|---|"]
    for b in args.batch_sizes:
        ref = summarise(pooled[(b, "reference")], n_train).images_per_s
        for name in pipelines:
            last = [e[-1].val_corr for bb, nn_, _, _, e in runs if bb == b and nn_ == name]
            ratio = summarise(pooled[(b, name)], n_train).images_per_s / ref
            lines.append(f"| {b} | {name}: {ratio:.2f}x | {np.mean(last):.4f} (range {min(last):.4f}-{max(last):.4f}) |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
