"""A trial's memory, predicted before it runs: training peak, final-scoring peak, and the scoring chunk.

What a trial holds on its device (bytes; ``fit`` on a GPU, the same terms on a CPU where the data are memory maps
in the shared page cache and cost the process nothing):

- ``context``: the CUDA context of the process (about 700 MiB with cuBLAS and cuDNN loaded: ``CUDA_CONTEXT_BYTES``),
  outside every allocator statistic and every per-process cap;
- ``data``: each scan's per-trial arrays on the device (:meth:`sensorium.data.ScanData.on`): images,
  behaviour and pupil centre of every trial, and the responses only when ``data.responses_on_device``
  (otherwise they stay in host memory and one batch at a time crosses);
- ``state``: weights, their gradients and Adam's two moments (4 x 4 bytes per trainable parameter);
- ``activations``: what one training batch keeps for its backward pass, plus the gradients of the largest
  maps alive during it, for the scan with the most neurons (batches are one scan at a time);
- ``scoring``: one evaluation chunk's live tensors (two feature maps of the largest layer and the readout's
  (chunk, C, n) samples, plus the outputs) at the chunk :func:`eval_chunk` picks.

The per-image activation bytes are measured, not written down per family: :func:`profile_model` runs the real
model once on two tiny batches on the CPU and counts the tensors autograd saves (``saved_tensors_hooks``),
so a new core or readout family is modelled without a new formula. ``tests/test_memory.py`` checks the
model against peaks measured on the CPU; ``bench/bench_gpu.py`` prints it next to the peaks a GPU measured.

    >>> est = estimate(cfg, shapes)                                          # doctest: +SKIP
    >>> est.train_peak / 2**30, est.score_peak / 2**30, est.eval_chunk      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sensorium.config import ExperimentConfig

# one process's CUDA context on the card, outside torch's allocator: measured on an H200 with torch 2.11 at
# 619 MiB bare and about 693 MiB once cuBLAS and cuDNN are loaded (as in every training process)
CUDA_CONTEXT_BYTES = 700 * 2**20
FLOAT = 4  # bytes of a float32
MAX_EVAL_CHUNK = 1024  # larger chunks only add memory on a GPU
MIN_EVAL_CHUNK = 16
CPU_EVAL_CHUNK = 64  # the fastest evaluation chunk on the CPU (results/bench_training.md)
# On a GPU a trial holds more than its tensors: cuDNN's autotuner (cudnn.benchmark, on unless
# train.deterministic) tries every convolution algorithm for each new input shape, the caching allocator keeps
# the largest workspaces it tried, and every evaluation chunk size is a new shape. Measured on an H200 with
# torch 2.11 (results/bench_gpu.md: the baseline and the dense corner of the default space, training and final
# scoring, a free card): the reserved peak less data and weights was at most 5.8x the tensors this module counts
# at fp32 and TF32, 1.8x at bf16 (autocast halves the activations, and its kernels ask for less workspace).
# The model multiplies the tensors by these factors on a GPU: a calibration, so it reproduces those rows; the
# rows not used for it (history, K=8, the depth-separable largest point) are its check.
GPU_FACTOR = {"fp32": 5.8, "tf32": 5.8, "bf16": 1.8}


@dataclass(frozen=True)
class ScanShape:
    """What memory depends on in one scan: neurons, trials on the device, and the image size."""

    key: str
    n_neurons: int
    n_trials: int  # all tiers (images, behaviour and pupil centre of every trial live on the device)
    n_response_rows: int  # rows whose responses a trial needs (train + validation): on the device if asked
    image_shape: tuple[int, int, int]  # (C_img, H, W) of one stored image (the cache's (1, 36, 64))

    @classmethod
    def of(cls, data: Mapping[str, object]) -> list[ScanShape]:
        """The shapes of loaded scans (``sensorium.data.ScanData`` by data key)."""
        shapes = []
        for key, scan in data.items():
            tiers = np.asarray(scan.tiers)  # type: ignore[attr-defined]
            images = scan.scan.images  # type: ignore[attr-defined]
            shapes.append(cls(key, int(scan.n_neurons), int(len(tiers)),  # type: ignore[attr-defined]
                              int(np.isin(tiers, ("train", "validation")).sum()), tuple(images.shape[1:])))
        return shapes


@dataclass(frozen=True)
class ModelProfile:
    """Per-image and fixed bytes of one model, measured by :func:`profile_model`."""

    n_parameters: int  # trainable parameters
    saved_per_image: float  # bytes autograd keeps per training image (the scan with most neurons)
    largest_map_per_image: float  # bytes of the largest activation map of one image (core output included)
    readout_per_image: float  # bytes of the readout's (C, n) per-image samples (largest scan)
    output_per_image: float  # bytes of one image's (n,) prediction (largest scan)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes of one trial (see the module docstring for each term)."""

    context: int
    data: int
    state: int
    activations: int
    scoring: int
    eval_chunk: int
    batch_size: int

    @property
    def train_peak(self) -> int:
        """The most the trial holds while it trains."""
        return self.context + self.data + self.state + self.activations

    @property
    def score_peak(self) -> int:
        """The most it holds during validation and the final scoring (Adam's state is still alive there)."""
        return self.context + self.data + self.state + self.scoring

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.score_peak)

    def describe(self) -> str:
        """One line: training and scoring peaks in GiB with their largest terms."""
        gib = 2**30
        return (f"train {self.train_peak / gib:.2f} GiB (activations {self.activations / gib:.2f} at batch "
                f"{self.batch_size}, data {self.data / gib:.2f}, weights+Adam {self.state / gib:.2f}, context "
                f"{self.context / gib:.2f}); final scoring {self.score_peak / gib:.2f} GiB (chunk {self.eval_chunk})")


