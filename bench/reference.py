"""The official SENSORIUM+ pipeline rebuilt from the field's own parts, for the benchmarks to compare against.

``ReferenceModel``: the SENSORIUM+ baseline from neuralpredictors classes (Stacked2dCore, FullGaussian2d
with the cortex grid-mean predictor, MLPShifter, elu + 1), default memory layout, 4-channel inputs.
``reference_loaders``: the official ``static_loader`` chain (FileTreeDataset, NeuroNormalizer,
AddBehaviorAsChannels, ScaleInputs, Subsample, ToTensor) with torch DataLoaders.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler

import sensorium.compat  # noqa: F401  (must precede neuralpredictors)
from neuralpredictors.data.datasets import FileTreeDataset
from neuralpredictors.data.samplers import SubsetSequentialSampler
from neuralpredictors.data.transforms import AddBehaviorAsChannels, NeuroNormalizer, ScaleInputs, Subsample, ToTensor
from neuralpredictors.layers.cores import Stacked2dCore
from neuralpredictors.layers.readouts import FullGaussian2d
from neuralpredictors.layers.shifters import MLPShifter

SCALE = 0.25  # official 144x256 images -> 36x64 model input
IN_SHAPE = (4, 36, 64)


class ReferenceModel(nn.Module):
    """The SENSORIUM+ baseline from neuralpredictors parts (SENSORIUM.md §2), readout and shifter per scan."""

    def __init__(self, key: str, coords: np.ndarray) -> None:
        super().__init__()
        with warnings.catch_warnings():  # per-build notes: averaged Laplace penalty, readout bias starts at 0
            warnings.filterwarnings("ignore", message="The averaged value of regularizer will be used")
            warnings.filterwarnings("ignore", message="Readout is NOT initialized with mean activity")
            self.core = Stacked2dCore(
                input_channels=IN_SHAPE[0], hidden_channels=64, input_kern=9, hidden_kern=7, layers=4,
                gamma_input=6.3831, gamma_hidden=0.0, bias=False, momentum=0.9, pad_input=False, batch_norm=True,
                laplace_padding=None, input_regularizer="LaplaceL2norm", stack=-1, depth_separable=True,
            )
            self.core.eval()
            with torch.no_grad():
                feature_shape = tuple(self.core(torch.zeros(1, *IN_SHAPE)).shape[1:])
            self.readout = nn.ModuleDict({key: FullGaussian2d(
                feature_shape, len(coords), bias=True, init_mu_range=0.3, init_sigma=0.1, gauss_type="full",
                grid_mean_predictor={"hidden_layers": 1, "hidden_features": 30, "final_tanh": True},
                source_grid=coords[:, :2], feature_reg_weight=0.0076,
            )})
        self.shifter = MLPShifter([key], input_channels=2, hidden_channels_shifter=5, shift_layers=3)
        self.train()

    def forward(self, images: torch.Tensor, key: str, pupil_center: torch.Tensor) -> torch.Tensor:
        shift = self.shifter[key](pupil_center)
        return F.elu(self.readout[key](self.core(images), shift=shift)) + 1


def reference_loaders(folder: Path, batch_size: int) -> tuple[FileTreeDataset, DataLoader, DataLoader]:
    """The official ``static_loader`` chain for a SENSORIUM+ scan stored at 144x256."""
    dat = FileTreeDataset(str(folder), "images", "responses", "behavior", "pupil_center")
    neurons = np.arange(len(dat.neurons.unit_ids))  # all neurons (no area / layer selection)
    dat.transforms.extend([NeuroNormalizer(dat), AddBehaviorAsChannels(), ScaleInputs(scale=SCALE),
                           Subsample(neurons), ToTensor(cuda=False)])
    tiers = dat.trial_info.tiers
    train = DataLoader(dat, sampler=SubsetRandomSampler(np.where(tiers == "train")[0]), batch_size=batch_size)
    val = DataLoader(dat, sampler=SubsetSequentialSampler(np.where(tiers == "validation")[0]), batch_size=batch_size)
    return dat, train, val
