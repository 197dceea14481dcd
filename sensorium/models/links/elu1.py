"""The ``elu1`` link (the reference, and the default): rate = elu(x + offset) + 1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from sensorium.models.component import ComponentConfig, LinkBase


@dataclass(frozen=True)
class Elu1LinkConfig(ComponentConfig):
    """The SENSORIUM+ baseline's output nonlinearity, ``elu(x + offset) + 1`` (> 0, 1 at x = -offset)."""

    kind: Literal["elu1"] = "elu1"
    offset: float = 0.0


class Elu1Link(LinkBase):
    """x (B, n) -> elu(x + offset) + 1 (B, n) > 0: linear above -offset, exp(x + offset) below. No parameters."""

    Config = Elu1LinkConfig

    def __init__(self, cfg: Elu1LinkConfig) -> None:
        super().__init__()
        self.offset = cfg.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x + self.offset) + 1
