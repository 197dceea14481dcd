"""A search's run folder read back: the keys a trial reports (``schema``), one record per trial (``results``), the
Optuna study in its journal (``study``) and a warm start from an earlier run (``warm_start``). Imports ``spec``,
sensorium and Optuna; never Ray at import time."""
