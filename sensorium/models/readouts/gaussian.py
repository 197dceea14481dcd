"""The ``gaussian`` readout: per scan, a Gaussian readout with K position samples (SENSORIUM.md §2, "readout
samples"); the baseline's.

neuralpredictors' ``FullGaussian2d`` learns, for every neuron, a 2-D Gaussian N(mu, Sigma) over positions of
the core's feature map. In training mode it draws ONE position per image and neuron, bilinearly samples the
feature map there and takes a dot product with the neuron's feature weights; in eval mode it reads at mu.

:class:`KSampleGaussian2d` draws K >= 1 positions per image and neuron in training mode and averages the K
readouts (the readout is linear in the sampled feature vector, so it averages the K sampled vectors and
applies the feature weights once). With K = 1 it makes exactly the draw ``FullGaussian2d``
makes, so with the same RNG state both give the same outputs up to float rounding (the feature weights are
contracted over channels without the library's (B, C, n) product tensor). In eval mode it reads at mu whatever K is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.layers.readouts import FullGaussian2d

from sensorium.errors import ConfigError
from sensorium.models.component import ReadoutBase, ReadoutConfigBase, ScanMeta
from sensorium.typed import non_negative, positive


@dataclass(frozen=True)
class GaussianReadoutConfig(ReadoutConfigBase):
    """Per-scan Gaussian readout with K position samples (the baseline's); the shifter's shift moves it."""

    kind: Literal["gaussian"] = "gaussian"
    samples: int = 1  # K positions drawn per neuron and image in training mode, readouts averaged
    gauss_type: Literal["full", "uncorrelated", "isotropic"] = "full"
    init_sigma: float = 0.1
    init_mu_range: float = 0.3
    gamma_readout: float = 0.0076  # L1 penalty on readout features
    bias: bool = True
    grid_mean_predictor: bool = True  # predict positions from cortical x, y (type "cortex")
    gmp_hidden_layers: int = 1
    gmp_hidden_features: int = 30

    def __post_init__(self) -> None:
        positive(self, "model.readout", "samples", "gmp_hidden_features", "init_sigma")
        if not 0.0 < self.init_mu_range <= 1.0:
            raise ConfigError(f"model.readout.init_mu_range={self.init_mu_range}: expected 0 < value <= 1")
        non_negative(self, "model.readout", "gamma_readout", "gmp_hidden_layers")

    def unread(self) -> dict[str, str]:
        if self.grid_mean_predictor:
            return {"init_mu_range": "grid_mean_predictor"}
        return {"gmp_hidden_layers": "grid_mean_predictor", "gmp_hidden_features": "grid_mean_predictor"}


class KSampleGaussian2d(FullGaussian2d, ReadoutBase):
    """Gaussian readout of one scan's neurons from a core feature map, averaging K sampled positions.

    Args:
        cfg: its config; ``samples`` is K, positions drawn per image and neuron in training mode;
            ``gauss_type`` ``full`` (Sigma = L L^T with a learned 2x2 L per neuron), ``uncorrelated``
            (diagonal) or ``isotropic`` (one sigma per neuron); ``init_sigma`` the initial sigma (``full``: L
            entries drawn uniformly from [-init_sigma, init_sigma]); ``init_mu_range``: initial positions
            uniform in [-init_mu_range, init_mu_range] (free grid only); ``gamma_readout`` the weight of the L1
            penalty on the feature weights (:meth:`regularizer`); ``bias``: one bias per neuron, starting at 0;
            ``grid_mean_predictor``: mu predicted from the neurons' cortical x, y by an MLP (centred, divided
            by max |value|, Linear(2,h)-ELU-...-Linear(h,2)-Tanh of ``gmp_hidden_layers`` hidden layers of
            ``gmp_hidden_features``) instead of learned freely per neuron.
        in_shape: core output shape (C, H, W).
        scan: the scan's neuron count n and cortical coordinates (n, 3).

    Positions live in the [-1, 1] coordinates of ``F.grid_sample`` (align_corners=True), as in the
    reference. ``generator``: an optional ``torch.Generator`` for the position draws (None: torch's global
    RNG, which is what ``FullGaussian2d`` uses); the training loop sets one so a resumed run draws the same.
    """

    Config = GaussianReadoutConfig

    def __init__(self, cfg: GaussianReadoutConfig, in_shape: tuple[int, int, int], scan: ScanMeta) -> None:
        outdims = scan.n_neurons
        source_grid, predictor = None, None
        if cfg.grid_mean_predictor:
            source_grid = np.asarray(scan.cell_motor_coordinates, dtype=np.float32)[:, :2]  # cortical x, y
            predictor = {
                "hidden_layers": cfg.gmp_hidden_layers,
                "hidden_features": cfg.gmp_hidden_features,
                "final_tanh": True,
            }
        super().__init__(
            in_shape=tuple(in_shape),
            outdims=outdims,
            bias=cfg.bias,
            init_mu_range=cfg.init_mu_range,
            init_sigma=cfg.init_sigma,
            gauss_type=cfg.gauss_type,
            grid_mean_predictor=predictor,
            source_grid=source_grid,
            # zeros, not None: same start (bias 0) without the library's "not initialised" warning
            mean_activity=torch.zeros(outdims) if cfg.bias else None,
            feature_reg_weight=cfg.gamma_readout,
        )
        self.samples = cfg.samples
        self.generator: torch.Generator | None = None

    def sample_grid(self, batch_size: int, sample: bool | None = None) -> torch.Tensor:
        """Readout positions, (B, n, K, 2) when sampling (training mode by default), else (B, n, 1, 2) at mu.

        Both cases are clamped to [-1, 1] like ``FullGaussian2d``; with K = 1 the draw is the library's.
        """
        if not self._predicted_grid:
            with torch.no_grad():  # as the reference: a free mu is kept inside the feature map
                self._mu.clamp_(min=-1, max=1)
        mu = self.mu  # (1, n, 1, 2); with a grid predictor this runs the MLP once (tanh: already in range)
        sample = self.training if sample is None else sample
        k = self.samples if sample else 1
        shape = (batch_size, self.outdims, k, 2)
        norm = torch.zeros(shape, dtype=mu.dtype, device=mu.device)
        if sample:
            norm.normal_(generator=self.generator)
        if self.gauss_type == "full":
            offset = torch.einsum("ancd,bnid->bnic", self.sigma, norm)  # (B, n, K, 2) = L @ z
        else:
            offset = norm * self.sigma
        # einsum leaves the batch dimension innermost in memory; grid_sample on CPU is ~9x slower on such a
        # grid than on a contiguous one (same values either way)
        return torch.clamp(offset + mu, min=-1, max=1).contiguous()

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, sample: bool | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Read out every neuron: x (B, C, H, W) core features, shift (B, 2) or None -> (B, n) (pre-nonlinearity).

        ``sample`` None follows the module mode (training: K random positions, averaged; eval: mu);
        True/False forces it. ``shift`` (from the shifter) moves all positions of a trial together.
        """
        batch, channels = x.shape[:2]
        if channels != self.in_shape[0]:
            raise ValueError(f"readout expects {self.in_shape[0]} feature channels, got {channels}")
        grid = self.sample_grid(batch_size=batch, sample=sample)  # (B, n, K, 2)
        if shift is not None:
            grid = grid + shift[:, None, None, :]
        # average the K sampled feature vectors, one position sample at a time: autograd keeps no
        # (B, C, n, K) tensor, so K > 1 costs K times the compute of K = 1 but not K times the memory
        k = grid.shape[2]
        y = F.grid_sample(x, grid[:, :, :1], align_corners=self.align_corners)  # (B, C, n, 1)
        for i in range(1, k):
            y = y + F.grid_sample(x, grid[:, :, i : i + 1], align_corners=self.align_corners)
        y = y.squeeze(-1)  # (B, C, n)
        if k > 1:
            y = y / k
        # a contraction over C, not (y * feat).sum(1): no second (B, C, n) tensor, which at 8,000 neurons and a
        # 1,024-trial evaluation chunk would be 2 GB (results/bench_scale.md)
        y = torch.einsum("bcn,cn->bn", y, self.features.view(channels, self.outdims))  # (B, n)
        if self.bias is not None:
            y = y + self.bias
        return y
