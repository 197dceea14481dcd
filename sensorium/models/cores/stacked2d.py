"""The ``stacked2d`` core: neuralpredictors' ``Stacked2dCore`` (the SENSORIUM+ baseline's core) with a faster
forward pass, and :class:`ConvCoreConfig`, the fields every core built on it shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.activations import AdaptiveELU
from neuralpredictors.layers.cores import Stacked2dCore

from sensorium.errors import ConfigError
from sensorium.models.component import ComponentConfig, CoreBase
from sensorium.typed import non_negative, positive


@dataclass(frozen=True)
class ConvCoreConfig(ComponentConfig):
    """Fields shared by the convolutional cores of neuralpredictors (``Stacked2dCore`` and its subclasses)."""

    layers: int = 4
    hidden_channels: int = 64
    input_kern: int = 9
    hidden_kern: int = 7
    depth_separable: bool = True
    linear: bool = False  # True: no nonlinearities inside the core (the LN baseline)
    gamma_input: float = 6.3831  # Laplace smoothness penalty on the first layer
    pad_input: bool = False  # 36x64 -> 28x56 with input_kern 9
    batch_norm: bool = True
    momentum: float = 0.9
    input_regularizer: Literal["LaplaceL2norm", "LaplaceL2", "GaussianLaplaceL2"] = "LaplaceL2norm"
    stack: int = -1  # read out only the last layer

    def __post_init__(self) -> None:
        positive(self, "model.core", "layers", "hidden_channels", "input_kern", "hidden_kern")
        for name in ("input_kern", "hidden_kern"):
            if getattr(self, name) % 2 == 0:
                raise ConfigError(f"model.core.{name}={getattr(self, name)}: expected an odd kernel size")
        non_negative(self, "model.core", "gamma_input")
        if not -self.layers <= self.stack < self.layers:
            raise ConfigError(f"model.core.stack={self.stack}: expected a layer index in [-layers, layers) = "
                              f"[{-self.layers}, {self.layers})")
        if not 0.0 < self.momentum <= 1.0:
            raise ConfigError(f"model.core.momentum={self.momentum}: expected 0 < value <= 1 (batch-norm momentum)")


@dataclass(frozen=True)
class Stacked2dCoreConfig(ConvCoreConfig):
    """neuralpredictors ``Stacked2dCore`` (the SENSORIUM+ baseline core; defaults are the baseline's)."""

    kind: Literal["stacked2d"] = "stacked2d"
    gamma_hidden: float = 0.0  # group-sparsity penalty on hidden layers (full convolutions only)

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "model.core", "gamma_hidden")

    def unread(self) -> dict[str, str]:
        return {"gamma_hidden": "depth_separable"} if self.depth_separable else {}


def core_arguments(cfg: ConvCoreConfig, input_channels: int) -> dict[str, Any]:
    """The keyword arguments of neuralpredictors' ``Stacked2dCore`` (and of its subclasses) for ``cfg``."""
    return dict(
        input_channels=input_channels,
        hidden_channels=cfg.hidden_channels,
        input_kern=cfg.input_kern,
        hidden_kern=cfg.hidden_kern,
        layers=cfg.layers,
        gamma_input=cfg.gamma_input,
        gamma_hidden=getattr(cfg, "gamma_hidden", 0.0),
        bias=False,  # the reference core has no conv biases (batch norm carries them)
        momentum=cfg.momentum,
        pad_input=cfg.pad_input,
        batch_norm=cfg.batch_norm,
        laplace_padding=None,  # half the Laplace kernel: no border artefacts (library recommendation)
        input_regularizer=cfg.input_regularizer,
        use_avg_reg=True,  # Stacked2dCore's default, also for SE2dCore: the same Laplace scale in both
        stack=cfg.stack,
        depth_separable=cfg.depth_separable,
        linear=cfg.linear,
    )


class Core(Stacked2dCore, CoreBase):
    """neuralpredictors' ``Stacked2dCore`` (the SENSORIUM+ baseline's settings) with a faster forward pass,
    built from a :class:`Stacked2dCoreConfig` and the input's (C, H, W).

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

    Config = Stacked2dCoreConfig

    def __init__(self, cfg: ConvCoreConfig, in_shape: tuple[int, int, int], **extra: Any) -> None:
        """``extra``: the keyword arguments a subclass of the library's core adds (:mod:`.se2d`)."""
        super().__init__(**core_arguments(cfg, in_shape[0]), **extra)
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
