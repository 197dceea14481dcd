"""The search file as data: searched parameters (``space``), settings (``settings``) and ``gpus_per_trial: auto``
(``gpu_share``). Imports sensorium only: no Ray, no Optuna, nothing else of ``search``."""
