"""neuralpredictors 0.3.0 imports through our compatibility layer on this Python."""

from __future__ import annotations


def test_neuralpredictors_parts_import_through_compat():
    import sensorium.compat  # noqa: F401  (must come first)
    from neuralpredictors.data.datasets import FileTreeDataset
    from neuralpredictors.data.transforms import NeuroNormalizer
    from neuralpredictors.layers.cores import Stacked2dCore
    from neuralpredictors.layers.readouts import FullGaussian2d
    from neuralpredictors.layers.shifters import MLPShifter

    for obj in (FileTreeDataset, NeuroNormalizer, Stacked2dCore, FullGaussian2d, MLPShifter):
        assert callable(obj)
    core = Stacked2dCore(input_channels=1, hidden_channels=4, input_kern=3, hidden_kern=3, layers=2)
    assert core.outchannels == 8
