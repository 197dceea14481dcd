"""The SENSORIUM+ encoding model: one shared core, and a readout and an optional shifter per scan."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.activations import AdaptiveELU
from neuralpredictors.layers.cores import Stacked2dCore


class Core(Stacked2dCore):
    """neuralpredictors' ``Stacked2dCore`` (the SENSORIUM+ baseline's settings) with a faster forward pass.

    The parameters, state-dict keys and initialisation are the library's; only how the forward pass
    computes the same function differs:

    - behaviour as input channels without materialising them: with ``behavior`` (B, k) given, the
      first layer sees the image channels plus k constant channels. Without input padding every
      output pixel of the first convolution sees the whole kernel, so a constant channel contributes
      ``value * kernel.sum()``: the first layer convolves only the image and adds (B, C_out) offsets,
      a quarter of its work for 1 image + 3 behaviour channels. With input padding the channels are
      appended as images (the borders differ there);
    - ``AdaptiveELU(0, 0)`` computes ``elu(x - 0) + 0``: plain ELU, in place on the batch norm's output
      (which no backward needs), two passes and one allocation per activation map fewer, the same values;
    - with one layer read out (``stack=-1``) its output is returned as is, not copied by ``torch.cat``.

    The Laplace penalty also works in ``channels_last`` layout: the library's calls ``.view`` on the
    first conv weight, which fails for a channels_last weight; a contiguous copy (gradients flow through
    ``.contiguous()``) fixes that.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("skip", 0) > 1:
            raise ValueError("Core: skip connections are not supported by this forward pass")
        super().__init__(**kwargs)
        for layer in self.features:
            nonlin = getattr(layer, "nonlin", None)
            if isinstance(nonlin, AdaptiveELU) and nonlin.xshift == 0 and nonlin.yshift == 0:
                layer.nonlin = nn.ELU(inplace=True)

    def forward(self, images: torch.Tensor, behavior: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, C_img, H, W), behavior (B, k) or None -> features (B, C', H', W').

        ``behavior`` given: the input is the images plus k constant behaviour channels (C_img + k must be
        the core's input channels); None: ``images`` are the whole input.
        """
        first = self.features[0]
        x = self._first_conv(first.conv, images, behavior)
        for module in list(first.children())[1:]:  # batch norm, nonlinearity
            x = module(x)
        outputs = [x]
        for layer in self.features[1:]:
            x = layer(x)
            outputs.append(x)
        chosen = [outputs[i] for i in self.stack]
        return chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=1)

    def _first_conv(self, conv: nn.Conv2d, images: torch.Tensor, behavior: torch.Tensor | None) -> torch.Tensor:
        if behavior is None:
            return conv(images)
        n_image = images.shape[1]
        if n_image + behavior.shape[1] != conv.in_channels:
            raise ValueError(
                f"core expects {conv.in_channels} input channels, got {n_image} image + {behavior.shape[1]} "
                "behaviour channels"
            )
        if any(conv.padding):  # zero padding: constant channels are not constant under the kernel
            channels = behavior[:, :, None, None].expand(-1, -1, *images.shape[-2:])
            x = torch.cat([images, channels.to(images.dtype)], dim=1)
            channels_last = conv.weight.is_contiguous(memory_format=torch.channels_last)
            return conv(x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format))
        weight = conv.weight  # (C_out, C_img + k, kh, kw)
        out = F.conv2d(images, weight[:, :n_image], conv.bias, conv.stride, 0, conv.dilation)
        offsets = behavior.to(weight.dtype) @ weight[:, n_image:].sum(dim=(2, 3)).T  # (B, C_out)
        return out + offsets[:, :, None, None]

    def laplace(self) -> torch.Tensor:
        weight = self.features[0].conv.weight.contiguous()  # (C_out, C_in, k, k)
        return self._input_weights_regularizer(weight, avg=self.use_avg_reg)


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
        self.autocast: torch.dtype | None = None  # e.g. torch.bfloat16: forward under torch.autocast

    @property
    def data_keys(self) -> list[str]:
        return list(self.readout.keys())

    def forward(
        self,
        images: torch.Tensor,
        data_key: str,
        pupil_center: torch.Tensor | None = None,
        behavior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images (B, C, H, W) normalised, pupil_center (B, 2) z-scored, behavior (B, 3) -> rates (B, n) > 0.

        ``behavior`` given: the core appends it as constant input channels (the SENSORIUM+ input, without
        building them; see :class:`Core`); None: ``images`` already hold every input channel.
        Training mode: each readout averages K sampled positions per neuron and image; eval mode reads at
        the Gaussian means (deterministic). ``pupil_center`` is required when the model has a shifter and
        ignored otherwise. With ``autocast`` set, the forward pass runs under ``torch.autocast`` in that
        dtype and the rates come back in float32.
        """
        if data_key not in self.readout:
            raise KeyError(f"unknown data key {data_key!r}; this model knows {self.data_keys}")
        if self.autocast is not None:
            with torch.autocast(images.device.type, dtype=self.autocast):
                return self._forward(images, data_key, pupil_center, behavior).float()
        return self._forward(images, data_key, pupil_center, behavior)

    def _forward(
        self, images: torch.Tensor, data_key: str, pupil_center: torch.Tensor | None, behavior: torch.Tensor | None
    ) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.core(images, behavior)  # (B, C', H', W')
        if self.channels_last and x.requires_grad:
            x = _ChannelsLastGrad.apply(x)
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

