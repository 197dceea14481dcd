"""Training speed of the SENSORIUM+ baseline on CPU: images per second, default layout vs channels_last.

One scan of 1000 neurons, 4x36x64 inputs, the reference per-batch objective (scaled Poisson loss +
penalties), backward and an Adam step per batch, torch on 2 threads. Batch sizes 128 (the reference) and
32, each in the default memory layout and in channels_last. Writes results/bench_training.md.

    .venv/bin/python bench/bench_training.py [--seconds 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sensorium.config import ExperimentConfig
from sensorium.data import Batch
from sensorium.models import ScanMeta, build_model
from sensorium.training.fit import batch_objective

N_NEURONS = 1000
IN_SHAPE = (4, 36, 64)
N_TRIALS = 6000  # a typical scan size (sets the loss scale only)
OUT = Path(__file__).resolve().parent.parent / "results" / "bench_training.md"


def _batch(size: int, rng: np.random.Generator) -> Batch:
    return Batch(
        images=torch.from_numpy(rng.normal(size=(size, *IN_SHAPE)).astype(np.float32)),
        responses=torch.from_numpy(rng.gamma(0.5, 1.0, size=(size, N_NEURONS)).astype(np.float32)),
        behavior=torch.zeros(size, 3),
        pupil_center=torch.from_numpy(rng.normal(size=(size, 2)).astype(np.float32)),
        rows=np.arange(size),
        trial_ids=np.arange(size),
    )


def train_images_per_second(batch_size: int, channels_last: bool, seconds: float) -> float:
    """Train steps on random batches for about ``seconds`` (after 2 warm-up steps); images per second."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    coords = rng.normal(0, 200, size=(N_NEURONS, 3)).astype(np.float32)
    model = build_model(ExperimentConfig().model, {"scan": ScanMeta(N_NEURONS, coords)}, IN_SHAPE)
    if channels_last:
        model.use_channels_last()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.009)
    batches = [_batch(batch_size, rng) for _ in range(4)]

    def step(batch: Batch) -> None:
        optimizer.zero_grad()
        batch_objective(model, "scan", batch, N_TRIALS, loss_scale=True).backward()
        optimizer.step()

    for batch in batches[:2]:
        step(batch)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(batches[images // batch_size % len(batches)])
        images += batch_size
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="timed seconds per setting")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for batch_size in (128, 32):
        speeds = {}
        for layout, channels_last in (("default", False), ("channels_last", True)):
            speeds[layout] = train_images_per_second(batch_size, channels_last, args.seconds)
            print(f"batch {batch_size:3d}  {layout:13s}  {speeds[layout]:7.1f} images/s", flush=True)
        rows.append((batch_size, speeds["default"], speeds["channels_last"]))

    lines = [
        "# Training speed of the SENSORIUM+ baseline (CPU)",
        "",
        f"`bench/bench_training.py`: one scan of {N_NEURONS} neurons, input {'x'.join(map(str, IN_SHAPE))}, "
        "reference objective, backward and Adam step per batch, "
        f"{args.threads} torch threads, {args.seconds:g} s timed per setting after 2 warm-up steps.",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.processor() or platform.machine()}.",
        "",
        "| batch | default (images/s) | channels_last (images/s) | channels_last / default |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {d:.1f} | {c:.1f} | {c / d:.2f}x |" for b, d, c in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
