"""The SENSORIUM+ encoding model: one shared core, and a readout and an optional shifter per scan.

The model sees cores and readouts only through narrow protocols (:class:`CoreModule`, :class:`Readout`), and
takes a whole batch (:class:`BatchInputs`): a new input reaches the parts that use it without a new signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.activations import AdaptiveELU
from neuralpredictors.layers.cores import SE2dCore, Stacked2dCore


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


class CoreModule(Protocol):
    """What the model needs of a core: its input channel count, a forward pass, and its penalty."""

    input_channels: int

    def __call__(self, images: torch.Tensor, behavior: torch.Tensor | None) -> torch.Tensor: ...

    def regularizer(self) -> torch.Tensor: ...


class Readout(Protocol):
    """What the model needs of one scan's readout: a forward pass, its penalty, and a generator for its draws."""

    generator: torch.Generator | None

    def __call__(self, features: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor: ...

    def regularizer(self, reduction: str = "sum") -> torch.Tensor: ...


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


class SECore(Core, SE2dCore):
    """neuralpredictors' ``SE2dCore`` (squeeze-and-excitation blocks after the last ``n_se_blocks`` layers) with
    :class:`Core`'s forward pass (the SE blocks run inside their layers; the first layer never has one). Its
    penalty is the library's: the Laplace term only (no group sparsity)."""


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

    Attributes: ``core`` (shared by all scans, a :class:`CoreModule`), ``readout`` (ModuleDict data_key ->
    :class:`Readout`),
    ``shifter`` (neuralpredictors ``MLPShifter``, a ModuleDict data_key -> MLP, or None),
    ``elu_offset``. The output nonlinearity is ``elu(x + elu_offset) + 1``, a strictly positive rate in
    the normalised response units the model is trained on.
    """

    def __init__(
        self, core: CoreModule, readout: nn.ModuleDict, shifter: nn.ModuleDict | None, elu_offset: float = 0.0,
        modulator: nn.ModuleDict | None = None,
    ) -> None:
        super().__init__()
        self.core = core
        self.readout = readout
        self.shifter = shifter
        self.modulator = modulator
        self.elu_offset = elu_offset
        self.channels_last = False
        self.autocast: torch.dtype | None = None  # e.g. torch.bfloat16: forward under torch.autocast

    @property
    def history_length(self) -> int:
        """How many previous trials the batches must carry (``ScanData.batches(history=...)``); 0: none."""
        return 0 if self.modulator is None else max(m.history_length for m in self.modulator.values())

    @property
    def data_keys(self) -> list[str]:
        return list(self.readout.keys())

    def forward(self, batch: BatchInputs, data_key: str) -> torch.Tensor:
        """One batch of scan ``data_key`` (:class:`BatchInputs`) -> rates (B, n) > 0.

        The core takes the images, plus ``batch.behavior`` as constant input channels when the core expects
        more channels than the images have (the SENSORIUM+ input, without building them; see :class:`Core`).
        Training mode: a Gaussian readout averages K sampled positions per neuron and image; eval mode reads
        at the Gaussian means (deterministic). ``pupil_center`` is required when the model has a shifter.
        With ``autocast`` set, the forward pass runs under ``torch.autocast`` in that dtype and the rates
        come back in float32.
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
            if batch.pupil_center is None:
                raise ValueError(f"scan {data_key}: this model has a shifter and needs pupil_center (B, 2)")
            shift = self.shifter[data_key](batch.pupil_center)  # (B, 2), in readout grid units
        x = self.readout[data_key](x, shift=shift)  # (B, n)
        rate = F.elu(x + self.elu_offset) + 1
        if self.modulator is not None:
            if batch.history is None:
                raise ValueError(f"scan {data_key}: this model has a history modulator and needs batch.history "
                                 f"(batches made with history={self.history_length})")
            rate = rate * self.modulator[data_key](batch.history)  # a positive gain per neuron and trial
        return rate

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The trainable parameters as optimiser groups at learning rate ``lr``: one group (every parameter, in
        ``parameters()`` order) without a modulator; else the rest, then the modulator's weights at
        ``lr * lr_scale``."""
        if self.modulator is None:
            return [{"params": list(self.parameters()), "lr": lr}]
        own = {id(p) for p in self.modulator.parameters()}
        scales = {m.lr_scale for m in self.modulator.values()}
        if len(scales) != 1:
            raise ValueError(f"the scans' modulators have different lr_scale values {sorted(scales)}: expected one")
        return [{"params": [p for p in self.parameters() if id(p) not in own], "lr": lr},
                {"params": list(self.modulator.parameters()), "lr": lr * scales.pop()}]

    def regularizer(self, data_key: str) -> torch.Tensor:
        """Scalar penalty for one batch of ``data_key``: core (Laplace, group sparsity) + readout L1 + shifter
        + modulator (L2)."""
        reg = self.core.regularizer() + self.readout[data_key].regularizer(reduction="sum")
        if self.shifter is not None:
            reg = reg + self.shifter.regularizer(data_key)
        if self.modulator is not None:
            reg = reg + self.modulator[data_key].regularizer()
        return reg

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Use ``generator`` (None: torch's global RNG) for the readouts' position draws in training mode."""
        for readout in self.readout.values():
            readout.generator = generator

    def use_channels_last(self) -> None:
        """Store 4-D weights and feed images in channels_last memory layout (faster convolutions on CPU)."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

