"""Search files: validation before any trial (errors name the key), resolution, and the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.space import load_search, parse_search, resolve, with_settings
from search.tuner import optuna_space
from sensorium.config import ExperimentConfig, load_config
from sensorium.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _search(**changes) -> dict:
    """A valid inline search; ``changes`` replace top-level sections or parameters ('param:<key>')."""
    raw = {
        "base": {"train": {"max_epochs": 6}},
        "parameters": {
            "train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "role": "nuisance"},
            "model.core.hidden_kern": {"type": "int", "low": 3, "high": 7, "step": 2, "role": "scientific"},
            "model.readout.gauss_type": {"type": "categorical", "choices": ["full", "isotropic"], "role": "scientific"},
        },
        "search": {"num_trials": 4, "max_concurrent": 2, "asha": {"grace_period": 1, "max_t": 6}},
    }
    for key, value in changes.items():
        if key.startswith("param:"):
            raw["parameters"][key[6:]] = value
        else:
            raw[key] = value
    return raw


def test_valid_search_resolves_every_value_into_a_config():
    spec = parse_search(_search())
    assert [p.key for p in spec.params] == ["train.lr", "model.core.hidden_kern", "model.readout.gauss_type"]
    cfg = spec.resolve({"train.lr": 0.005, "model.core.hidden_kern": 5, "model.readout.gauss_type": "isotropic"})
    assert (cfg.train.lr, cfg.model.core.hidden_kern, cfg.model.readout.gauss_type) == (0.005, 5, "isotropic")
    assert cfg.train.max_epochs == 6  # from the base
    assert parse_search(spec.to_dict()) == spec  # the saved form (search.yaml of a run) reads back the same


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"param:model.core.layerz": {"type": "int", "low": 2, "high": 4, "role": "scientific"}},
         "unknown config key 'model.core.layerz'"),
        ({"param:train.lr": {"type": "uniform", "low": 0.01, "high": 0.001, "role": "nuisance"}},
         "parameters.train.lr: inverted range"),
        ({"param:train.lr": {"type": "uniform", "low": 0.01, "high": 0.01, "role": "nuisance"}},
         "parameters.train.lr: empty range"),
        ({"param:train.lr": {"type": "loguniform", "low": 0.0, "high": 0.01, "role": "nuisance"}},
         "parameters.train.lr.low=0.0: loguniform needs low > 0"),
        ({"param:model.core.layers": {"type": "uniform", "low": 2, "high": 4, "role": "scientific"}},
         "parameters.model.core.layers.type=uniform: the field is int; use type int"),
        ({"param:model.readout.gauss_type": {"type": "int", "low": 1, "high": 2, "role": "scientific"}},
         "parameters.model.readout.gauss_type.type=int"),
        ({"param:model.readout.gauss_type": {"type": "categorical", "choices": ["full", "diagonal"],
                                             "role": "scientific"}},
         "expected one of ['full', 'uncorrelated', 'isotropic']"),
        ({"param:model.core.input_kern": {"type": "int", "low": 5, "high": 9, "role": "scientific"}},
         "model.core.input_kern=6: expected an odd kernel size"),  # int range without step 2 hits even sizes
        ({"param:model.core.layers": {"type": "int", "low": 2, "high": 5, "step": 2, "role": "scientific"}},
         "not a multiple of step=2"),
        ({"param:model.core.layers": {"type": "int", "low": 2, "high": 4, "role": "important"}},
         "parameters.model.core.layers.role='important'"),
        ({"param:model.core.layers": {"type": "int", "low": 2.5, "high": 4, "role": "scientific"}},
         "parameters.model.core.layers.low=2.5: expected an integer"),
        ({"param:train.max_epochs": {"type": "int", "low": 5, "high": 50, "role": "nuisance"}},
         "never tune the number of epochs"),
        ({"param:model.core.layers": {"type": "int", "low": 2, "high": 4, "role": "scientific", "log": True}},
         "unknown key 'parameters.model.core.layers.log'"),
        ({"overrides": {"train.lr": 0.01}}, "parameters.train.lr: also fixed in overrides"),
        ({"overrides": {"model.shifter.enabled": False},
          "param:model.shifter.hidden_channels": {"type": "int", "low": 2, "high": 8, "role": "scientific"}},
         "searched while model.shifter.enabled is false"),
        ({"search": {"num_trials": 4, "asha": {"grace_period": 1, "max_t": 10}}},
         "search.asha.max_t=10: larger than train.max_epochs=6"),
        ({"search": {"num_trials": 4, "asha": {"grace_period": 3, "max_t": 2}}}, "search.asha.max_t=2"),
        ({"search": {"num_trials": 2, "max_concurrent": 3, "asha": {"max_t": 6}}}, "search.max_concurrent=3"),
        ({"search": {"num_trials": 4, "cpus_per_trail": 2}}, "unknown key 'search.cpus_per_trail'"),
        ({"search": {"num_trials": 4, "metric": "loss", "asha": {"max_t": 6}}}, "search.metric='loss'"),
        ({"search": {"num_trials": 4, "asha": {"max_t": 6},
                     "start_with": [{"train.lr": 0.5}]}}, "search.start_with[0].train.lr=0.5: outside"),
        ({"base": {"model": {"core": {"layerz": 3}}}}, "base: unknown config key 'model.core.layerz'"),
    ],
)
def test_invalid_search_is_refused_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_search(_search(**changes))
    assert message in str(err.value)


def test_a_range_end_the_config_rejects_is_refused_before_any_trial():
    """init_mu_range must lie in (0, 1]: a range reaching past 1 fails at validation, not in trial 7."""
    free_grid = {"train": {"max_epochs": 6}, "model": {"readout": {"grid_mean_predictor": False}}}
    raw = _search(base=free_grid, **{"param:model.readout.init_mu_range": {"type": "uniform", "low": 0.1,
                                                                          "high": 1.0, "role": "nuisance"}})
    assert parse_search(raw).params[-1].high == 1.0
    raw = _search(base=free_grid, **{"param:model.readout.init_mu_range": {"type": "uniform", "low": 0.1,
                                                                          "high": 1.5, "role": "nuisance"}})
    with pytest.raises(ConfigError, match=r"parameters.model.readout.init_mu_range: the config rejects"):
        parse_search(raw)


@pytest.mark.parametrize(
    "key, value, switch",
    [
        ("model.readout.init_mu_range", {"type": "uniform", "low": 0.1, "high": 0.5},
         "model.readout.grid_mean_predictor is true"),
        ("model.core.gamma_hidden", {"type": "loguniform", "low": 0.01, "high": 1.0},
         "model.core.depth_separable is true"),
    ],
)
def test_a_key_nothing_reads_under_the_base_config_is_refused(key, value, switch):
    base = {"train": {"max_epochs": 6}, "model": {"core": {"depth_separable": True}}}
    raw = _search(base=base, **{f"param:{key}": {**value, "role": "nuisance"}})
    with pytest.raises(ConfigError, match=f"parameters.{key}: searched while {switch}, so nothing reads it"):
        parse_search(raw)


def test_command_line_settings_are_validated_again():
    spec = parse_search(_search())
    assert with_settings(spec, num_trials=6, max_concurrent=None).settings.num_trials == 6
    with pytest.raises(ConfigError, match="search.cpus_per_trial=0"):
        with_settings(spec, cpus_per_trial=0)


def test_base_path_is_relative_to_the_search_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(yaml.safe_dump({"name": "from-file", "train": {"max_epochs": 6}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_search(base="sub/base.yaml")))
    assert load_search(tmp_path / "s.yaml").base.name == "from-file"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(_search(base="missing.yaml")))
    with pytest.raises(ConfigError, match="bad.yaml: base: config file 'missing.yaml' not found"):
        load_search(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["search_default.yaml", "search_tiny.yaml"])
def test_shipped_search_files_are_valid(name):
    spec = load_search(CONFIGS / name)
    assert set(optuna_space(spec)) == {p.key for p in spec.params}
    params = {p.key: p for p in spec.params}
    for point in spec.settings.start_with:  # the baseline trial of the default search is inside the space
        for key, value in point.items():
            p = params[key]
            assert value in p.choices if p.type == "categorical" else p.low <= value <= p.high


def test_default_search_varies_what_the_issue_asks_and_starts_from_the_baseline():
    spec = load_search(CONFIGS / "search_default.yaml")
    keys = {p.key for p in spec.params}
    assert {
        "model.core.layers", "model.core.hidden_channels", "model.core.input_kern", "model.core.hidden_kern",
        "model.core.depth_separable", "model.readout.samples", "model.readout.gauss_type",
        "model.readout.init_sigma", "model.core.gamma_input",
        "model.readout.gamma_readout", "train.lr", "data.batch_size",
    } <= keys
    baseline = load_config(CONFIGS / "sensorium_plus.yaml")
    assert resolve(baseline, spec.settings.start_with[0]) == baseline
    assert spec.base == baseline
    assert isinstance(spec.base, ExperimentConfig)
