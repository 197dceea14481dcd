"""search: the system around ``sensorium.training.fit`` -- Ray Tune + Optuna trials, export, retrain, report.

Five layers; a module imports only from its own layer and the ones before it (``tests/test_search_layers.py``
checks the order and that no two modules import each other, directly or around a loop):

- ``spec``      the search file: space, settings, gpus_per_trial auto. Plain Python on sensorium; no Ray, no Optuna.
- ``store``     a run folder read back: trial records, the result keys, the Optuna study (journal), warm start.
                Optuna, no Ray (``results.load_trials`` alone imports Ray, when called, to read Tune's state).
- ``raytune``   the Ray adapter: trainable, Tuner and searcher, callbacks, driver, pre-flight checks, data caches.
- ``products``  what a search gives: export, retrain, the trial ensemble, scoring, the report, the demo.
- ``cli``       one module per command (``add_arguments`` + ``run``), dispatched by ``sensorium.cli``.
"""
