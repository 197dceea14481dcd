"""What ``fit`` asks of a training recipe, whatever the recipe (the interface of the ``train.recipe`` family).

Per epoch ``fit`` logs :attr:`Recipe.lr`, calls :meth:`Recipe.step` once per optimiser step (after the
gradients of one batch of every scan are accumulated), then validates inside :meth:`Recipe.evaluated` and hands
the score to :meth:`Recipe.end_epoch`, whose :class:`Step` says whether these are the best weights and whether
to go on. :meth:`Recipe.state_dict` is what last.pt holds of the recipe, so that a resumed run continues exactly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sensorium.config import TrainConfig
from sensorium.training.checkpoint import to_cpu
from sensorium.training.early_stopping import EarlyStopper, Step


class Recipe(ABC):
    """The optimiser and the early stopper of one run; subclasses add their schedules (one per family)."""

    def __init__(self, optimizer: torch.optim.Optimizer, stopper: EarlyStopper) -> None:
        self.optimizer = optimizer
        self.stopper = stopper

    @property
    def lr(self) -> float:
        """The learning rate the next step uses in the first parameter group (``train.lr``'s group)."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        """One optimiser step on the gradients accumulated since the last one; the gradients are then zeroed."""
        self.optimizer.step()
        self.optimizer.zero_grad()

    @contextmanager
    def evaluated(self) -> Iterator[None]:
        """Inside it, the model holds the weights that are validated, saved as best.pt and returned by ``fit``;
        here the trained weights themselves."""
        yield

    @abstractmethod
    def end_epoch(self, val_corr: float) -> Step:
        """Feed the epoch's validation score (mean single-trial correlation); returns the stopper's Step."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data and CPU tensors: everything a resumed run needs to continue exactly."""
        return {"optimizer": to_cpu(self.optimizer.state_dict()), "stopper": self.stopper.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.stopper.load_state_dict(state["stopper"])


def stopper_for(train: TrainConfig, patience: int, decay_rounds: int, tolerance: float) -> EarlyStopper:
    """The recipe's early stopper, capped at ``train.max_epochs``; with ``train.train_on_validation`` one that
    only counts epochs.

    Validation is training data then, so it cannot steer anything: no early stopping, exactly max_epochs are
    trained (retrain sets it to the search's best epoch) and the last weights kept (a tolerance of -inf makes
    every finite epoch an "improvement").
    """
    if train.train_on_validation:
        return EarlyStopper(train.max_epochs + 1, 1, -math.inf, train.max_epochs)
    return EarlyStopper(patience, decay_rounds, tolerance, train.max_epochs)
