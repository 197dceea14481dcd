"""The K-sample Gaussian readout against neuralpredictors' FullGaussian2d, and every model variant's shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sensorium.compat  # noqa: F401
from neuralpredictors.layers.readouts import FullGaussian2d

from sensorium import typed
from sensorium.config import ExperimentConfig, ModelConfig, apply_overrides
from sensorium.models import KSampleGaussian2d, ScanMeta, build_model
from sensorium.models.cores.stacked2d import core_arguments
from sensorium.models.readouts.gaussian import GaussianReadoutConfig
from sensorium.models.registry import CORES, READOUTS, SHIFTERS
from sensorium.models.model import Inputs

IN_SHAPE = (6, 9, 11)  # (C, H, W) of a small feature map
N_NEURONS = 7


def _coords(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 200, size=(n, 3)).astype(np.float32)


def _pair(gauss_type: str, predicted: bool, samples: int = 1) -> tuple[FullGaussian2d, KSampleGaussian2d]:
    """The library readout and ours with identical parameters (sigma and features made non-trivial)."""
    source = _coords(N_NEURONS)[:, :2] if predicted else None
    gmp = {"hidden_layers": 1, "hidden_features": 30, "final_tanh": True} if predicted else None
    cfg = GaussianReadoutConfig(samples=samples, gauss_type=gauss_type, grid_mean_predictor=predicted)
    torch.manual_seed(0)
    ref = FullGaussian2d(
        IN_SHAPE, N_NEURONS, bias=True, init_mu_range=0.3, init_sigma=0.1, gauss_type=gauss_type,
        grid_mean_predictor=gmp, source_grid=source, mean_activity=torch.zeros(N_NEURONS), feature_reg_weight=0.0076,
    )
    ours = KSampleGaussian2d(cfg, IN_SHAPE, ScanMeta(N_NEURONS, _coords(N_NEURONS)))
    with torch.no_grad():
        ref._features.normal_()
        ref.bias.normal_()
        ref.sigma.mul_(3)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("gauss_type", ["full", "uncorrelated", "isotropic"])
@pytest.mark.parametrize("predicted", [False, True])
def test_k1_equals_full_gaussian2d_for_the_same_draw(gauss_type, predicted):
    ref, ours = _pair(gauss_type, predicted)
    x = torch.randn(5, *IN_SHAPE)
    shift = 0.1 * torch.randn(5, 2)
    ref.train(), ours.train()
    for s in range(3):
        torch.manual_seed(s)
        expected = ref(x, shift=shift)
        torch.manual_seed(s)
        got = ours(x, shift=shift)
        # the same draw; the feature contraction sums over channels in another order (no (B, C, n) product)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        # a local generator with the same seed makes the same draw as the global RNG
        ours.generator = torch.Generator().manual_seed(s)
        assert torch.equal(ours(x, shift=shift), got)
        ours.generator = None
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x, shift=shift), ref(x, shift=shift), rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.regularizer(), ref.regularizer())


def test_k_samples_average_k_single_readouts():
    _, ours = _pair("full", predicted=True, samples=4)
    x = torch.randn(3, *IN_SHAPE)
    ours.train()
    ours.generator = torch.Generator().manual_seed(7)
    grid = ours.sample_grid(3)  # (B, n, K, 2), the draw the next forward will make
    assert grid.shape == (3, N_NEURONS, 4, 2)
    feat = ours.features.view(1, IN_SHAPE[0], N_NEURONS)
    singles = [
        (F.grid_sample(x, grid[:, :, k : k + 1], align_corners=True).squeeze(-1) * feat).sum(1) + ours.bias
        for k in range(4)
    ]
    ours.generator = torch.Generator().manual_seed(7)
    torch.testing.assert_close(ours(x), torch.stack(singles).mean(0), rtol=1e-5, atol=1e-6)


def test_readout_train_is_stochastic_eval_is_deterministic_and_independent_of_k():
    _, k1 = _pair("full", predicted=True, samples=1)
    _, k8 = _pair("full", predicted=True, samples=8)
    x = torch.randn(4, *IN_SHAPE)
    k1.train(), k8.train()
    assert not torch.equal(k8(x), k8(x))  # fresh positions every call
    # averaging K draws shrinks the sampling noise of the output
    spread = {k: torch.stack([m(x) for _ in range(30)]).std(0).mean().item() for k, m in ((1, k1), (8, k8))}
    assert spread[8] < 0.6 * spread[1]
    k1.eval(), k8.eval()
    assert torch.equal(k8(x), k8(x))
    assert torch.equal(k8(x), k1(x))  # eval reads at mu whatever K is
    assert torch.equal(k8(x, sample=False), k8(x))


def test_readout_starts_with_zero_bias_and_normalised_cortex_grid():
    readout = KSampleGaussian2d(GaussianReadoutConfig(), IN_SHAPE, ScanMeta(N_NEURONS, _coords(N_NEURONS)))
    assert torch.count_nonzero(readout.bias) == 0
    grid = readout.source_grid  # cortical x, y centred and divided by max |value|
    torch.testing.assert_close(grid.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    assert grid.abs().max().item() == pytest.approx(1.0)
    assert [type(m).__name__ for m in readout.mu_transform] == ["Linear", "ELU", "Linear", "Tanh"]


# ------------------------------------------------------------------------------------------ variants
META = {"scan-a": ScanMeta(7, _coords(7, 1)), "scan-b": ScanMeta(4, _coords(4, 2))}
BASE = ExperimentConfig()
VARIANTS = {
    "baseline": [],
    "ln": ["model.core.layers=3", "model.core.linear=true"],
    "image_only": ["data.behavior_channels=false", "model.shifter.enabled=false"],
    "shifter_off": ["model.shifter.enabled=false"],
    "behaviour_off": ["data.behavior_channels=false"],
    "full_convs": ["model.core.depth_separable=false"],
    "uncorrelated": ["model.readout.gauss_type=uncorrelated"],
    "isotropic": ["model.readout.gauss_type=isotropic"],
    "k4": ["model.readout.samples=4"],
    "free_grid": ["model.readout.grid_mean_predictor=false"],
    "padded_input": ["model.core.pad_input=true"],
    "se2d": ["model.core.kind=se2d", "model.core.n_se_blocks=2", "model.core.se_reduction=8"],
    "factorized": ["model.shifter.enabled=false", "model.readout.kind=factorized"],
}


def _variant(overrides: list[str]) -> tuple[ModelConfig, tuple[int, int, int]]:
    cfg = apply_overrides(BASE, overrides)
    channels = 4 if cfg.data.behavior_channels else 1
    return cfg.model, (channels, cfg.data.image_height, cfg.data.image_width)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_shapes_train_and_eval(name):
    model_cfg, in_shape = _variant(VARIANTS[name])
    torch.manual_seed(0)
    model = build_model(model_cfg, META, in_shape)
    feature_h, feature_w = (36, 64) if model_cfg.core.pad_input else (28, 56)
    for readout in model.readout.values():
        assert tuple(readout.in_shape) == (model_cfg.core.hidden_channels, feature_h, feature_w)
    assert (model.shifter is not None) == model_cfg.shifter.enabled
    images, pupil = torch.randn(3, *in_shape), torch.randn(3, 2)
    for mode in (True, False):
        model.train(mode)
        for key, meta in META.items():
            out = model(Inputs(images, pupil), key)
            assert out.shape == (3, meta.n_neurons)
            assert (out > 0).all()
            reg = model.regularizer(key)
            assert reg.dim() == 0 and torch.isfinite(reg)
    (model(Inputs(images, pupil), "scan-a").sum() + model.regularizer("scan-a")).backward()
    assert model.core.features[0].conv.weight.grad is not None


def test_ln_core_has_no_nonlinearity_and_full_convs_are_plain():
    ln_cfg, _ = _variant(VARIANTS["ln"])
    names = {type(m).__name__ for m in build_model(ln_cfg, META, (4, 36, 64)).core.modules()}
    assert "AdaptiveELU" not in names and "ELU" not in names
    full_cfg, _ = _variant(VARIANTS["full_convs"])
    names = {type(m).__name__ for m in build_model(full_cfg, META, (4, 36, 64)).core.modules()}
    assert "DepthSeparableConv2d" not in names


def test_shifter_moves_readout_and_needs_pupil_center():
    model = build_model(BASE.model, META, (4, 36, 64)).eval()
    images = torch.randn(2, 4, 36, 64)
    with pytest.raises(ValueError, match="pupil_center"):
        model(Inputs(images), "scan-a")
    assert not torch.equal(model(Inputs(images, torch.zeros(2, 2)), "scan-a"),
                           model(Inputs(images, torch.ones(2, 2)), "scan-a"))
    with pytest.raises(KeyError, match="scan-c"):
        model(Inputs(images, torch.zeros(2, 2)), "scan-c")


def test_channels_last_matches_default_layout_and_penalty_works():
    torch.manual_seed(0)
    model = build_model(BASE.model, META, (4, 36, 64)).eval()
    images, pupil = torch.randn(3, 4, 36, 64), torch.randn(3, 2)
    expected, expected_reg = model(Inputs(images, pupil), "scan-b"), model.regularizer("scan-b")
    model.use_channels_last()
    assert model.core.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(Inputs(images, pupil), "scan-b"), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.regularizer("scan-b"), expected_reg)


def test_build_model_rejects_an_image_smaller_than_the_input_kernel():
    from sensorium.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit"):
        build_model(BASE.model, META, (4, 6, 6))


def test_scan_meta_checks_coordinates_shape():
    with pytest.raises(ValueError, match="cell_motor_coordinates"):
        ScanMeta(3, np.zeros((2, 3)))


# ------------------------------------------------------------------------------- the core's fast forward
def _library_forward(core, images: torch.Tensor) -> torch.Tensor:
    """neuralpredictors' own Stacked2dCore.forward on the same modules: the plain path."""
    from neuralpredictors.layers.cores import Stacked2dCore

    return Stacked2dCore.forward(core, images)


