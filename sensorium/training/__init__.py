"""Training: ``fit``, its recipes (``train.recipe``: reference, modern), early stopping, checkpoints and the run
directory."""

from sensorium.training.checkpoint import load_model
from sensorium.training.early_stopping import EarlyStopper, Step
from sensorium.training.fit import FitResult, ReportFn, fit

__all__ = ["EarlyStopper", "FitResult", "ReportFn", "Step", "fit", "load_model"]
