"""The contract every component family keeps, generated from the registries (as timm tests every registered
model): every combination of registered families whose ModelConfig validates, at the families' default configs
(and each shifter also disabled), builds, predicts positive finite rates, has a finite penalty, survives a
checkpoint round trip, puts every trainable parameter in exactly one optimiser group, and reads none of the keys
its ``unread()`` names. A new family is tested here without a new test."""

from __future__ import annotations

import dataclasses
import itertools
import typing

import numpy as np
import pytest
import torch

from sensorium import typed
from sensorium.config import ExperimentConfig, ModelConfig, TrainConfig, field_types
from sensorium.data.dataset import History
from sensorium.errors import ConfigError
from sensorium.models import ScanMeta, build_model
from sensorium.models.component import ShifterConfigBase
from sensorium.models.model import BatchInputs, Inputs
from sensorium.models.registry import REGISTRIES
from sensorium.training.checkpoint import cpu_state, load_model, model_payload, save_atomic

IN_SHAPE = (4, 16, 24)  # 1 image + 3 behaviour channels; the default core (input kernel 9) gives 8 x 16 features
META = {"scan-a": ScanMeta(5, np.random.default_rng(1).normal(0, 200, (5, 3)).astype(np.float32)),
        "scan-b": ScanMeta(3, np.random.default_rng(2).normal(0, 200, (3, 3)).astype(np.float32))}
BATCH = 3
# changing model.core.gamma_hidden of a depth-separable core (unread) makes the library say that it ignores it
pytestmark = pytest.mark.filterwarnings("ignore:group sparsity can not be calculated")


def _variants(part: str) -> list[typing.Any]:
    """The default config of every family registered for ``part``; a shifter's also disabled."""
    configs = [family.Config() for family in REGISTRIES[part].values()]
    return configs + [dataclasses.replace(c, enabled=False) for c in configs if isinstance(c, ShifterConfigBase)]


def _name(part: str, cfg: typing.Any) -> str:
    return cfg.kind + ("(off)" if isinstance(cfg, ShifterConfigBase) and not cfg.enabled else "")


def _combinations() -> list[typing.Any]:
    """Every combination of the parts' variants that ModelConfig's own validation accepts."""
    out = []
    for configs in itertools.product(*(_variants(part) for part in REGISTRIES)):
        try:
            model = ModelConfig(**dict(zip(REGISTRIES, configs)))
        except ConfigError:  # e.g. a readout that takes no shift with a shifter
            continue
        out.append(pytest.param(model, id="-".join(_name(p, c) for p, c in zip(REGISTRIES, configs))))
    return out


COMBINATIONS = _combinations()


def _batch(model: torch.nn.Module, key: str, seed: int = 0) -> Inputs:
    """A batch of scan ``key`` with every field a component may read (random, from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    n, past = META[key].n_neurons, max(model.history_length, 1)
    history = History(responses=torch.randn(BATCH, past, n, generator=g), mask=torch.ones(BATCH, past),
                      behavior=torch.randn(BATCH, 5, generator=g), behavior_mask=torch.ones(BATCH),
                      time=torch.rand(BATCH, generator=g))
    return Inputs(torch.randn(BATCH, 1, *IN_SHAPE[1:], generator=g), pupil_center=torch.randn(BATCH, 2, generator=g),
                  behavior=torch.randn(BATCH, 3, generator=g), trial_ids=np.arange(BATCH), history=history)


def _build(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg, META, IN_SHAPE)


def _eval_outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {key: model.eval()(_batch(model, key), key) for key in META}


def test_the_registries_give_combinations_and_leave_out_the_invalid_ones():
    assert len(COMBINATIONS) >= 2 * len(REGISTRIES)
    names = [p.id for p in COMBINATIONS]
    assert not any("factorized-mlp-" in name for name in names)  # a shifter on a readout that takes no shift
    assert "stacked2d-gaussian-mlp-none-elu1" in names  # the baseline


@pytest.mark.parametrize("cfg", COMBINATIONS)
def test_forward_gives_positive_finite_rates_and_a_finite_penalty(cfg):
    model = _build(cfg)
    batch_fields = set(typing.get_type_hints(BatchInputs))
    for component in model.components():
        assert set(component.reads) <= batch_fields, type(component).__name__
    for mode in (True, False):
        model.train(mode)
        for key, meta in META.items():
            rate = model(_batch(model, key), key)
            assert rate.shape == (BATCH, meta.n_neurons) and rate.dtype == torch.float32
            assert torch.isfinite(rate).all() and (rate > 0).all()
            reg = model.regularizer(key)
            assert reg.dim() == 0 and torch.isfinite(reg)


@pytest.mark.parametrize("cfg", COMBINATIONS)
def test_a_checkpoint_round_trip_gives_the_same_outputs(cfg, tmp_path):
    model = _build(cfg, seed=0)
    with torch.no_grad():  # weights away from their initial values (zeros, ones), so the load is what counts
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    expected = _eval_outputs(model)
    run_cfg = ExperimentConfig(model=cfg, train=TrainConfig(channels_last=False))
    save_atomic(model_payload(cpu_state(model), run_cfg, META, IN_SHAPE, 1, 0.5), tmp_path / "best.pt")
    torch.manual_seed(1)  # load_model builds with other initial weights; the loaded ones must replace them all
    loaded, loaded_cfg = load_model(tmp_path / "best.pt", torch.device("cpu"))
    assert loaded_cfg.model == cfg
    got = _eval_outputs(loaded)
    for key in META:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("cfg", COMBINATIONS)
def test_param_groups_hold_every_trainable_parameter_once(cfg):
    model = _build(cfg)
    groups = model.param_groups(0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert all(g["lr"] > 0 and g["weight_decay"] >= 0 for g in groups)
    torch.optim.Adam(groups, lr=0.01)  # a valid optimiser setup


def _other_value(section: typing.Any, name: str) -> list[typing.Any]:
    """Candidate values for field ``name`` of ``section`` other than its current one."""
    value, tp = getattr(section, name), typed.field_hints(type(section))[name]
    if typing.get_origin(tp) is typing.Literal:
        return [v for v in typing.get_args(tp) if v != value]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1, value - 1, 2 * value]
    if tp is float:
        return [value / 2, value * 2, value + 0.1] if value else [0.5, 1.0]
    raise AssertionError(f"no other value for a field of type {tp}")


def _changed(cfg: ModelConfig, part: str, name: str) -> ModelConfig:
    """``cfg`` with field ``name`` of ``part`` set to another valid value."""
    section = getattr(cfg, part)
    for value in _other_value(section, name):
        try:
            return dataclasses.replace(cfg, **{part: dataclasses.replace(section, **{name: value})})
        except ConfigError:
            continue
    raise AssertionError(f"model.{part}.{name}: no other valid value found")


@pytest.mark.parametrize("cfg", COMBINATIONS)
def test_the_keys_unread_names_are_unread(cfg):
    unread = ExperimentConfig(model=cfg).unread_keys()
    assert all(key in field_types() for key in [*unread, *unread.values()])
    expected_model = _build(cfg)
    expected = _eval_outputs(expected_model)
    shapes = {k: v.shape for k, v in expected_model.state_dict().items()}
    for key in unread:
        _, part, name = key.split(".")
        changed = _build(_changed(cfg, part, name))
        assert {k: v.shape for k, v in changed.state_dict().items()} == shapes, key
        got = _eval_outputs(changed)
        assert all(torch.equal(got[k], expected[k]) for k in META), key
