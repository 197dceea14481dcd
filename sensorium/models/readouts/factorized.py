"""The ``factorized`` readout: neuralpredictors' ``FullFactorized2d`` per scan, deterministic, takes no shift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.readouts import FullFactorized2d

from sensorium.models.component import ReadoutBase, ReadoutConfigBase, ScanMeta
from sensorium.typed import non_negative, positive


@dataclass(frozen=True)
class FactorizedReadoutConfig(ReadoutConfigBase):
    """Per-scan factorised readout (neuralpredictors ``FullFactorized2d``): per neuron, a spatial mask over the
    whole feature map times a feature vector. It takes no shift: use it with ``model.shifter.enabled: false``."""

    kind: Literal["factorized"] = "factorized"
    gamma_readout: float = 0.0076  # weight of the L1 penalty on |spatial| x |features|
    bias: bool = True
    normalize: bool = True  # spatial masks normalised to unit L2 norm
    init_noise: float = 1e-3  # std of the initial spatial and feature weights
    positive_weights: bool = False  # clamp feature weights at 0

    takes_shift: ClassVar[bool] = False

    def __post_init__(self) -> None:
        positive(self, "model.readout", "init_noise")
        non_negative(self, "model.readout", "gamma_readout")


class Factorized2d(FullFactorized2d, ReadoutBase):
    """neuralpredictors' ``FullFactorized2d`` as a readout: per neuron a spatial mask over the whole feature map
    (n, H, W) times a feature vector (n, C), plus a bias that starts at 0, as the Gaussian readout's does;
    ``gamma_readout`` weighs the L1 penalty on |mask| x |features|. Built from its config, the core output's
    (C, H, W) and the scan's metadata (n neurons)."""

    Config = FactorizedReadoutConfig

    def __init__(self, cfg: FactorizedReadoutConfig, in_shape: tuple[int, int, int], scan: ScanMeta) -> None:
        super().__init__(
            in_shape=tuple(in_shape), outdims=scan.n_neurons, bias=cfg.bias, normalize=cfg.normalize,
            init_noise=cfg.init_noise, positive_weights=cfg.positive_weights,
            spatial_and_feature_reg_weight=cfg.gamma_readout,
            mean_activity=torch.zeros(scan.n_neurons) if cfg.bias else None,
        )

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """x (B, C, H, W) core features -> (B, n) (pre-link), the same in training and eval mode. ``shift`` must
        be None."""
        if shift is not None:
            raise ValueError("the factorized readout takes no shift (model.shifter.enabled must be false)")
        return super().forward(x)
