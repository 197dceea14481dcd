"""The ``softplus`` link: rate = softplus(x; beta) = log(1 + exp(beta x)) / beta, with beta fixed or learned."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sensorium.models.component import ComponentConfig, LinkBase
from sensorium.typed import positive


@dataclass(frozen=True)
class SoftplusLinkConfig(ComponentConfig):
    """``log(1 + exp(beta x)) / beta``: smooth, > 0, about x for large x and exp(beta x) / beta for x << 0.

    ``beta`` defaults to 1, not the 0.07 of the SENSORIUM 2023 winner: our responses are normalised per neuron
    (about 1 on average), and at beta 0.07 the rate at x = 0 is log(2) / 0.07 ~ 9.9 with a slope of 1/2 there,
    so the readout (bias 0 at the start) would first have to learn a bias near -30 to reach rates near 1. At
    beta 1 the untrained model starts near rate log(2) ~ 0.69, like the elu1 link's 1. ``learn_beta``: beta
    is a trained parameter, kept positive as exp(log beta), starting at ``beta``.
    """

    kind: Literal["softplus"] = "softplus"
    beta: float = 1.0
    learn_beta: bool = False

    def __post_init__(self) -> None:
        positive(self, "model.link", "beta")


class SoftplusLink(LinkBase):
    """x (B, n) -> softplus(beta x) / beta (B, n) > 0. With ``learn_beta`` its one parameter is ``log_beta``
    (a scalar shared by all scans and neurons); else no parameters."""

    Config = SoftplusLinkConfig

    def __init__(self, cfg: SoftplusLinkConfig) -> None:
        super().__init__()
        log_beta = torch.tensor(math.log(cfg.beta))
        if cfg.learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta, persistent=False)  # a function of the config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.log_beta.exp().to(x.dtype)
        return F.softplus(beta * x) / beta  # softplus switches to beta * x itself above 20 (no overflow)
