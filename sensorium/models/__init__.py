"""The SENSORIUM+ model: shared core, per-scan readouts, shifters and modulators, an output link; each part a
family of its component kind (:mod:`sensorium.models.component`, :mod:`sensorium.models.registry`)."""

from sensorium.models.builder import build_core, build_model, scan_meta
from sensorium.models.component import ScanMeta
from sensorium.models.cores.stacked2d import Core
from sensorium.models.model import SensoriumModel
from sensorium.models.readouts.gaussian import KSampleGaussian2d

__all__ = ["Core", "KSampleGaussian2d", "ScanMeta", "SensoriumModel", "build_core", "build_model", "scan_meta"]
