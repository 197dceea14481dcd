"""Build a SensoriumModel from a ModelConfig plus scan metadata (never from dataloaders).

Example::

    >>> import numpy as np
    >>> from sensorium.config import ModelConfig
    >>> meta = {"scan-a": ScanMeta(5, np.random.default_rng(0).normal(size=(5, 3)).astype("float32"))}
    >>> model = build_model(ModelConfig(), meta, in_shape=(4, 36, 64))
    >>> batch = Inputs(torch.zeros(2, 1, 36, 64), pupil_center=torch.zeros(2, 2), behavior=torch.zeros(2, 3))
    >>> model.eval()(batch, "scan-a").shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.shifters import MLPShifter

from sensorium.config import (
    CoreConfig, FactorizedReadoutConfig, GaussianReadoutConfig, HistoryModulatorConfig, ModelConfig,
    NoModulatorConfig, SE2dCoreConfig, ShifterConfig, Stacked2dCoreConfig,
)
from sensorium.errors import ConfigError
from sensorium.models.model import Core, Inputs, SECore, SensoriumModel  # noqa: F401 (Inputs: doctest)
from sensorium.models.modulator import HistoryModulator
from sensorium.models.readout import Factorized2d, KSampleGaussian2d

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


def _stacked2d(cfg: Stacked2dCoreConfig, input_channels: int) -> Core:
    return Core(**core_arguments(cfg, input_channels))


def _se2d(cfg: SE2dCoreConfig, input_channels: int) -> SECore:
    return SECore(**core_arguments(cfg, input_channels), n_se_blocks=cfg.n_se_blocks, se_reduction=cfg.se_reduction)


def _gaussian(cfg: GaussianReadoutConfig, feature_shape: tuple[int, int, int], scan: ScanMeta) -> KSampleGaussian2d:
    source_grid = None
    if cfg.grid_mean_predictor:
        source_grid = np.asarray(scan.cell_motor_coordinates, dtype=np.float32)[:, :2]  # cortical x, y
    return KSampleGaussian2d(
        feature_shape, scan.n_neurons, samples=cfg.samples, gauss_type=cfg.gauss_type, init_sigma=cfg.init_sigma,
        init_mu_range=cfg.init_mu_range, gamma_readout=cfg.gamma_readout, bias=cfg.bias, source_grid=source_grid,
        gmp_hidden_layers=cfg.gmp_hidden_layers, gmp_hidden_features=cfg.gmp_hidden_features,
    )


def _factorized(cfg: FactorizedReadoutConfig, feature_shape: tuple[int, int, int], scan: ScanMeta) -> Factorized2d:
    return Factorized2d(
        feature_shape, scan.n_neurons, gamma_readout=cfg.gamma_readout, bias=cfg.bias, normalize=cfg.normalize,
        init_noise=cfg.init_noise, positive_weights=cfg.positive_weights,
    )


def _mlp_shifter(cfg: ShifterConfig, data_keys: list[str]) -> MLPShifter:
    return MLPShifter(
        data_keys=data_keys,
        input_channels=2,  # horizontal, vertical pupil position
        hidden_channels_shifter=cfg.hidden_channels,
        shift_layers=cfg.layers,
    )


def _no_modulator(cfg: NoModulatorConfig, meta: Mapping[str, ScanMeta]) -> None:
    return None


def _history_modulator(cfg: HistoryModulatorConfig, meta: Mapping[str, ScanMeta]) -> nn.ModuleDict:
    return nn.ModuleDict({
        key: HistoryModulator(scan.n_neurons, history_length=cfg.history_length, state_dim=cfg.state_dim,
                              time_kernel_width=cfg.time_kernel_width, gamma=cfg.gamma,
                              lr_scale=cfg.lr_scale)
        for key, scan in meta.items()
    })


# kind -> builder, one registry per component. A core builder takes (config, input channels) and returns a
# sensorium.models.model.Core-protocol module; a readout builder (config, core output (C, H, W), ScanMeta)
# one scan's readout; a shifter builder (config, data keys) a ModuleDict data key -> MLP.
CORES: dict[str, Callable[..., nn.Module]] = {"stacked2d": _stacked2d, "se2d": _se2d}
READOUTS: dict[str, Callable[..., nn.Module]] = {"gaussian": _gaussian, "factorized": _factorized}
SHIFTERS: dict[str, Callable[..., nn.ModuleDict]] = {"mlp": _mlp_shifter}
# a modulator builder (config, scan metadata) -> a ModuleDict data key -> gain module, or None
MODULATORS: dict[str, Callable[..., nn.ModuleDict | None]] = {"none": _no_modulator, "history": _history_modulator}


def build_core(cfg: CoreConfig, input_channels: int) -> nn.Module:
    """The shared core of ``cfg.kind`` (faster forward passes of the library's cores, see ``models.model``)."""
    with warnings.catch_warnings():  # the library warns on every build that it averages the Laplace penalty
        warnings.filterwarnings("ignore", message="The averaged value of regularizer will be used")
        return CORES[cfg.kind](cfg, input_channels)


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
    """Core shared by all scans in ``meta``, a readout and (optionally) a shifter per scan, each of the family
    its config's ``kind`` names (the registries above).

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
    build_readout = READOUTS[cfg.readout.kind]
    readouts = nn.ModuleDict({key: build_readout(cfg.readout, feature_shape, scan) for key, scan in meta.items()})
    shifter = SHIFTERS[cfg.shifter.kind](cfg.shifter, list(meta)) if cfg.shifter.enabled else None
    modulator = MODULATORS[cfg.modulator.kind](cfg.modulator, meta)  # after the rest: the baseline's draws first
    return SensoriumModel(core, readouts, shifter, elu_offset=cfg.elu_offset, modulator=modulator)
