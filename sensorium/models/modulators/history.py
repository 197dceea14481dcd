"""The ``history`` modulator: a positive gain per neuron and trial from the session's recent past.

What the winning SENSORIUM+ entry added to the baseline, as one model part that multiplies the baseline's
predicted rate (``rate * gain``). Its inputs (:class:`sensorium.data.History`, built by the data layer from
trials *earlier in the session* only) are:

- ``responses`` (B, H, n): the neuron's own normalised responses on the H previous trials of the session, minus
  its mean response, zero where ``mask`` (B, H) is 0: before the session's first trial, and on test-tier trials,
  whose responses the competition files withhold (masked in every scan, so training sees what inference sees);
- ``behavior`` (B, 5) and ``behavior_mask`` (B,): the previous trial's normalised behaviour (pupil dilation,
  its derivative, running) and pupil centre, minus their means over the scan; the files hold them for every
  trial, test trials included;
- ``time`` (B,): the trial's onset in the session (``frame_trial_ts``), 0 at the first trial, 1 at the last.

Per scan and neuron n::

    log gain = sum_j w_hist[n, j] * responses[:, j, n]           (per-neuron filters over the last H trials)
             + load[n] . tanh(W_state @ behavior_prev)           (a state_dim-dimensional behavioural state)
             + sum_k w_time[n, k] * (b_k(time) - mean b_k),      (a smooth gain over the session)
      b_k(t) = exp(-(t - c_k)^2 / (2 width^2)),  mean b_k its mean over the session's span 0-1

Every input is centred, so each term averages to about 0 over the session: the gain moves the rate around its
mean and leaves the mean to the readout's bias. Every weight starts at 0, so an untrained modulator is the
identity (gain 1) and the model starts as the baseline. Its penalty is ``gamma`` times the squared weights
(summed). Its weights train at ``lr_scale`` times the model's learning rate: Adam moves every weight by about
the same step whatever its gradient's size, so where a term has nothing to find (no history effects in the
data) its weights drift as a random walk whose size is proportional to their learning rate, and that drift is
noise in every prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sensorium.errors import ConfigError
from sensorium.models.component import ComponentConfig, ModulatorBase, ScanMeta
from sensorium.typed import non_negative, positive

N_BEHAVIOR = 5  # the previous trial's behaviour (3) and pupil centre (2)
TIME_GRID = 1001  # points of the uniform session grid over which each time bump's mean is taken


@dataclass(frozen=True)
class HistoryModulatorConfig(ComponentConfig):
    """A gain per neuron and trial from the session's past: filters over the neuron's own responses on the last
    ``history_length`` trials, a ``state_dim``-dimensional behavioural state of the previous trial, and a smooth
    gain over the session (Gaussian bumps ``time_kernel_width`` apart, in session units 0-1); 0 switches a term
    off. ``gamma``: L2 penalty on its weights. ``lr_scale``: its weights' learning rate as a multiple of
    ``train.lr`` (their own Adam parameter group)."""

    kind: Literal["history"] = "history"
    history_length: int = 5
    state_dim: int = 2
    time_kernel_width: float = 0.1
    gamma: float = 1e-3
    lr_scale: float = 0.1

    def __post_init__(self) -> None:
        positive(self, "model.modulator", "history_length", "lr_scale")
        non_negative(self, "model.modulator", "state_dim", "time_kernel_width", "gamma")
        if self.time_kernel_width > 1:
            raise ConfigError(f"model.modulator.time_kernel_width={self.time_kernel_width}: expected a width in "
                              "session units, 0 (off) to 1")


class HistoryModulator(ModulatorBase):
    """The gain of one scan's n neurons; see the module docstring. Built from its config (``history_length`` H,
    previous trials whose responses each neuron's filter reads; ``state_dim``, the dimension of the behavioural
    state of the previous trial, 0: no state term; ``time_kernel_width``, the width of the Gaussian bumps over
    the session's time in session units 0-1, their centres one width apart from 0 to 1, 0: no time term;
    ``gamma``, the weight of the L2 penalty on all weights; ``lr_scale``, the learning rate of its weights as a
    multiple of the model's) and the scan's metadata (n)."""

    Config = HistoryModulatorConfig
    reads = ("history",)

    def __init__(self, cfg: HistoryModulatorConfig, scan: ScanMeta) -> None:
        super().__init__()
        n_neurons, history_length, state_dim = scan.n_neurons, cfg.history_length, cfg.state_dim
        time_kernel_width = cfg.time_kernel_width
        self.history_length = history_length
        self.gamma = cfg.gamma
        self.lr_scale = cfg.lr_scale
        self.history = nn.Parameter(torch.zeros(n_neurons, history_length))  # (n, H)
        self.state = nn.Linear(N_BEHAVIOR, state_dim, bias=False) if state_dim else None
        if self.state is not None:
            nn.init.normal_(self.state.weight, 0.0, 1.0 / math.sqrt(N_BEHAVIOR))  # a random projection to start
        self.loadings = nn.Parameter(torch.zeros(n_neurons, state_dim))  # (n, state_dim)
        n_bumps = int(math.floor(1.0 / time_kernel_width)) + 1 if time_kernel_width > 0 else 0
        self.register_buffer("centres", torch.linspace(0.0, 1.0, n_bumps) if n_bumps > 1 else torch.zeros(n_bumps))
        self.width = time_kernel_width
        grid = torch.linspace(0.0, 1.0, TIME_GRID)
        self.register_buffer("bump_means", self._bumps(grid).mean(0) if n_bumps else torch.zeros(0),
                             persistent=False)  # (K,), a function of the config: not in the state dict
        self.time = nn.Parameter(torch.zeros(n_neurons, n_bumps))  # (n, K)

    def forward(self, rate: torch.Tensor, history: Any) -> torch.Tensor:
        """rate (B, n) > 0 and ``history`` (:class:`sensorium.data.History` of the B trials) -> rate * gain."""
        return rate * self.gain(history)

    def gain(self, history: Any) -> torch.Tensor:
        """``history`` (:class:`sensorium.data.History` of B trials) -> gain (B, n) > 0."""
        responses = history.responses[:, : self.history_length]  # (B, H, n), zero where masked
        log_gain = torch.einsum("bhn,nh->bn", responses, self.history)
        if self.state is not None:
            state = torch.tanh(self.state(history.behavior)) * history.behavior_mask[:, None]  # (B, state_dim)
            log_gain = log_gain + state @ self.loadings.T
        if self.time.shape[1]:
            log_gain = log_gain + (self._bumps(history.time) - self.bump_means) @ self.time.T
        return torch.exp(log_gain)

    def _bumps(self, time: torch.Tensor) -> torch.Tensor:
        """(T,) session times -> (T, K) Gaussian bumps."""
        return torch.exp(-((time[:, None] - self.centres) ** 2) / (2 * self.width**2))

    def regularizer(self) -> torch.Tensor:
        """gamma * the summed squared weights (filters, state loadings, time weights)."""
        return self.gamma * (self.history.square().sum() + self.loadings.square().sum() + self.time.square().sum())
