"""The modern recipe (``train.recipe.kind: modern``): AdamW, warm-up + cosine schedule, a weight average (EMA),
gradient clipping, early stopping on patience alone.

- **AdamW** at peak lr ``train.lr`` with decoupled ``weight_decay`` on the weights of the Linear and Conv layers
  (core convolutions, the readout's position MLP, shifter and modulator layers) and on nothing else: biases set
  offsets (a neuron's baseline rate) and batch-norm scales and shifts are followed by a rescaling anyway, so
  shrinking them regularises nothing and only drags the rates and the normalisation towards 0; the readout's
  positions, covariances and features and the modulator's filters are coordinates or carry penalties of their
  own (``gamma_readout``, ``model.modulator.gamma``). Groups keep ``model.param_groups``' learning rates.
- **Schedule**, stepped per optimiser step so that a warm-up of one or two epochs still rises smoothly: the lr
  multiplier of step s (0-based) is (s + 1) / W during the W = ``warmup_epochs`` * steps-per-epoch warm-up steps,
  then a cosine from 1 down to ``final_lr_fraction`` at T = ``train.max_epochs`` * steps-per-epoch
  (:func:`warmup_cosine`). The schedule's length is part of the config, not of how long a run happens to last.
- **EMA** of the parameters after every step, at decay min(``ema_decay``, (1 + n) / (10 + n)) after n earlier
  updates (TensorFlow's ``num_updates`` warm-up: the average forgets the random initial weights within the first
  hundred steps instead of the ~1/(1 - ema_decay) steps, so that early epochs, and ASHA's first rungs, compare
  trained models). The average is what is validated, saved as best.pt and returned; the raw weights keep training.
  Buffers are not averaged: the batch-norm running statistics evaluated with the average are the raw model's,
  the statistics of the activations the network actually sees in training. ``ema_decay: 0``: no average.
- **Clipping**: the gradients' global L2 norm (all parameters together) is clipped to ``clip_norm`` before each
  step (0 = off).
- **Early stopping**: no lr-decay rounds (the cosine schedule, not validation, lowers the lr): the run stops
  after ``patience`` epochs without improvement (0 = never: the whole schedule is trained) or at
  ``train.max_epochs``, and ``fit`` keeps the best epoch's averaged weights.

ASHA: a trial stopped at a rung of r epochs has run the first r epochs of a schedule of ``train.max_epochs``
epochs, as has every trial it is compared with there (all share the schedule's length, which is not searched), so
rungs still compare like with like: all trials mid-schedule at the same point. A search never shortens the
schedule to ``search.asha.max_t`` (it only requires max_t <= train.max_epochs): with max_t below
train.max_epochs the trials stop before the low-lr tail; set ``train.max_epochs`` to max_t in the search file's
overrides for a schedule that ends where the trials do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sensorium.config import ModernRecipeConfig, TrainConfig
from sensorium.models import SensoriumModel
from sensorium.training.early_stopping import Step
from sensorium.training.recipes.base import Recipe, stopper_for

DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # whose ``weight`` takes weight decay


def warmup_cosine(step: int, total: int, warmup: int, final: float) -> float:
    """The lr multiplier of optimiser step ``step`` (0-based) of a ``total``-step schedule: (step + 1) / warmup
    for the first ``warmup`` steps, then a cosine from 1 (at step ``warmup``) to ``final`` (at step ``total``).

    >>> [round(warmup_cosine(s, total=6, warmup=2, final=0.0), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_groups(model: SensoriumModel, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """``model.param_groups(lr)``, each split into the weights of its Linear/Conv layers (``weight_decay``) and
    its other parameters (no decay), in that order; empty parts are left out."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, DECAYED_LAYERS)}
    groups = []
    for group in model.param_groups(lr):
        for wd, params in ((weight_decay, [p for p in group["params"] if id(p) in decayed]),
                           (0.0, [p for p in group["params"] if id(p) not in decayed])):
            if params:
                groups.append({**group, "params": params, "weight_decay": wd})
    return groups


class WeightAverage:
    """Exponential moving average of a list of parameters (see the module docstring for its decay)."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.values = [p.detach().clone() for p in params]  # same shapes, devices and memory formats

    @torch.no_grad()
    def update(self, params: list[nn.Parameter]) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.values, params):
            avg.lerp_(p, 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"values": [v.detach().cpu() for v in self.values], "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for avg, saved in zip(self.values, state["values"]):
            avg.copy_(saved)
        self.updates = state["updates"]


class ModernRecipe(Recipe):
    """AdamW + per-step warm-up/cosine lr + EMA weights + gradient clipping + patience-only early stopping."""

    def __init__(self, train: TrainConfig, model: SensoriumModel, steps_per_epoch: int) -> None:
        """``steps_per_epoch``: optimiser steps in one epoch (the schedule's unit)."""
        r: ModernRecipeConfig = train.recipe  # type: ignore[assignment]
        optimizer = torch.optim.AdamW(decay_groups(model, train.lr, r.weight_decay), lr=train.lr)
        super().__init__(optimizer, stopper_for(train, r.patience or train.max_epochs + 1, 1, 0.0))
        total, warmup = train.max_epochs * steps_per_epoch, r.warmup_epochs * steps_per_epoch

        def multiplier(step: int) -> float:
            return warmup_cosine(step, total, warmup, r.final_lr_fraction)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)  # sets step 0's lr now
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip_norm = r.clip_norm
        self.average = WeightAverage(self.params, r.ema_decay) if r.ema_decay > 0 else None

    def step(self) -> None:
        if self.clip_norm > 0:
            nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        super().step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update(self.params)

    @contextmanager
    def evaluated(self) -> Iterator[None]:
        """Inside it, the model's parameters are the average's (its buffers stay the raw model's)."""
        if self.average is None:
            yield
            return
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.average.values):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, raw in zip(self.params, trained):
                    p.copy_(raw)

    def end_epoch(self, val_corr: float) -> Step:
        return self.stopper.step(val_corr)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
