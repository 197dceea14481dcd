"""search: the system around ``sensorium.training.fit`` -- Ray Tune + Optuna trials, export, retrain, report."""
