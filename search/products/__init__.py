"""What a search gives: best_config.yaml (``export``), the seed ensemble (``retrain``), the trial ensemble
(``ensemble``), their scores (``scoring``), the report (``report``) and the demo that runs them all (``demo``).
Imports ``spec``, ``store`` and ``raytune`` (retrain's seeds are Ray tasks; the demo runs a search); ``export``,
``report`` and ``scoring`` need no Ray."""
