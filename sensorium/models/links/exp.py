"""The ``exp`` link: rate = exp(x), the canonical link of the Poisson loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sensorium.models.component import ComponentConfig, LinkBase

MAX_INPUT = 20.0  # exp(20) ~ 4.9e8 normalised units: far above any response, and a sum of such rates over a
# batch stays finite in float32 (which overflows at exp(88.7)), so one wild readout cannot make the loss inf


@dataclass(frozen=True)
class ExpLinkConfig(ComponentConfig):
    """``exp(x)``, its input clamped at 20 from above (no overflow)."""

    kind: Literal["exp"] = "exp"


class ExpLink(LinkBase):
    """x (B, n) -> exp(min(x, 20)) (B, n) > 0. No parameters; no gradient where x > 20."""

    Config = ExpLinkConfig

    def __init__(self, cfg: ExpLinkConfig) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x.clamp(max=MAX_INPUT))
