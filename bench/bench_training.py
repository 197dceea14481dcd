"""Training speed of the SENSORIUM+ baseline on CPU: images per second, default layout vs channels_last.

One scan of 1000 neurons, 4x36x64 inputs, the reference per-batch objective (scaled Poisson loss +
penalties), backward and an Adam step per batch, torch on 2 threads. Batch sizes 128 (the reference) and
32, each in the default memory layout and in channels_last. Writes results/bench_training.md.

    .venv/bin/python bench/bench_training.py [--images 512] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
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


class Setting:
    """One (batch size, memory layout) setting: its own model, optimiser and random batches."""

    def __init__(self, batch_size: int, channels_last: bool) -> None:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        coords = rng.normal(0, 200, size=(N_NEURONS, 3)).astype(np.float32)
        self.batch_size, self.channels_last = batch_size, channels_last
        self.model = build_model(ExperimentConfig().model, {"scan": ScanMeta(N_NEURONS, coords)}, IN_SHAPE)
        if channels_last:
            self.model.use_channels_last()
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.009)
        self.batches = [_batch(batch_size, rng) for _ in range(4)]

    def images_per_second(self, images: int) -> float:
        """Train on ``images`` images (whole batches: reference objective, backward, Adam step); images/s."""
        steps = max(1, images // self.batch_size)
        start = time.perf_counter()
        for i in range(steps):
            self.optimizer.zero_grad()
            batch = self.batches[i % len(self.batches)]
            batch_objective(self.model, "scan", batch, N_TRIALS, loss_scale=True).backward()
            self.optimizer.step()
        return steps * self.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images per timed measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per setting (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    settings = {(b, cl): Setting(b, cl) for b in (128, 32) for cl in (False, True)}
    for setting in settings.values():  # warm-up: allocator, oneDNN kernel selection
        setting.images_per_second(2 * setting.batch_size)
    speeds: dict[tuple[int, bool], list[float]] = {key: [] for key in settings}
    for _ in range(args.rounds):  # settings interleaved, so a change in machine load hits all of them
        for key, setting in settings.items():
            speeds[key].append(setting.images_per_second(args.images))
            print(f"batch {key[0]:3d}  {'channels_last' if key[1] else 'default':13s}  "
                  f"{speeds[key][-1]:7.1f} images/s", flush=True)
    median = {key: float(np.median(v)) for key, v in speeds.items()}

    lines = [
        "# Training speed of the SENSORIUM+ baseline (CPU)",
        "",
        f"`bench/bench_training.py`: one scan of {N_NEURONS} neurons, input {'x'.join(map(str, IN_SHAPE))}, "
        "the reference objective, backward and an Adam step per batch, "
        f"{args.threads} torch threads; median of {args.rounds} interleaved measurements of {args.images} "
        "training images per setting, after a warm-up.",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; 1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after "
        "(other work on the machine slows every setting; interleaving keeps the ratios fair).",
        "",
        "| batch | default (images/s) | channels_last (images/s) | channels_last / default |",
        "|---:|---:|---:|---:|",
    ]
    for b in (128, 32):
        d, c = median[(b, False)], median[(b, True)]
        lines.append(f"| {b} | {d:.1f} | {c:.1f} | {c / d:.2f}x |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
