"""sensorium: the science of SENSORIUM+ models, usable without Ray.

scan -> cache -> batches -> model -> fit -> metrics -> submission
"""

__version__ = "0.1.0"
