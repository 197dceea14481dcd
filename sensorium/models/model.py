"""The SENSORIUM+ encoding model: one shared core, and a readout and an optional shifter per scan."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.cores import Stacked2dCore


class Core(Stacked2dCore):
    """neuralpredictors' ``Stacked2dCore`` whose Laplace penalty also works in ``channels_last`` layout.

    The library's penalty calls ``.view`` on the first conv weight, which fails for a channels_last weight;
    handing it a contiguous copy (gradients flow through ``.contiguous()``) fixes that for every layout.
    """

    def laplace(self) -> torch.Tensor:
        weight = self.features[0].conv.weight.contiguous()  # (C_out, C_in, k, k)
        return self._input_weights_regularizer(weight, avg=self.use_avg_reg)


class SensoriumModel(nn.Module):
    """images (+ pupil centre) of one scan -> predicted responses of that scan's neurons.

    Attributes: ``core`` (shared by all scans), ``readout`` (ModuleDict data_key -> KSampleGaussian2d),
    ``shifter`` (neuralpredictors ``MLPShifter``, a ModuleDict data_key -> MLP, or None),
    ``elu_offset``. The output nonlinearity is ``elu(x + elu_offset) + 1``, a strictly positive rate in
    the normalised response units the model is trained on.
    """

    def __init__(
        self, core: nn.Module, readout: nn.ModuleDict, shifter: nn.ModuleDict | None, elu_offset: float = 0.0
    ) -> None:
        super().__init__()
        self.core = core
        self.readout = readout
        self.shifter = shifter
        self.elu_offset = elu_offset
        self.channels_last = False

    @property
    def data_keys(self) -> list[str]:
        return list(self.readout.keys())

    def forward(
        self, images: torch.Tensor, data_key: str, pupil_center: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (B, C, H, W) normalised, pupil_center (B, 2) z-scored -> rates (B, n) > 0.

        Training mode: each readout averages K sampled positions per neuron and image; eval mode reads at
        the Gaussian means (deterministic). ``pupil_center`` is required when the model has a shifter and
        ignored otherwise.
        """
        if data_key not in self.readout:
            raise KeyError(f"unknown data key {data_key!r}; this model knows {self.data_keys}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.core(images)  # (B, C', H', W')
        shift = None
        if self.shifter is not None:
            if pupil_center is None:
                raise ValueError(f"scan {data_key}: this model has a shifter and needs pupil_center (B, 2)")
            shift = self.shifter[data_key](pupil_center)  # (B, 2), in readout grid units
        x = self.readout[data_key](x, shift=shift)  # (B, n)
        return F.elu(x + self.elu_offset) + 1

    def regularizer(self, data_key: str) -> torch.Tensor:
        """Scalar penalty for one batch of ``data_key``: core (Laplace, group sparsity) + readout L1 + shifter."""
        reg = self.core.regularizer() + self.readout[data_key].regularizer(reduction="sum")
        if self.shifter is not None:
            reg = reg + self.shifter.regularizer(data_key)
        return reg

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Use ``generator`` (None: torch's global RNG) for the readouts' position draws in training mode."""
        for readout in self.readout.values():
            readout.generator = generator

    def use_channels_last(self) -> None:
        """Store 4-D weights and feed images in channels_last memory layout (faster convolutions on CPU)."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