def test_every_family_of_the_config_has_a_builder_and_back():
    from typing import get_type_hints

    hints = get_type_hints(ModelConfig)
    for part, registry in (("core", CORES), ("readout", READOUTS), ("shifter", SHIFTERS)):
        kinds = set(typed.families(hints[part])) or {typed.kind_of(hints[part])}
        assert kinds == set(registry), part


def test_se_core_has_its_blocks_and_the_library_forward():
    from neuralpredictors.layers.cores import SE2dCore

    cfg = apply_overrides(BASE, ["model.core.kind=se2d", "model.core.n_se_blocks=2", "model.core.se_reduction=8"])
    torch.manual_seed(0)
    model = build_model(cfg.model, META, (4, 36, 64)).double().train()
    blocks = [name for name, _ in model.core.named_modules() if name.endswith("seg_ex_block")]
    assert blocks == ["features.layer2.seg_ex_block", "features.layer3.seg_ex_block"]
    images, behavior = torch.randn(3, 1, 36, 64, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    full = torch.cat([images, behavior[:, :, None, None].expand(-1, -1, 36, 64)], dim=1)
    torch.testing.assert_close(model.core(images, behavior), SE2dCore.forward(model.core, full), rtol=1e-10, atol=1e-10)
    assert torch.equal(model.core.regularizer(), model.core.gamma_input * model.core.laplace())


def test_factorized_readout_refuses_a_shift_and_a_shifter():
    from sensorium.errors import ConfigError

    with pytest.raises(ConfigError, match="factorized readout takes no shift"):
        apply_overrides(BASE, ["model.readout.kind=factorized"])
    cfg = apply_overrides(BASE, ["model.shifter.enabled=false", "model.readout.kind=factorized"])
    model = build_model(cfg.model, META, (4, 36, 64))
    with pytest.raises(ValueError, match="no shift"):
        model.readout["scan-a"](torch.randn(2, 64, 28, 56), shift=torch.zeros(2, 2))


@pytest.mark.parametrize("overrides", [
    [],  # the baseline: no input padding, behaviour folded into the first layer
    ["model.core.pad_input=true"],  # padded: the channels are built as images
    ["model.core.stack=-2", "model.core.depth_separable=false"],  # two layers read out, plain convolutions
    ["model.core.linear=true", "model.core.layers=3"],  # the LN baseline's core
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_core_computes_the_library_core(overrides, channels_last):
    """Same outputs and gradients as the library's forward on materialised behaviour channels, in train and
    eval mode, in both memory layouts; state-dict keys unchanged. In float64, so that the comparison tests
    the function and not the order of float32 sums (batch norm's backward cancels large terms)."""
    cfg = apply_overrides(BASE, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, META, (4, 36, 64)).double()
    if channels_last:
        model.use_channels_last()
    core = model.core
    images, behavior = torch.randn(3, 1, 36, 64, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    full = torch.cat([images, behavior[:, :, None, None].expand(-1, -1, 36, 64)], dim=1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for train in (True, False):
        core.train(train)
        expected = _library_forward(core, full.contiguous(memory_format=layout))
        (expected ** 2).sum().backward()
        expected_grad = core.features[0].conv.weight.grad.clone()
        core.zero_grad()
        got = core(images.contiguous(memory_format=layout), behavior)
        (got ** 2).sum().backward()
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(core.features[0].conv.weight.grad, expected_grad, rtol=1e-8, atol=1e-8)
        core.zero_grad()
    from neuralpredictors.layers.cores import Stacked2dCore

    library = Stacked2dCore(**core_arguments(cfg.model.core, 4))
    assert list(library.state_dict()) == list(core.state_dict())


def test_model_with_behaviour_apart_equals_model_on_the_full_input():
    torch.manual_seed(0)
    model = build_model(BASE.model, META, (4, 36, 64)).eval()
    images, behavior, pupil = torch.randn(3, 1, 36, 64), torch.randn(3, 2 + 1), torch.randn(3, 2)
    full = torch.cat([images, behavior[:, :, None, None].expand(-1, -1, 36, 64)], dim=1)
    torch.testing.assert_close(model(Inputs(images, pupil, behavior), "scan-a"), model(Inputs(full, pupil), "scan-a"),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects 4 input channels: 1 image \\+ 3 behaviour channels, got 2"):
        model(Inputs(images, pupil, behavior[:, :2]), "scan-a")


def test_bf16_autocast_is_opt_in_and_returns_float32_rates():
    torch.manual_seed(0)
    model = build_model(BASE.model, META, (4, 36, 64)).eval()
    images, behavior, pupil = torch.randn(3, 1, 36, 64), torch.randn(3, 3), torch.randn(3, 2)
    plain = model(Inputs(images, pupil, behavior), "scan-a")
    model.autocast = torch.bfloat16
    low = model(Inputs(images, pupil, behavior), "scan-a")
    assert plain.dtype == low.dtype == torch.float32
    assert not torch.equal(plain, low)  # bf16 arithmetic: close, not equal
    torch.testing.assert_close(low, plain, rtol=0.05, atol=0.05)


def test_the_baseline_gives_the_outputs_it_gave_before_the_family_registry():
    """The SENSORIUM+ baseline built from a seed: parameters and outputs equal what the code before component
    families gave (values recorded at commit 5d0a525 with the same seeds), in eval and in training mode."""
    rng = np.random.default_rng(0)
    meta = {"scan-a": ScanMeta(7, rng.normal(0, 200, (7, 3)).astype(np.float32))}
    torch.manual_seed(0)
    model = build_model(ExperimentConfig().model, meta, (4, 36, 64))
    g = torch.Generator().manual_seed(1)
    batch = Inputs(torch.randn(3, 1, 36, 64, generator=g), behavior=torch.randn(3, 3, generator=g),
                   pupil_center=torch.randn(3, 2, generator=g))
    with torch.no_grad():
        out_eval = model.eval()(batch, "scan-a")
        model.train().set_generator(torch.Generator().manual_seed(2))
        out_train = model(batch, "scan-a")
    params = sum(float(p.detach().double().sum()) for p in model.parameters())
    assert params == pytest.approx(263.40200520272583, rel=1e-9) and len(model.state_dict()) == 45
    assert out_eval.double().sum().item() == pytest.approx(21.000963032245636, rel=1e-6)
    assert out_train.double().sum().item() == pytest.approx(24.772645711898804, rel=1e-6)
    np.testing.assert_allclose(out_eval[0, :4].numpy(), [1.0002546310424805, 1.0002562999725342,
                                                         1.0002830028533936, 1.0002819299697876], rtol=1e-6)
