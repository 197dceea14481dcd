"""The Ray Tune adapter: the trainable, the Tuner with its searcher, scheduler and stopper, the callbacks (live table,
TensorBoard HParams), the driver (run, resume, Ctrl-C), pre-flight checks and the data caches. Imports ``spec``,
``store``, sensorium, Ray and Optuna. (Named so that it does not shadow the ``ray`` package.)"""