def build_for(cfg: ExperimentConfig, shapes: Sequence[ScanShape]) -> torch.nn.Module:
    """The model of ``cfg`` for scans of ``shapes``, with random weights and coordinates, on the CPU."""
    from sensorium.models import build_model
    from sensorium.models import ScanMeta

    rng = np.random.default_rng(0)
    meta = {s.key: ScanMeta(s.n_neurons, rng.normal(size=(s.n_neurons, 3)).astype(np.float32)) for s in shapes}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(cfg.model, meta, _in_shape(cfg))


def profile_model(model: torch.nn.Module, shapes: Sequence[ScanShape]) -> ModelProfile:
    """Measure a built model's per-image bytes on the CPU: two tiny training batches of the scan with the most
    neurons (the per-image slope of what autograd saves), and one eval batch's module outputs. A copy is
    measured (about a second at real size), so the model's batch-norm statistics and device are left alone."""
    model = copy.deepcopy(model).cpu().float()
    model.set_generator(None)  # type: ignore[operator]  # a GPU run's generator cannot draw on the CPU
    model.autocast = None  # type: ignore[assignment]  # bytes of fp32; bf16 autocast holds less
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(shapes, key=lambda s: s.n_neurons)
    in_shape = (int(model.core.input_channels), *largest.image_shape[1:])  # type: ignore[union-attr]
    params = {p.data_ptr() for p in model.parameters()}
    model.train()
    saved = [_saved_bytes(model, _inputs(in_shape, largest, b, model.history_length), largest.key, params)
             for b in (2, 4)]
    maps: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: maps.append(_nbytes(out))) for m in model.modules()
             if not list(m.children())]
    model.eval()
    with torch.no_grad():
        out = model(_inputs(in_shape, largest, 2, model.history_length), largest.key)
    for hook in hooks:
        hook.remove()
    return ModelProfile(
        n_parameters=n_parameters,
        saved_per_image=max((saved[1] - saved[0]) / 2, 0.0),
        largest_map_per_image=max(maps) / 2,
        readout_per_image=model.readout[largest.key].in_shape[0] * largest.n_neurons * FLOAT,  # C x n
        output_per_image=out.numel() * FLOAT / 2,
    )


_CHUNKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> training batch -> chunk


def scoring_chunk(model: torch.nn.Module, data: Mapping[str, object], device: torch.device,
                  batch_size: int = 128) -> int:
    """The evaluation chunk of a built ``model`` (``fit``, and ``predict`` with chunk 0) for a run trained at
    ``batch_size``: :func:`eval_chunk` for the model's largest scan, whatever scan of ``data`` (ScanData by key,
    read for the image size) it predicts. Measured once per model and batch size while the model lives (an
    ensemble of many trials profiles each once, not once per scan); ``CPU_EVAL_CHUNK`` on the CPU."""
    if torch.device(device).type != "cuda":
        return CPU_EVAL_CHUNK
    chunks = _CHUNKS.setdefault(model, {})
    if batch_size not in chunks:
        image_shape = tuple(next(iter(data.values())).scan.images.shape[1:])  # type: ignore[attr-defined]
        shapes = [ScanShape(key, int(readout.outdims), 0, 0, image_shape)  # type: ignore[arg-type]
                  for key, readout in model.readout.items()]  # type: ignore[union-attr]
        profile = profile_model(model, shapes)
        chunks[batch_size] = eval_chunk(profile, _activations(profile, batch_size))
    return chunks[batch_size]


