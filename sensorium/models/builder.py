"""Build a SensoriumModel from a ModelConfig plus scan metadata (never from dataloaders).

Example::

    >>> import numpy as np
    >>> from sensorium.config import ModelConfig
    >>> meta = {"scan-a": ScanMeta(5, np.random.default_rng(0).normal(size=(5, 3)).astype("float32"))}
    >>> model = build_model(ModelConfig(), meta, in_shape=(4, 36, 64))
    >>> model.eval()(torch.zeros(2, 4, 36, 64), "scan-a", torch.zeros(2, 2)).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.shifters import MLPShifter

from sensorium.config import CoreConfig, ModelConfig
from sensorium.errors import ConfigError
from sensorium.models.model import Core, SensoriumModel
from sensorium.models.readout import KSampleGaussian2d

if TYPE_CHECKING:
    from sensorium.data import ScanData


@dataclass(frozen=True)
class ScanMeta:
    """What a readout needs to know about one scan: its neuron count and cortical coordinates (n, 3) in µm."""

    n_neurons: int
    cell_motor_coordinates: np.ndarray

    def __post_init__(self) -> None:
        coords = np.asarray(self.cell_motor_coordinates)
        if coords.shape != (self.n_neurons, 3):
            raise ValueError(f"cell_motor_coordinates: expected shape ({self.n_neurons}, 3), got {coords.shape}")


def scan_meta(data: Mapping[str, ScanData]) -> dict[str, ScanMeta]:
    """The metadata of every loaded scan, keyed (and ordered) by data key."""
    return {
        key: ScanMeta(int(scan.n_neurons), np.asarray(scan.cell_motor_coordinates, dtype=np.float32))
        for key, scan in data.items()
    }


def core_arguments(cfg: CoreConfig, input_channels: int) -> dict[str, Any]:
    """The keyword arguments of neuralpredictors' ``Stacked2dCore`` for ``cfg`` (SENSORIUM+ baseline settings)."""
    return dict(
        input_channels=input_channels,
        hidden_channels=cfg.hidden_channels,
        input_kern=cfg.input_kern,
        hidden_kern=cfg.hidden_kern,
        layers=cfg.layers,
        gamma_input=cfg.gamma_input,
        gamma_hidden=cfg.gamma_hidden,
        bias=False,  # the reference core has no conv biases (batch norm carries them)
        momentum=cfg.momentum,
        pad_input=cfg.pad_input,
        batch_norm=cfg.batch_norm,
        laplace_padding=None,  # half the Laplace kernel: no border artefacts (library recommendation)
        input_regularizer=cfg.input_regularizer,
        stack=cfg.stack,
        depth_separable=cfg.depth_separable,
        linear=cfg.linear,
    )


def build_core(cfg: CoreConfig, input_channels: int) -> Core:
    """The shared core: ``Stacked2dCore`` with :func:`core_arguments`, and the faster forward of :class:`Core`."""
    with warnings.catch_warnings():  # the library warns on every build that it averages the Laplace penalty
        warnings.filterwarnings("ignore", message="The averaged value of regularizer will be used")
        return Core(**core_arguments(cfg, input_channels))


def core_output_shape(core: nn.Module, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C', H', W') of the core's output for one (C, H, W) input (a zero image in eval mode, no grad)."""
    was_training = core.training
    core.eval()
    with torch.no_grad():
        out = core(torch.zeros(1, *in_shape))
    core.train(was_training)
    return tuple(out.shape[1:])  # type: ignore[return-value]


def build_model(
    cfg: ModelConfig, meta: Mapping[str, ScanMeta], in_shape: tuple[int, int, int]
) -> SensoriumModel:
    """Core shared by all scans in ``meta``, a K-sample Gaussian readout and (optionally) a shifter per scan.

    ``in_shape`` is the model input (C, H, W): C = 1 for image-only models, 4 with behaviour channels.
    Parameters are initialised from torch's global RNG: seed it first (``seed_everything``).
    """
    if not meta:
        raise ConfigError("build_model: no scans given (expected at least one data key)")
    channels, height, width = in_shape
    core = build_core(cfg.core, channels)
    try:
        feature_shape = core_output_shape(core, (channels, height, width))
    except RuntimeError as err:  # e.g. an input kernel larger than the image
        raise ConfigError(f"model.core: input {in_shape} does not fit the core ({err})") from err
    readouts = nn.ModuleDict()
    for key, scan in meta.items():
        source_grid = None
        if cfg.readout.grid_mean_predictor:
            source_grid = np.asarray(scan.cell_motor_coordinates, dtype=np.float32)[:, :2]  # cortical x, y
        readouts[key] = KSampleGaussian2d(
            feature_shape,
            scan.n_neurons,
            samples=cfg.readout.samples,
            gauss_type=cfg.readout.gauss_type,
            init_sigma=cfg.readout.init_sigma,
            init_mu_range=cfg.readout.init_mu_range,
            gamma_readout=cfg.readout.gamma_readout,
            bias=cfg.readout.bias,
            source_grid=source_grid,
            gmp_hidden_layers=cfg.readout.gmp_hidden_layers,
            gmp_hidden_features=cfg.readout.gmp_hidden_features,
        )
    shifter = None
    if cfg.shifter.enabled:
        shifter = MLPShifter(
            data_keys=list(meta),
            input_channels=2,  # horizontal, vertical pupil position
            hidden_channels_shifter=cfg.shifter.hidden_channels,
            shift_layers=cfg.shifter.layers,
        )
    return SensoriumModel(core, readouts, shifter, elu_offset=cfg.elu_offset)
