"""The ``se2d`` core: neuralpredictors' ``SE2dCore``, the stacked core with squeeze-and-excitation blocks on its
last layers, with the stacked core's faster forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.cores import SE2dCore

from sensorium.errors import ConfigError
from sensorium.models.cores.stacked2d import ConvCoreConfig, Core
from sensorium.typed import positive


@dataclass(frozen=True)
class SE2dCoreConfig(ConvCoreConfig):
    """neuralpredictors ``SE2dCore``: the stacked core with squeeze-and-excitation blocks on its last layers."""

    kind: Literal["se2d"] = "se2d"
    n_se_blocks: int = 1  # SE blocks after the last n layers (0 = the stacked core without group sparsity)
    se_reduction: int = 16  # channel reduction inside an SE block

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "model.core", "se_reduction")
        if not 0 <= self.n_se_blocks < self.layers:
            raise ConfigError(f"model.core.n_se_blocks={self.n_se_blocks}: expected 0 <= value < layers "
                              f"({self.layers}; the first layer takes no SE block)")
        if self.se_reduction > self.hidden_channels:
            raise ConfigError(f"model.core.se_reduction={self.se_reduction}: expected at most hidden_channels "
                              f"({self.hidden_channels})")

    def unread(self) -> dict[str, str]:
        return {"se_reduction": "n_se_blocks"} if self.n_se_blocks == 0 else {}


class SECore(Core, SE2dCore):
    """neuralpredictors' ``SE2dCore`` (squeeze-and-excitation blocks after the last ``n_se_blocks`` layers) with
    :class:`Core`'s forward pass (the SE blocks run inside their layers; the first layer never has one). Its
    penalty is the library's: the Laplace term only (no group sparsity)."""

    Config = SE2dCoreConfig

    def __init__(self, cfg: SE2dCoreConfig, in_shape: tuple[int, int, int]) -> None:
        super().__init__(cfg, in_shape, n_se_blocks=cfg.n_se_blocks, se_reduction=cfg.se_reduction)
