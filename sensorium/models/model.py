"""The SENSORIUM+ encoding model: one shared core and output link, and per scan a readout, an optional shifter and
a modulator.

The model sees its components only through their bases (:mod:`sensorium.models.component`) and takes a whole
batch (:class:`BatchInputs`): each component gets the fields it declares, so a new input reaches the parts that
use it without a new signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from sensorium.models.component import Component, CoreBase, LinkBase


class BatchInputs(Protocol):
    """What the model reads of a batch of one scan (``sensorium.data.Batch`` is one; :class:`Inputs` another)."""

    images: torch.Tensor  # (B, C_img, H, W) normalised
    behavior: torch.Tensor | None  # (B, k): appended as constant channels when the core expects C_img + k
    pupil_center: torch.Tensor | None  # (B, 2) z-scored; needed with a shifter
    trial_ids: Any  # (B,) trial_idx of each row
    history: Any  # sensorium.data.History of the trials' past, or None (needed by a history modulator)


@dataclass
class Inputs:
    """A batch built by hand (tests, benchmarks): the fields of :class:`BatchInputs`."""

    images: torch.Tensor
    pupil_center: torch.Tensor | None = None
    behavior: torch.Tensor | None = None
    trial_ids: np.ndarray | None = None
    history: Any = None


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient in channels_last layout.

    ``grid_sample``'s backward writes the gradient of the feature map in the default layout; the core's
    last batch norm, whose input is channels_last, is then ~4x slower on CPU on the mixed layouts than
    after this one copy.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class SensoriumModel(nn.Module):
    """A batch of one scan -> predicted responses of that scan's neurons.

    Attributes, each a component (:mod:`sensorium.models.component`) of the family its config names:
    ``core`` (shared by all scans), ``readout`` (ModuleDict data_key -> readout), ``shifter`` (ModuleDict
    data_key -> shifter, or None), ``modulator`` (ModuleDict data_key -> modulator) and ``link`` (the output
    nonlinearity, shared). The rate is ``modulator(link(readout(core(images), shift)))``: strictly positive,
    in the normalised response units the model is trained on.
    """

    def __init__(
        self, core: CoreBase, readout: nn.ModuleDict, shifter: nn.ModuleDict | None, modulator: nn.ModuleDict,
        link: LinkBase,
    ) -> None:
        super().__init__()
        self.core = core
        self.readout = readout
        self.shifter = shifter
        self.modulator = modulator
        self.link = link
        self.channels_last = False
        self.autocast: torch.dtype | None = None  # e.g. torch.bfloat16: forward under torch.autocast

    def components(self, data_key: str | None = None) -> list[Component]:
        """Its components in build order (core, readouts, shifters, modulators, link); with ``data_key``, those
        that one scan's batches go through."""
        per_scan = [d for d in (self.readout, self.shifter, self.modulator) if d is not None]
        keys = list(self.readout) if data_key is None else [data_key]
        return [self.core, *(d[k] for d in per_scan for k in keys), self.link]

    @property
    def history_length(self) -> int:
        """How many previous trials the batches must carry (``ScanData.batches(history=...)``); 0: none."""
        return max(c.history_length for c in self.components())

    @property
    def data_keys(self) -> list[str]:
        return list(self.readout.keys())

    def forward(self, batch: BatchInputs, data_key: str) -> torch.Tensor:
        """One batch of scan ``data_key`` (:class:`BatchInputs`) -> rates (B, n) > 0.

        The core takes the images, plus ``batch.behavior`` as constant input channels when the core expects
        more channels than the images have (the SENSORIUM+ input, without building them). Every other
        component gets the batch fields it declares (``reads``); a missing one is an error that names it.
        Training mode: a Gaussian readout averages K sampled positions per neuron and image; eval mode reads
        at the Gaussian means (deterministic). With ``autocast`` set, the forward pass runs under
        ``torch.autocast`` in that dtype and the rates come back in float32.
        """
        if data_key not in self.readout:
            raise KeyError(f"unknown data key {data_key!r}; this model knows {self.data_keys}")
        if self.autocast is not None:
            with torch.autocast(batch.images.device.type, dtype=self.autocast):
                return self._forward(batch, data_key).float()
        return self._forward(batch, data_key)

    def _forward(self, batch: BatchInputs, data_key: str) -> torch.Tensor:
        images = batch.images
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        extra = self.core.input_channels - images.shape[1]
        behavior = batch.behavior if extra > 0 else None
        if extra > 0 and (behavior is None or behavior.shape[1] != extra):
            got = "none" if behavior is None else behavior.shape[1]
            raise ValueError(f"the core expects {self.core.input_channels} input channels: {images.shape[1]} "
                             f"image + {extra} behaviour channels, got {got} behaviour values")
        x = self.core(images, behavior)  # (B, C', H', W')
        if self.channels_last and x.requires_grad:
            x = _ChannelsLastGrad.apply(x)
        shift = None
        if self.shifter is not None:
            shifter = self.shifter[data_key]
            shift = shifter(**_reads(shifter, batch, data_key, "shifter"))  # (B, 2), in readout grid units
        readout = self.readout[data_key]
        x = readout(x, shift=shift, **_reads(readout, batch, data_key, "readout"))  # (B, n)
        rate = self.link(x)  # (B, n) > 0
        modulator = self.modulator[data_key]
        return modulator(rate, **_reads(modulator, batch, data_key, "modulator"))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The trainable parameters as optimiser groups at learning rate ``lr``: every component's groups
        (:meth:`Component.param_groups`), those with the same learning rate and weight decay merged, in
        ``parameters()`` order; one group when every component trains at ``lr`` without weight decay."""
        merged: dict[tuple[float, float], dict[str, Any]] = {}
        for component in self.components():
            for group in component.param_groups(lr):
                key = (group["lr"], group["weight_decay"])
                merged.setdefault(key, {**group, "params": []})["params"].extend(group["params"])
        return list(merged.values())

    def regularizer(self, data_key: str) -> torch.Tensor:
        """Scalar penalty for one batch of ``data_key``: the sum of its components' penalties (core: Laplace,
        group sparsity; readout: L1; modulator: L2; the shifters and links so far: none)."""
        core, *rest = self.components(data_key)
        reg = core.regularizer()
        for component in rest:
            reg = reg + component.regularizer()
        return reg

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Use ``generator`` (None: torch's global RNG) for the readouts' position draws in training mode."""
        for readout in self.readout.values():
            readout.generator = generator

    def use_channels_last(self) -> None:
        """Store 4-D weights and feed images in channels_last memory layout (faster convolutions on CPU)."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True


def _reads(component: Component, batch: BatchInputs, data_key: str, part: str) -> dict[str, Any]:
    """The batch fields ``component`` declares (``reads``), by name; ValueError naming a missing one."""
    values = {name: getattr(batch, name, None) for name in component.reads}
    for name, value in values.items():
        if value is None:
            raise ValueError(f"scan {data_key}: this model's {part} ({type(component).__name__}) needs batch.{name}"
                             + (f" (batches made with history={component.history_length})"
                                if component.history_length else ""))
    return values
