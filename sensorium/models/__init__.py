"""The SENSORIUM+ model: shared core, per-scan K-sample Gaussian readouts and pupil-centre shifters."""

from sensorium.models.builder import ScanMeta, build_core, build_model, scan_meta
from sensorium.models.model import Core, SensoriumModel
from sensorium.models.readout import KSampleGaussian2d

__all__ = ["Core", "KSampleGaussian2d", "ScanMeta", "SensoriumModel", "build_core", "build_model", "scan_meta"]