def estimate(cfg: ExperimentConfig, shapes: Sequence[ScanShape], device_type: str = "cuda",
             profile: ModelProfile | None = None) -> MemoryEstimate:
    """Predicted memory of one trial of ``cfg`` on ``shapes`` on a ``device_type`` ("cuda" or "cpu") device."""
    profile = profile or profile_model(build_for(cfg, shapes), shapes)
    batch = cfg.data.batch_size
    cuda = device_type == "cuda"
    state = 4 * FLOAT * profile.n_parameters
    activations = _activations(profile, batch)
    chunk = eval_chunk(profile, activations, cfg.data.eval_batch_size, device_type)
    scoring = chunk * per_image_scoring(profile)
    if cuda:
        activations *= GPU_FACTOR[cfg.train.precision]
        scoring *= GPU_FACTOR[cfg.train.precision]
    return MemoryEstimate(
        context=CUDA_CONTEXT_BYTES if cuda else 0,
        data=data_bytes(shapes, cfg.data.responses_on_device) if cuda else 0,
        state=state, activations=int(activations), scoring=int(scoring), eval_chunk=chunk, batch_size=batch,
    )


def _activations(profile: ModelProfile, batch: int) -> float:
    """Bytes of one training batch: what autograd saves, plus the gradients alive during the backward pass (of
    the map it is working on and of the next one)."""
    return batch * (profile.saved_per_image + 2 * max(profile.largest_map_per_image, profile.readout_per_image))


def per_image_scoring(profile: ModelProfile) -> float:
    """Bytes one evaluation image keeps alive at once: two feature maps, the readout's samples, the output."""
    return 2 * profile.largest_map_per_image + profile.readout_per_image + profile.output_per_image


def eval_chunk(profile: ModelProfile, budget: float, configured: int = 0, device_type: str = "cuda") -> int:
    """Trials per evaluation chunk: ``configured`` when > 0; else, on a GPU, the most (at most 1024, at least 16)
    whose live tensors fit in ``budget`` bytes (the training batch's activations, so scoring never needs more
    than training did); on the CPU ``CPU_EVAL_CHUNK``."""
    if configured > 0:
        return configured
    if device_type != "cuda":
        return CPU_EVAL_CHUNK
    fitting = int(budget // max(per_image_scoring(profile), 1.0))
    return int(min(MAX_EVAL_CHUNK, max(MIN_EVAL_CHUNK, fitting)))


def data_bytes(shapes: Sequence[ScanShape], responses_on_device: bool) -> int:
    """Bytes of the scans' arrays on the device: images, behaviour (3) and pupil centre (2) of every trial,
    the responses of the train and validation rows only when they live there."""
    total = 0
    for s in shapes:
        total += s.n_trials * (int(np.prod(s.image_shape)) + 5) * FLOAT
        if responses_on_device:
            total += s.n_response_rows * s.n_neurons * FLOAT
    return total


def _in_shape(cfg: ExperimentConfig) -> tuple[int, int, int]:
    return (1 + 3 * int(cfg.data.behavior_channels), cfg.data.image_height, cfg.data.image_width)


def _inputs(in_shape: tuple[int, int, int], shape: ScanShape, batch: int, history: int):  # noqa: ANN202
    """A random batch of ``batch`` trials of ``shape``'s scan, with the model's inputs (and history)."""
    from sensorium.data.dataset import History
    from sensorium.models.model import Inputs

    g = torch.Generator().manual_seed(batch)
    past = None
    if history:
        n = shape.n_neurons
        past = History(torch.randn(batch, history, n, generator=g), torch.ones(batch, history),
                       torch.randn(batch, 5, generator=g), torch.ones(batch), torch.rand(batch, generator=g))
    return Inputs(images=torch.randn(batch, shape.image_shape[0], *in_shape[1:], generator=g),
                  pupil_center=torch.randn(batch, 2, generator=g),
                  behavior=torch.randn(batch, in_shape[0] - shape.image_shape[0], generator=g),
                  trial_ids=np.arange(batch), history=past)


def _saved_bytes(model: torch.nn.Module, inputs: object, key: str, params: set[int]) -> int:
    """Bytes of the distinct tensors (not parameters) autograd saves for one forward pass of ``inputs``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = max(storages.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inputs, key)
    del out
    return sum(storages.values())


def _nbytes(out: object) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(o) for o in out)
    return 0
