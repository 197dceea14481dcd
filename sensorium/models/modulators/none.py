"""The ``none`` modulator (the default): the rate as the link gives it, so the baseline stays the reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sensorium.models.component import ComponentConfig, ModulatorBase, ScanMeta


@dataclass(frozen=True)
class NoModulatorConfig(ComponentConfig):
    """No modulator: the baseline's rate as it is (the default)."""

    kind: Literal["none"] = "none"


class NoModulator(ModulatorBase):
    """The identity on one scan's rates; no parameters, no state-dict entries, nothing drawn when built."""

    Config = NoModulatorConfig

    def __init__(self, cfg: NoModulatorConfig, scan: ScanMeta) -> None:
        super().__init__()

    def forward(self, rate: torch.Tensor) -> torch.Tensor:
        """rate (B, n) -> the same tensor."""
        return rate
