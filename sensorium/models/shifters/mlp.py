"""The ``mlp`` shifter: per scan, an MLP on the normalised pupil centre giving one 2-D shift of all readout
positions (neuralpredictors' ``MLP`` shifter, as the baseline's ``MLPShifter`` holds one per scan)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.shifters import MLP

from sensorium.models.component import ScanMeta, ShifterBase, ShifterConfigBase
from sensorium.typed import positive


@dataclass(frozen=True)
class MLPShifterConfig(ShifterConfigBase):
    """Per-scan MLP on the normalised pupil centre giving one 2-D shift of all readout positions."""

    kind: Literal["mlp"] = "mlp"
    hidden_channels: int = 5
    layers: int = 3  # Linear(2,5)-Tanh-Linear(5,5)-Tanh-Linear(5,2)-Tanh

    def __post_init__(self) -> None:
        positive(self, "model.shifter", "hidden_channels", "layers")


class MLPShifter(MLP, ShifterBase):
    """One scan's shifter: pupil_center (B, 2) z-scored -> shift (B, 2) in readout grid units, in (-1, 1)
    (tanh); no penalty. The same modules, initialisation and state-dict keys as the library's."""

    Config = MLPShifterConfig
    reads = ("pupil_center",)

    def __init__(self, cfg: MLPShifterConfig, scan: ScanMeta) -> None:
        super().__init__(input_features=2, hidden_channels=cfg.hidden_channels, shift_layers=cfg.layers)
