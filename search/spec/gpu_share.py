"""``gpus_per_trial: auto``: how many trials share one card, chosen by the driver before any trial starts.

From the Ray cluster's GPUs and CPUs, the memory of one card, and the predicted peak (``sensorium.memory``, the
CUDA context included) of the largest point of the search space at the data's real shapes::

    k = min(floor(USABLE x card memory / peak of the largest point),   # memory
            floor(CPUs per card / max(1, cpus_per_trial)),             # each trial needs at least one CPU
            ceil(max_concurrent / cards in the cluster),               # no more sharing than the concurrency needs
            MAX_TRIALS_PER_CARD)                                       # (and at least 1)
    gpus_per_trial = 1 / k, rounded down to Ray's 1/10000 steps; 0 on a cluster without GPUs

Each trial's process then caps torch's allocator at its share of the card less its CUDA context
(``sensorium.runtime.cap_gpu_memory``), so k trials at 1/k never ask for more than the card has; USABLE leaves
room for the error of the memory model. The card's memory is ``search.gpu_memory_gb`` when set, else the
smallest card the driver sees (torch.cuda), else 40 GB, the smallest common card (the line says so).

The largest point (:func:`largest_points`): every parameter that sizes the model or its batches at the end of its
range that needs the most memory (``SIZE_KEYS``), one point per combination of family options (nothing orders
families by size), every other parameter at its first value; the one with the highest predicted peak wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from search.spec.settings import SearchSettings
from search.spec.space import Param, SearchSpec
from sensorium.config import ExperimentConfig
from sensorium.errors import ConfigError
from sensorium.memory import MemoryEstimate, ScanShape, estimate

GB = 10**9  # card memory is given and printed in GB, as cards are labelled (an H100 80GB: 80)
USABLE = 0.9  # of a card's memory planned for trials: the rest covers the memory model's error
MAX_TRIALS_PER_CARD = 16
ASSUMED_CARD_GB = 40.0  # the smallest common card (A100 40GB), when neither the driver nor the settings say
RAY_RESOURCE_STEPS = 10_000  # Ray counts resources in 1/10000 steps: 1/3 -> 0.3333, so that 3 fit on a card

# The end of each parameter's range that needs the most memory. Predicted by sensorium.memory (at ef04bd5) for
# configs/search_default.yaml's largest point at real size (7 scans of ~8,000 neurons, batch 128): a smaller
# input_kern leaves larger maps (the input layer is unpadded: 36x64 -> 32x60 at 5, 22x50 at 15; 28.2 GB against
# 21.4 GB); a depth-separable core keeps more maps for the backward pass than the full convolutions' weights add
# (28.2 GB against 21.1 GB); hidden layers are padded, so a larger hidden_kern adds weights only; a smaller
# se_reduction means larger SE layers.
SIZE_KEYS = {
    "data.batch_size": "high",
    "data.eval_batch_size": "high",
    "data.responses_on_device": "high",
    "data.behavior_channels": "high",
    "model.core.layers": "high",
    "model.core.hidden_channels": "high",
    "model.core.input_kern": "low",
    "model.core.hidden_kern": "high",
    "model.core.depth_separable": "high",
    "model.core.pad_input": "high",
    "model.core.n_se_blocks": "high",
    "model.core.se_reduction": "low",
    "model.readout.samples": "high",
    "model.readout.gmp_hidden_layers": "high",
    "model.readout.gmp_hidden_features": "high",
    "model.shifter.hidden_channels": "high",
    "model.shifter.layers": "high",
    "model.modulator.history_length": "high",
    "model.modulator.state_dim": "high",
}


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted memory of the base config and of the largest point of the space (``point``: its searched
    values; ``compared``: how many candidate points were estimated to find it)."""

    base: MemoryEstimate
    largest: MemoryEstimate
    point: dict[str, Any]
    compared: int


@dataclass(frozen=True)
class Card:
    """The memory of one card in bytes, and where that number came from (for the printed line)."""

    total: int
    source: str

    @property
    def gb(self) -> float:
        return self.total / GB


class Node(Protocol):
    """What the choice reads of a Ray node (``search.raytune.preflight.NodeInfo``): its total CPUs and GPUs."""

    @property
    def cpus(self) -> float: ...

    @property
    def gpus(self) -> float: ...


def largest_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """Candidates for the point of ``spec``'s space that needs the most memory: every ``SIZE_KEYS`` parameter
    at its hungry end, one point per combination of the options of family choices (categoricals with options
    of their own, and ``*.kind`` keys), every other parameter at its first value (its low end)."""
    return _points(spec.params)


