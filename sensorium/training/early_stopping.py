"""Early stopping with lr-decay rounds and restore-best (neuralpredictors ``early_stopping`` semantics).

Fed one validation score per epoch (higher is better), it says whether the score improved on the best so
far and what the loop must do next:

- ``continue``: train another epoch;
- ``decay``: ``patience`` epochs in a row without an improvement larger than ``tolerance``: restore the best
  weights and start the next round (the ReduceLROnPlateau scheduler lowers the lr on its own count);
- ``stop``: the last of ``decay_rounds`` rounds ran out of patience, ``max_epochs`` is reached, or the score
  is not finite: restore the best weights and finish.

As in the reference, the score of the untrained model (:meth:`start`, epoch 0) is the first "best".

Example::

    >>> stopper = EarlyStopper(patience=2, decay_rounds=2, tolerance=0.0, max_epochs=100)
    >>> stopper.start(0.0)
    >>> [stopper.step(s).action for s in [0.1, 0.1, 0.1, 0.2, 0.1, 0.1]]
    ['continue', 'continue', 'decay', 'continue', 'continue', 'stop']
    >>> stopper.best_epoch, stopper.best_score
    (4, 0.2)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["continue", "decay", "stop"]


@dataclass(frozen=True)
class Step:
    """Outcome of one epoch: ``improved`` (save these weights as the best) and the ``action`` to take."""

    epoch: int
    improved: bool
    action: Action


@dataclass
class EarlyStopper:
    """Patience counter over ``decay_rounds`` rounds, with a hard cap of ``max_epochs`` epochs (1-based)."""

    patience: int
    decay_rounds: int
    tolerance: float
    max_epochs: int
    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    rounds_done: int = 0
    done: bool = False

    def start(self, score: float) -> None:
        """Record the score of the initial weights (epoch 0) as the best so far."""
        self.best_score = score if math.isfinite(score) else -math.inf
        self.best_epoch = 0

    def step(self, score: float) -> Step:
        """Feed the validation score of the epoch just trained; returns what to do next."""
        if self.done:
            raise RuntimeError("EarlyStopper.step called after it said stop")
        self.epoch += 1
        finite = math.isfinite(score)
        improved = finite and score > self.best_score + self.tolerance
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
        else:
            self.bad_epochs += 1
        action: Action = "continue"
        if self.bad_epochs >= self.patience:
            self.rounds_done += 1
            self.bad_epochs = 0
            action = "stop" if self.rounds_done >= self.decay_rounds else "decay"
        if not finite or self.epoch >= self.max_epochs:
            action = "stop"
        self.done = action == "stop"
        return Step(self.epoch, improved, action)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for a checkpoint."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
