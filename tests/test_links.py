"""The output links (``model.link``): each one's function, old configs' ``model.elu_offset``, and a search over
``model.link.kind``. What every link must do (rates > 0, checkpoints, groups) is in tests/test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from search.spec.space import parse_search
from sensorium.config import ExperimentConfig, apply_overrides, load_config
from sensorium.errors import ConfigError
from sensorium.models.links.elu1 import Elu1Link, Elu1LinkConfig
from sensorium.models.links.exp import ExpLink, ExpLinkConfig
from sensorium.models.links.softplus import SoftplusLink, SoftplusLinkConfig

X = torch.tensor([[-30.0, -2.0, 0.0, 0.5, 3.0, 1000.0]])


def test_elu1_is_the_default_and_the_reference_formula():
    assert ExperimentConfig().model.link == Elu1LinkConfig(offset=0.0)
    link = Elu1Link(Elu1LinkConfig(offset=0.5))
    assert torch.equal(link(X), F.elu(X + 0.5) + 1)
    assert not list(link.parameters()) and not link.state_dict()


def test_softplus_with_a_fixed_beta_is_torchs_softplus():
    link = SoftplusLink(SoftplusLinkConfig(beta=0.07))
    torch.testing.assert_close(link(X), F.softplus(X, beta=0.07))
    assert not list(link.parameters()) and not link.state_dict()  # beta: the config's, not the checkpoint's
    assert link(torch.zeros(1)).item() == pytest.approx(math.log(2) / 0.07)


def test_softplus_learns_a_positive_beta():
    link = SoftplusLink(SoftplusLinkConfig(beta=2.0, learn_beta=True))
    assert [name for name, _ in link.named_parameters()] == ["log_beta"]
    assert link.log_beta.exp().item() == pytest.approx(2.0)
    link(X).sum().backward()
    assert link.log_beta.grad is not None and link.log_beta.grad.abs() > 0
    with torch.no_grad():
        link.log_beta.fill_(-50.0)  # any real log beta is a beta > 0
    assert (link(X[:, 1:-1]) > 0).all()


def test_exp_clamps_its_input_against_overflow():
    rate = ExpLink(ExpLinkConfig())(X)
    torch.testing.assert_close(rate[0, :5], torch.exp(X[0, :5]))
    assert rate[0, 5].item() == pytest.approx(math.exp(20.0), rel=1e-6)  # exp(1000) would be inf


def test_a_config_with_model_elu_offset_reads_as_the_elu1_link(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  elu_offset: 0.25\n")
    assert load_config(path).model.link == Elu1LinkConfig(offset=0.25)
    raw = {"model": {"elu_offset": 0.25, "link": {"kind": "elu1"}}}
    with pytest.raises(ConfigError, match="model.elu_offset: replaced by model.link.offset"):
        ExperimentConfig.from_dict(raw)


def test_link_keys_are_config_keys_with_clear_errors():
    cfg = apply_overrides(ExperimentConfig(), ["model.link.kind=softplus", "model.link.beta=0.07"])
    assert cfg.model.link == SoftplusLinkConfig(beta=0.07)
    with pytest.raises(ConfigError, match=r"model.link.kind='relu': expected one of \['elu1', 'softplus', 'exp'\]"):
        ExperimentConfig.from_dict({"model": {"link": {"kind": "relu"}}})
    with pytest.raises(ConfigError, match="unknown key 'model.link.beta' of model.link.kind='exp'"):
        ExperimentConfig.from_dict({"model": {"link": {"kind": "exp", "beta": 1.0}}})
    with pytest.raises(ConfigError, match="model.link.beta=0.0: expected a value > 0"):
        apply_overrides(ExperimentConfig(), ["model.link.kind=softplus", "model.link.beta=0"])


def test_a_search_over_the_link_validates_and_resolves():
    raw = {
        "base": {"train": {"max_epochs": 2}},
        "parameters": {"model.link.kind": {"type": "categorical", "role": "scientific", "choices": {
            "elu1": {},
            "softplus": {"model.link.beta": {"type": "loguniform", "low": 0.05, "high": 2.0, "role": "nuisance"}},
            "exp": {},
        }}},
        "search": {"num_trials": 3, "max_concurrent": 1, "asha": {"grace_period": 1, "max_t": 2}},
    }
    spec = parse_search(raw)
    assert spec.resolve({"model.link.kind": "softplus", "model.link.beta": 0.07}).model.link == SoftplusLinkConfig(
        beta=0.07)
    assert spec.resolve({"model.link.kind": "exp"}).model.link == ExpLinkConfig()
    raw["parameters"] = {"model.link.kind": {"type": "categorical", "choices": ["elu1", "softplus", "exp"],
                                             "role": "scientific"}}
    assert [p.key for p in parse_search(raw).params] == ["model.link.kind"]


def test_a_checkpoint_written_before_links_were_a_family_loads(tmp_path):
    """Its config says model.elu_offset and has no model.link; its scan_meta holds the two ScanMeta fields."""
    import numpy as np

    from sensorium.models import ScanMeta, build_model
    from sensorium.models.model import Inputs
    from sensorium.training.checkpoint import FORMAT, cpu_state, load_model, save_atomic

    coords = np.random.default_rng(0).normal(0, 200, (4, 3)).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(ExperimentConfig().model, {"scan-a": ScanMeta(4, coords)}, (4, 36, 64)).eval()
    config = ExperimentConfig().to_dict()
    config["train"]["channels_last"] = False
    config["model"] = {**{k: v for k, v in config["model"].items() if k not in ("link", "modulator")},
                       "elu_offset": 0.0}
    old = {"format": FORMAT, "config": config, "model": cpu_state(model), "in_shape": [4, 36, 64], "epoch": 1,
           "val_corr": 0.1, "scan_meta": {"scan-a": {"n_neurons": 4, "cell_motor_coordinates": torch.from_numpy(coords)}}}
    save_atomic(old, tmp_path / "best.pt")
    loaded, cfg = load_model(tmp_path / "best.pt", torch.device("cpu"))
    assert cfg.model.link == Elu1LinkConfig(offset=0.0)
    batch = Inputs(torch.randn(2, 1, 36, 64), pupil_center=torch.randn(2, 2), behavior=torch.randn(2, 3))
    with torch.no_grad():
        assert torch.equal(loaded(batch, "scan-a"), model(batch, "scan-a"))
