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
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sensorium.errors import ConfigError
from sensorium.models.component import CoreBase, ScanMeta
from sensorium.models.model import Inputs, SensoriumModel  # noqa: F401 (Inputs: doctest)
from sensorium.models.registry import CORES, LINKS, MODULATORS, READOUTS, SHIFTERS

if TYPE_CHECKING:
    from sensorium.config import CoreConfig, ModelConfig
    from sensorium.data import ScanData


def scan_meta(data: Mapping[str, ScanData]) -> dict[str, ScanMeta]:
    """The metadata of every loaded scan, keyed (and ordered) by data key."""
    return {
        key: ScanMeta(int(scan.n_neurons), np.asarray(scan.cell_motor_coordinates, dtype=np.float32))
        for key, scan in data.items()
    }


def build_core(cfg: CoreConfig, in_shape: tuple[int, int, int]) -> CoreBase:
    """The shared core of ``cfg.kind`` for inputs of ``in_shape`` (C, H, W)."""
    with warnings.catch_warnings():  # the library warns on every build that it averages the Laplace penalty
        warnings.filterwarnings("ignore", message="The averaged value of regularizer will be used")
        return CORES[cfg.kind](cfg, in_shape)


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
    """Core shared by all scans in ``meta``, a readout, a shifter (unless disabled) and a modulator per scan, and
    the output link, each of the family its config's ``kind`` names (:mod:`sensorium.models.registry`).

    ``in_shape`` is the model input (C, H, W): C = 1 for image-only models, 4 with behaviour channels.
    Parameters are initialised from torch's global RNG, in that order (the baseline's parts draw first): seed
    it first (``seed_everything``).
    """
    if not meta:
        raise ConfigError("build_model: no scans given (expected at least one data key)")
    core = build_core(cfg.core, in_shape)
    try:
        feature_shape = core_output_shape(core, in_shape)
    except RuntimeError as err:  # e.g. an input kernel larger than the image
        raise ConfigError(f"model.core: input {in_shape} does not fit the core ({err})") from err
    readout = nn.ModuleDict({key: READOUTS[cfg.readout.kind](cfg.readout, feature_shape, scan)
                             for key, scan in meta.items()})
    shifter = None
    if cfg.shifter.enabled:
        shifter = nn.ModuleDict({key: SHIFTERS[cfg.shifter.kind](cfg.shifter, scan) for key, scan in meta.items()})
    modulator = nn.ModuleDict({key: MODULATORS[cfg.modulator.kind](cfg.modulator, scan) for key, scan in meta.items()})
    return SensoriumModel(core, readout, shifter, modulator, LINKS[cfg.link.kind](cfg.link))
