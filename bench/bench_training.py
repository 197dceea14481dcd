"""Training-step speed of the SENSORIUM+ baseline on CPU: the library's model vs ours, step by step.

One scan of 1000 neurons, 36x64 images with 3 behaviour values, the reference per-batch objective
(sqrt(n_trials / B) x Poisson loss + penalties), backward and an Adam step per batch, on synthetic batches
(no data loading: bench_vs_official.py measures whole epochs). Settings, each its own model and optimiser:

- ``library``: neuralpredictors' model as the official pipeline builds it (bench/reference.py), default
  memory layout, the behaviour as 3 materialised input channels;
- ``library + channels_last``: the same model and inputs in channels_last layout;
- ``ours``: ``build_model`` with the defaults ``fit`` uses on the CPU (channels_last, behaviour folded into
  the first convolution, contiguous readout grid, plain ELU, channels_last gradients);
- ``ours + bf16``: ``train.precision: bf16`` (autocast), an opt-in setting that changes the arithmetic.

Batch sizes 128 (the reference) and 32; median of interleaved rounds. Writes results/bench_training.md.

    .venv/bin/python bench/bench_training.py [--images 512] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reference import ReferenceModel
from sensorium.config import ExperimentConfig
from sensorium.models import ScanMeta, build_model
from sensorium.models.model import Inputs

N_NEURONS = 1000
HEIGHT, WIDTH = 36, 64
N_TRIALS = 6000  # a typical scan size (sets the loss scale only)
OUT = Path(__file__).resolve().parent.parent / "results" / "bench_training.md"
SETTINGS = ("library", "library + channels_last", "ours", "ours + bf16")


class Setting:
    """One (setting, batch size): its own model, optimiser and four random batches."""

    def __init__(self, name: str, batch_size: int) -> None:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        coords = rng.normal(0, 200, size=(N_NEURONS, 3)).astype(np.float32)
        self.batch_size = batch_size
        if name.startswith("library"):
            self.model = ReferenceModel("scan", coords)
            layout = torch.channels_last if name.endswith("channels_last") else torch.contiguous_format
            self.model.to(memory_format=layout)
            core = self.model.core  # the library's Laplace penalty .view()s the first weight: give it a copy
            core.laplace = lambda: core._input_weights_regularizer(core.features[0].conv.weight.contiguous(),
                                                                   avg=core.use_avg_reg)
            self.forward = self._library_forward(layout)
        else:
            meta = {"scan": ScanMeta(N_NEURONS, coords)}
            self.model = build_model(ExperimentConfig().model, meta, (4, HEIGHT, WIDTH))
            self.model.use_channels_last()
            self.model.autocast = torch.bfloat16 if name.endswith("bf16") else None
            self.forward = self._our_forward()
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.009)
        self.batches = [
            (
                torch.from_numpy(rng.normal(size=(batch_size, 1, HEIGHT, WIDTH)).astype(np.float32)),  # images
                torch.from_numpy(rng.normal(size=(batch_size, 3)).astype(np.float32)),  # behaviour
                torch.from_numpy(rng.normal(size=(batch_size, 2)).astype(np.float32)),  # pupil centre
                torch.from_numpy(rng.gamma(0.5, 1.0, size=(batch_size, N_NEURONS)).astype(np.float32)),
            )
            for _ in range(4)
        ]

    def _library_forward(self, layout: torch.memory_format) -> Callable[..., torch.Tensor]:
        def forward(images: torch.Tensor, behavior: torch.Tensor, pupil: torch.Tensor) -> torch.Tensor:
            channels = behavior[:, :, None, None].expand(-1, -1, HEIGHT, WIDTH)  # AddBehaviorAsChannels
            x = torch.cat([images, channels], dim=1).contiguous(memory_format=layout)
            return self.model(x, "scan", pupil)

        return forward

    def _our_forward(self) -> Callable[..., torch.Tensor]:
        def forward(images: torch.Tensor, behavior: torch.Tensor, pupil: torch.Tensor) -> torch.Tensor:
            return self.model(Inputs(images, pupil_center=pupil, behavior=behavior), "scan")

        return forward

    def regularizer(self) -> torch.Tensor:
        if isinstance(self.model, ReferenceModel):
            return self.model.core.regularizer() + self.model.readout["scan"].regularizer()
        return self.model.regularizer("scan")

    def images_per_second(self, images: int) -> float:
        """Train on ``images`` images (whole batches: objective, backward, Adam step); images/s."""
        steps = max(1, images // self.batch_size)
        scale = math.sqrt(N_TRIALS / self.batch_size)
        start = time.perf_counter()
        for i in range(steps):
            x, behavior, pupil, responses = self.batches[i % len(self.batches)]
            self.optimizer.zero_grad()
            out = self.forward(x, behavior, pupil)  # (B, n) rates
            poisson = (out - responses * torch.log(out + 1e-12)).sum()
            (scale * poisson + self.regularizer()).backward()
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

    settings = {(b, name): Setting(name, b) for b in (128, 32) for name in SETTINGS}
    for setting in settings.values():  # warm-up: allocator, oneDNN kernel selection
        setting.images_per_second(2 * setting.batch_size)
    speeds: dict[tuple[int, str], list[float]] = {key: [] for key in settings}
    for _ in range(args.rounds):  # settings interleaved, so a change in machine load hits all of them
        for key, setting in settings.items():
            speeds[key].append(setting.images_per_second(args.images))
            print(f"batch {key[0]:3d}  {key[1]:24s} {speeds[key][-1]:7.1f} images/s", flush=True)
    median = {key: float(np.median(v)) for key, v in speeds.items()}

    lines = [
        "# Training-step speed of the SENSORIUM+ baseline (CPU)",
        "",
        f"`bench/bench_training.py`: one scan of {N_NEURONS} neurons, {HEIGHT}x{WIDTH} images + 3 behaviour "
        "values, the reference objective, backward and an Adam step per batch on synthetic batches (no data "
        f"loading), {args.threads} torch threads; median of {args.rounds} interleaved measurements of "
        f"{args.images} training images per setting, after a warm-up. `library`: neuralpredictors' model as "
        "the official pipeline builds it; `ours`: what `fit` runs by default on the CPU; `bf16`: the opt-in "
        "autocast setting (changes the arithmetic; its effect on validation correlation is in "
        "bench_vs_official.md).",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; 1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after.",
        "",
        "| batch | " + " | ".join(f"{name} (images/s)" for name in SETTINGS) + " | ours / library |",
        "|---:|" + "---:|" * (len(SETTINGS) + 1),
    ]
    for b in (128, 32):
        cells = " | ".join(f"{median[(b, name)]:.1f}" for name in SETTINGS)
        lines.append(f"| {b} | {cells} | {median[(b, 'ours')] / median[(b, 'library')]:.2f}x |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
