"""Training recipes (``train.recipe``): one module per family, each built from its own config
(sensorium.config), registered here by its ``kind``.

    >>> recipe = build_recipe(cfg.train, model, steps_per_epoch=35)  # doctest: +SKIP
    >>> recipe.optimizer, recipe.stopper                              # doctest: +SKIP
"""

from __future__ import annotations

from sensorium.config import TrainConfig
from sensorium.models import SensoriumModel
from sensorium.training.recipes.base import Recipe
from sensorium.training.recipes.modern import ModernRecipe
from sensorium.training.recipes.reference import ReferenceRecipe

RECIPES: dict[str, type[Recipe]] = {"reference": ReferenceRecipe, "modern": ModernRecipe}


def build_recipe(train: TrainConfig, model: SensoriumModel, steps_per_epoch: int) -> Recipe:
    """The recipe ``train.recipe.kind`` names, for ``model`` (its trainable parameters, on their device);
    ``steps_per_epoch``: optimiser steps per epoch (a per-step schedule's unit)."""
    return RECIPES[train.recipe.kind](train, model, steps_per_epoch)


__all__ = ["RECIPES", "Recipe", "build_recipe"]
