"""The reference recipe (``train.recipe.kind: reference``, SENSORIUM.md §3; neuralpredictors' ``early_stopping``).

Adam at ``train.lr``; after each epoch ReduceLROnPlateau on the validation correlation (mode max, ``lr_decay_factor``,
``patience``, absolute threshold ``tolerance``, floor ``min_lr``) and early stopping with ``lr_decay_steps``
lr-decay rounds (:class:`~sensorium.training.early_stopping.EarlyStopper`): a round ends after ``patience``
epochs without improvement, the best weights are restored then (by ``fit``) and the last round ends the run.
With ``train.train_on_validation`` validation steers nothing: constant lr, exactly ``train.max_epochs`` epochs.
"""

from __future__ import annotations

from typing import Any

import torch

from sensorium.config import ReferenceRecipeConfig, TrainConfig
from sensorium.models import SensoriumModel
from sensorium.training.early_stopping import Step
from sensorium.training.recipes.base import Recipe, stopper_for


class ReferenceRecipe(Recipe):
    """Adam + ReduceLROnPlateau + early stopping with lr-decay rounds; every parameter group decays alike."""

    def __init__(self, train: TrainConfig, model: SensoriumModel, steps_per_epoch: int) -> None:
        """``steps_per_epoch`` is not used: the lr changes only between epochs, on validation."""
        r: ReferenceRecipeConfig = train.recipe  # type: ignore[assignment]
        groups = model.param_groups(train.lr)
        super().__init__(torch.optim.Adam(groups, lr=train.lr), stopper_for(train, r.patience, r.lr_decay_steps,
                                                                             r.tolerance))
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(  # groups floored in proportion to their lr
            self.optimizer, mode="max", factor=r.lr_decay_factor, patience=r.patience,
            threshold=r.tolerance, threshold_mode="abs", min_lr=[r.min_lr * g["lr"] / train.lr for g in groups],
        )
        self.steered = not train.train_on_validation

    def end_epoch(self, val_corr: float) -> Step:
        if self.steered:
            self.scheduler.step(val_corr)
        return self.stopper.step(val_corr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
