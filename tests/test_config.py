"""The experiment config: YAML round trip, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from sensorium.config import (
    ExperimentConfig,
    apply_overrides,
    config_hash,
    field_types,
    get_value,
    load_config,
    save_config,
)
from sensorium.errors import ConfigError


def test_yaml_round_trip_keeps_config_and_hash(tmp_path):
    cfg = apply_overrides(ExperimentConfig(), ["model.core.layers=3", "data.scans=[a, b]", "train.lr=1e-3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert again.data.scans == ("a", "b")


def test_defaults_are_the_reference_values():
    cfg = ExperimentConfig()
    assert (cfg.model.core.layers, cfg.model.core.hidden_channels) == (4, 64)
    assert (cfg.model.core.input_kern, cfg.model.core.hidden_kern) == (9, 7)
    assert cfg.model.core.gamma_input == pytest.approx(6.3831)
    assert cfg.model.readout.gamma_readout == pytest.approx(0.0076)
    assert (cfg.train.lr, cfg.data.batch_size, cfg.train.recipe.lr_decay_factor) == (0.009, 128, 0.3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.core.layerz=3", "unknown key 'model.core.layerz'"),
        ("model.core.layers=three", "model.core.layers='three': expected an integer"),
        ("model.readout.gauss_type=diagonal", "expected one of ['full', 'uncorrelated', 'isotropic']"),
        ("model.readout.init_mu_range=2.0", "model.readout.init_mu_range=2.0"),
        ("data.batch_size=0", "data.batch_size=0: expected a value > 0"),
        ("model.core.input_kern=8", "expected an odd kernel size"),
        ("train.lr", "expected KEY=VALUE"),
        ("model.core.stack=5", "model.core.stack=5: expected a layer index in [-layers, layers)"),
        ("model.core.input_regularizer=foo", "expected one of ['LaplaceL2norm'"),
        ("model.core.momentum=5", "model.core.momentum=5.0: expected 0 < value <= 1"),
        ("train.recipe.min_lr=-1", "train.recipe.min_lr=-1.0: expected a value >= 0"),
            ("train.checkpoint_every_s=-5", "train.checkpoint_every_s=-5.0: expected a value >= 0"),
            ("train.channels_last=maybe", "train.channels_last='maybe'"),
        ("model.readout.gmp_hidden_layers=-1", "model.readout.gmp_hidden_layers=-1: expected a value >= 0"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        apply_overrides(ExperimentConfig(), [override])
    assert message in str(err.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  core:\n    chanels: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "model.core.chanels" in str(err.value)
    assert "model.core.hidden_channels" in str(err.value)  # lists the valid keys


def test_int_accepted_for_float_but_bool_is_not():
    cfg = apply_overrides(ExperimentConfig(), ["train.lr=1"])
    assert isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError):
        apply_overrides(ExperimentConfig(), ["train.lr=true"])


def test_field_types_lists_every_leaf():
    leaves = field_types()
    assert "model.readout.samples" in leaves and "train.lr" in leaves and "data.scans" in leaves
    assert get_value(ExperimentConfig(), "model.shifter.enabled") is True
