"""The bases of the model's components: one per kind (core, readout, shifter, modulator, link).

A family of a kind is one file that holds its config (a frozen dataclass derived from :class:`ComponentConfig`,
tagged by a ``kind`` Literal) and its module (derived from the kind's base here, built from that config), plus
one line in its kind's registry (:mod:`sensorium.models.registry`). The base says what the model needs of it:

- ``Config``: its config class; the module's constructor takes an instance of it first, then the kind's
  metadata (below), so every default lives in the config;
- ``reads``: the fields of the batch (:class:`sensorium.models.model.BatchInputs`) its ``forward`` takes, as
  keyword arguments of those names; the model hands each component what it declares (the core always gets
  the images and, when it expects more input channels than they have, the behaviour);
- ``history_length``: how many previous trials of the session its reads need (the batches carry them);
- :meth:`Component.param_groups`: its parameters as optimiser groups (``lr_scale`` times the learning rate,
  ``weight_decay``), which the model merges;
- ``regularizer()``: its penalty, a scalar tensor (or 0).

Per kind (metadata given to the constructor after the config; the forward pass's inputs; its output):

==========  ==========================================  ===============================  ==================
kind        constructor metadata                        forward                          output
==========  ==========================================  ===============================  ==================
core        in_shape (C, H, W), shared by all scans     images (B, C_img, H, W),         (B, C', H', W')
                                                        behavior (B, k) or None
readout     feature_shape (C', H', W'), one ScanMeta    features, shift (B, 2) or None   (B, n) pre-link
shifter     one ScanMeta                                its reads                        (B, 2) grid units
link        nothing, shared by all scans                x (B, n)                         rate (B, n) > 0
modulator   one ScanMeta                                rate (B, n), its reads           rate (B, n) > 0
==========  ==========================================  ===============================  ==================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ScanMeta:
    """What a per-scan component knows about its scan: the neuron count n and their cortical coordinates (n, 3)
    in µm. A field added here (filled from the loaded scan by ``sensorium.models.builder.scan_meta``) reaches
    every per-scan constructor and every checkpoint, which stores the fields by name."""

    n_neurons: int
    cell_motor_coordinates: np.ndarray

    def __post_init__(self) -> None:
        coords = np.asarray(self.cell_motor_coordinates)
        if coords.shape != (self.n_neurons, 3):
            raise ValueError(f"cell_motor_coordinates: expected shape ({self.n_neurons}, 3), got {coords.shape}")


@dataclass(frozen=True)
class ComponentConfig:
    """Base of a family's config. A family redeclares ``kind`` as ``Literal["its-name"] = "its-name"``."""

    kind: str = ""

    def unread(self) -> dict[str, str]:
        """Fields this config's switches leave unread -> the switch (a search must not search them)."""
        return {}


class Component(nn.Module):
    """Base of every component module (see the module docstring)."""

    Config: ClassVar[type[ComponentConfig]]
    reads: ClassVar[tuple[str, ...]] = ()
    history_length: int = 0
    lr_scale: float = 1.0  # its parameters' learning rate as a multiple of the model's
    weight_decay: float = 0.0  # Adam's L2 weight decay on its parameters

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Its trainable parameters as Adam groups at ``lr * lr_scale`` (one group; none without parameters)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": lr * self.lr_scale, "weight_decay": self.weight_decay}]

    def regularizer(self) -> torch.Tensor:
        """Its penalty, a scalar (none by default: 0)."""
        return torch.zeros(())


class CoreBase(Component):
    """A core shared by all scans: ``input_channels`` (C of its input) and ``forward(images, behavior)``; the
    behaviour values (B, k) are k constant input channels appended to the images."""

    input_channels: int


class ReadoutBase(Component):
    """One scan's readout: ``forward(features, shift=None, **reads)`` -> (B, n) before the link, and
    ``generator`` (a ``torch.Generator`` for its draws in training mode, or None for torch's global RNG)."""

    generator: torch.Generator | None = None


@dataclass(frozen=True)
class ReadoutConfigBase(ComponentConfig):
    """Base of a readout's config. ``takes_shift``: whether the shifter's (B, 2) shift can move it."""

    takes_shift: ClassVar[bool] = True


class ShifterBase(Component):
    """One scan's shifter: ``forward(**reads)`` -> (B, 2), a shift of all its readout positions."""


@dataclass(frozen=True)
class ShifterConfigBase(ComponentConfig):
    """Base of a shifter's config: ``enabled: false`` builds none (the readout reads where it learned to)."""

    enabled: bool = True

    def unread(self) -> dict[str, str]:
        names = [f.name for f in dataclasses.fields(self) if f.name not in ("kind", "enabled")]
        return {} if self.enabled else dict.fromkeys(names, "enabled")


class LinkBase(Component):
    """The output nonlinearity, shared by all scans: ``forward(x)`` (B, n) -> strictly positive rates (B, n),
    in the normalised response units the model is trained on (Poisson loss)."""


class ModulatorBase(Component):
    """One scan's modulator: ``forward(rate, **reads)`` -> the modulated rate (B, n), still > 0."""