def memory_plan(spec: SearchSpec, shapes: Sequence[ScanShape]) -> MemoryPlan:
    """Estimate the base config and every :func:`largest_points` candidate at ``shapes`` on a GPU; the plan keeps
    the candidate with the highest peak. Each estimate builds the model once on the CPU (1-8 s at real size)."""
    base = estimate(spec.base, shapes, "cuda")
    best: tuple[MemoryEstimate, dict[str, Any]] | None = None
    candidates = largest_points(spec)
    for point in candidates:
        try:
            cfg = spec.resolve(point)
        except ConfigError as err:
            raise ConfigError(f"the largest point of the space ({point}) is not a valid config: {err}") from err
        est = estimate(cfg, shapes, "cuda")
        if best is None or est.peak > best[0].peak:
            best = (est, point)
    assert best is not None  # a space has at least one parameter, so at least one point
    return MemoryPlan(base, best[0], best[1], len(candidates))


def largest_config(spec: SearchSpec, plan: MemoryPlan) -> ExperimentConfig:
    """The config of the plan's largest point."""
    return spec.resolve(plan.point)


def local_cards() -> list[tuple[str, int]]:
    """(name, total memory in bytes) of every CUDA card this process sees; empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return [(p.name, int(p.total_memory)) for p in props]


def card_memory(setting_gb: float | None) -> Card:
    """The memory of the smallest card trials run on: ``search.gpu_memory_gb`` when set, else the smallest card
    of the driver (:func:`local_cards`), else ``ASSUMED_CARD_GB``."""
    if setting_gb is not None:
        return Card(int(setting_gb * GB), "search.gpu_memory_gb")
    cards = local_cards()
    if cards:
        name, total = min(cards, key=lambda c: c[1])
        return Card(total, f"the driver's {name}")
    return Card(int(ASSUMED_CARD_GB * GB), f"assumed {ASSUMED_CARD_GB:g} GB, the smallest common card, as the driver "
                                           "sees no GPU and search.gpu_memory_gb is not set")


def choose_gpus_per_trial(settings: SearchSettings, nodes: Sequence[Node], card: Card | None,
                          plan: MemoryPlan | None) -> tuple[float, str]:
    """``gpus_per_trial`` for ``auto`` on a cluster of ``nodes`` (see the module docstring), and the one line
    that says what was chosen and why. ``card`` and ``plan`` are needed only when some node has a GPU."""
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    if not gpu_nodes:
        return 0.0, "gpus_per_trial auto -> 0 (the Ray cluster has no GPU: trials train on the CPU)"
    if card is None or plan is None:
        raise ValueError("a cluster with GPUs needs the card's memory and the memory plan")
    by_memory = int(USABLE * card.total // plan.largest.peak)
    per_card_cpus = min(math.floor(n.cpus / n.gpus) for n in gpu_nodes)
    by_cpus = per_card_cpus // max(1, math.ceil(settings.cpus_per_trial))
    cards = sum(n.gpus for n in gpu_nodes)
    by_concurrency = math.ceil(settings.max_concurrent / cards)
    limits = [(by_memory, ""), (by_cpus, f"{per_card_cpus} CPUs per card at {settings.cpus_per_trial:g} per trial"),
              (by_concurrency, f"max_concurrent {settings.max_concurrent} needs no more on {cards:g} cards"),
              (MAX_TRIALS_PER_CARD, "the most")]
    k, why = min(limits, key=lambda limit: limit[0])
    k = max(k, 1)
    share = math.floor(RAY_RESOURCE_STEPS / k) / RAY_RESOURCE_STEPS
    largest, base = plan.largest, plan.base
    phase = "in final scoring" if largest.score_peak > largest.train_peak else "in training"
    needs = (f"the largest point of the space needs {largest.peak / GB:.1f} GB {phase}, "
             f"the base config {base.peak / GB:.1f} GB")
    if by_memory < 1:
        why = f"more than {USABLE:g} of the card: one trial per card"
    elif why:
        why = f"{why}; memory allows {by_memory}"
    trials = f"{k} trial{'s' if k > 1 else ''} per {card.gb:.1f} GB card"
    reasons = "; ".join(part for part in (needs, why, f"card: {card.source}") if part)
    return share, f"gpus_per_trial auto -> {share:g} ({trials}: {reasons})"


# ------------------------------------------------------------------------------------------- helpers
def _points(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for p in params:
        options: list[dict[str, Any]] = []
        for value in _values(p):
            branch = p.branch(value)
            inner = _points(branch.params) if branch is not None else [{}]
            fixed = dict(branch.fixed) if branch is not None else {}
            options += [{p.key: value, **fixed, **sub} for sub in inner]
        points = [{**done, **option} for done in points for option in options]
    return points


def _values(p: Param) -> list[Any]:
    """The values of ``p`` the candidates take: its hungry end, every option of a family choice, or its first."""
    values = p.edge_values()
    if p.key in SIZE_KEYS:
        return [max(values) if SIZE_KEYS[p.key] == "high" else min(values)]
    if p.branches or p.key.endswith(".kind"):
        return values
    return values[:1]
