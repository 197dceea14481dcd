"""Search files: validation before any trial (errors name the key), resolution, and the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import optuna

from search.spec.space import active_params, load_search, parse_search, point_problem, resolve, with_settings
from search.raytune.tuner import TreeSpace
from search.store.study import distributions_for
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
         "unknown key 'model.core.layerz'"),
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
                     "start_with": [{"train.lr": 0.5}]}}, "search.start_with[0]: train.lr=0.5 is outside"),
        ({"base": {"model": {"core": {"layerz": 3}}}}, "base: unknown key 'model.core.layerz'"),
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


@pytest.mark.parametrize("name", ["search_default.yaml", "search_tiny.yaml", "search_demo.yaml",
                                  "search_families.yaml", "search_bench.yaml"])
def test_shipped_search_files_are_valid(name):
    spec = load_search(CONFIGS / name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):  # the compiled space samples points of the space, and each one is a config
        trial = study.ask()
        fixed = TreeSpace(spec)(trial)
        point = {**trial.params, **fixed}
        assert point_problem(spec, point) is None and set(trial.params) <= set(spec.keys())
        spec.resolve(point)
        study.tell(trial, 0.0)
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


# ------------------------------------------------------------------------------------- conditional spaces
def _families(**changes) -> dict:
    """A search over two core and two readout families, each option with its own parameters."""
    core = {"type": "categorical", "role": "scientific", "choices": {
        "stacked2d": {},
        "se2d": {"model.core.se_reduction": {"type": "categorical", "choices": [4, 8], "role": "nuisance"}},
    }}
    readout = {"type": "categorical", "role": "scientific", "choices": {
        "gaussian": {"model.readout.samples": {"type": "int", "low": 1, "high": 2, "role": "scientific"}},
        "factorized": {"model.shifter.enabled": False,
                       "model.readout.normalize": {"type": "categorical", "choices": [True, False],
                                                   "role": "nuisance"}},
    }}
    raw = _search(**{"param:model.core.kind": core, "param:model.readout.kind": readout, **changes})
    del raw["parameters"]["model.readout.gauss_type"]  # a gaussian field: only under that option
    return raw


def test_a_conditional_space_reads_back_and_samples_each_option_with_its_own_parameters():
    spec = parse_search(_families())
    assert spec.conditional() and parse_search(spec.to_dict()) == spec
    assert spec.keys() == ["train.lr", "model.core.hidden_kern", "model.core.kind", "model.core.se_reduction",
                           "model.readout.kind", "model.readout.samples", "model.readout.normalize"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        fixed = TreeSpace(spec)(trial)
        params = trial.params
        core, readout = params["model.core.kind"], params["model.readout.kind"]
        seen.add((core, readout))
        assert ("model.core.se_reduction" in params) == (core == "se2d")
        assert ("model.readout.samples" in params) == (readout == "gaussian")
        assert ("model.readout.normalize" in params) == (readout == "factorized")
        assert fixed == ({"model.shifter.enabled": False} if readout == "factorized" else {})
        cfg = spec.resolve({**params, **fixed})
        assert (cfg.model.core.kind, cfg.model.readout.kind) == (core, readout)
        assert set(distributions_for(spec, params)) == set(params)
        study.tell(trial, 0.0)
    assert len(seen) == 4


def test_points_of_a_conditional_space():
    spec = parse_search(_families())
    point = {"train.lr": 0.005, "model.core.hidden_kern": 5, "model.core.kind": "se2d", "model.core.se_reduction": 4, "model.readout.kind": "factorized",
             "model.readout.normalize": True}
    assert point_problem(spec, point) is None
    assert point_problem(spec, {**point, "model.shifter.enabled": False}) is None  # its option's fixed value
    assert "fixed to False" in point_problem(spec, {**point, "model.shifter.enabled": True})
    assert "not a searched parameter" in point_problem(spec, {**point, "model.readout.samples": 1})
    assert "model.readout.normalize has no value" in point_problem(
        spec, {k: v for k, v in point.items() if k != "model.readout.normalize"})
    assert [p.key for p in active_params(spec, point)][-2:] == ["model.readout.kind", "model.readout.normalize"]


@pytest.mark.parametrize(
    "changes, message",
    [
        # a field of a family the space never chooses where it is searched
        ({"param:model.core.n_se_blocks": {"type": "int", "low": 0, "high": 1, "role": "scientific"}},
         "parameters.model.core.n_se_blocks: a field of model.core.kind se2d, which is searched: nest it"),
        ({"param:model.core.kind": {"type": "categorical", "role": "scientific", "choices": ["stacked2d"]},
          "param:model.core.se_reduction": {"type": "int", "low": 2, "high": 4, "role": "nuisance"}},
         "a field of model.core.kind se2d, which is searched"),
        ({"param:model.core.kind": {"type": "categorical", "role": "scientific", "choices": {
            "stacked2d": {"model.core.se_reduction": {"type": "int", "low": 2, "high": 4, "role": "nuisance"}},
            "se2d": {}}}},
         "choices.stacked2d.model.core.se_reduction: a field of model.core.kind se2d, but the space never "
         "chooses it here (model.core.kind is 'stacked2d')"),
        # the factorized readout without the shifter switched off: the config rejects it up front
        ({"param:model.readout.kind": {"type": "categorical", "role": "scientific", "choices": {
            "gaussian": {}, "factorized": {}}}},
         "the factorized readout takes no shift"),
        ({"param:model.readout.kind": {"type": "categorical", "role": "scientific", "choices": {
            "gaussian": {}, "factorized": {"model.shifter.enabled": False, "model.readout.kind": "gaussian"}}}},
         "an option cannot set the parameter it is an option of"),
        ({"param:model.readout.kind": {"type": "categorical", "role": "scientific", "choices": {
            "gaussian": {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.01, "role": "nuisance"}},
            "factorized": {"model.shifter.enabled": False}}}},
         "searched twice on one path"),
        ({"param:model.core.kind": {"type": "categorical", "role": "scientific", "choices": {
            "stacked2d": {}, "se2d": {"model.core.se_reduction": 128}}}},  # fixed above hidden_channels (64)
         "model.core.se_reduction=128: expected at most hidden_channels (64)"),
    ],
)
def test_invalid_conditional_spaces_are_refused(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_search(_families(**changes))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"low": 0.001, "high": 0.01, "role": "nuisance"},
         "parameters.train.lr.type: missing; expected one of ['uniform', 'loguniform', 'int', 'categorical']"),
        ({"type": "uniform", "low": 0.001, "high": 0.01}, "parameters.train.lr.role: missing; expected one of"),
        ({"type": "uniform", "low": "small", "high": 0.01, "role": "nuisance"},
         "parameters.train.lr.low='small': expected a number"),
    ],
)
def test_a_parameter_entry_is_read_by_the_config_reader_naming_what_is_missing_or_wrong(entry, message):
    """Parameter entries go through sensorium.typed, the reader of every config (required fields, field texts)."""
    with pytest.raises(ConfigError) as err:
        parse_search(_search(**{"param:train.lr": entry}))
    assert message in str(err.value)
