"""``gpus_per_trial: auto``: the setting, the largest point of a space, the choice of trials per card with
scripted nodes, cards and memory plans, and the driver's resolution before any trial, on the session's Ray
(a CPU node as it is, and a GPU node by stubbing the cluster's resources and the card's memory)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import ray
import yaml

from search.raytune.driver import _prepare_and_check
from search.spec.gpu_share import (
    GB,
    SIZE_KEYS,
    Card,
    MemoryPlan,
    card_memory,
    choose_gpus_per_trial,
    largest_points,
    memory_plan,
)
from search.raytune.preflight import NodeInfo
from search.raytune.prepare import absolute_data_paths
from search.spec.settings import AUTO, SearchSettings
from search.spec.space import load_search, parse_search, point_problem, with_data
from sensorium.errors import ConfigError
from sensorium.memory import CUDA_CONTEXT_BYTES, MemoryEstimate, ScanShape

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
GPU_NODE = NodeInfo("g" * 56, "10.0.0.2", cpus=32, gpus=4)  # 8 CPUs per card


def _plan(largest_gb: float, base_gb: float = 2.0) -> MemoryPlan:
    """A memory plan whose peaks (training) are the given GB, the context included."""
    def est(gb: float) -> MemoryEstimate:
        return MemoryEstimate(context=CUDA_CONTEXT_BYTES, data=0, state=0, scoring=0, eval_chunk=64, batch_size=128,
                              activations=int(gb * GB) - CUDA_CONTEXT_BYTES)
    return MemoryPlan(est(base_gb), est(largest_gb), {"model.core.layers": 6}, 1)


def _tiny_search(**search) -> dict:
    raw = yaml.safe_load((CONFIGS / "search_tiny.yaml").read_text())
    raw["base"] = str((CONFIGS / raw["base"]).resolve())
    raw["search"].update(search)
    return raw


# ----------------------------------------------------------------------------------------------- the setting
def test_auto_is_the_default_of_the_settings_and_the_search_files():
    assert SearchSettings().gpus_per_trial == AUTO
    for name in ("search_default", "search_tiny", "search_demo", "search_families"):
        assert load_search(CONFIGS / f"{name}.yaml").settings.gpus_per_trial == AUTO, name
    assert load_search(CONFIGS / "search_bench.yaml").settings.gpus_per_trial == 0  # its recorded CPU comparison


@pytest.mark.parametrize(("gpus", "message"), [
    (2, "search.gpus_per_trial=2: a trial trains on one card"),
    (1.5, "search.gpus_per_trial=1.5: a trial trains on one card"),
    (-0.5, "search.gpus_per_trial=-0.5: expected auto or >= 0"),
    ("half", "search.gpus_per_trial='half': expected auto or a number of GPUs"),
    (True, "search.gpus_per_trial=True: expected auto or a number of GPUs"),
])
def test_a_bad_gpus_per_trial_is_refused_naming_the_value(gpus, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_search(_tiny_search(gpus_per_trial=gpus))


def test_gpu_memory_gb_must_be_positive():
    with pytest.raises(ConfigError, match=r"search.gpu_memory_gb=0.0: expected > 0 or null"):
        parse_search(_tiny_search(gpu_memory_gb=0))


# ------------------------------------------------------------------------------------- the largest point
def test_largest_points_of_the_default_space_put_every_size_at_its_hungry_end():
    spec = load_search(CONFIGS / "search_default.yaml")
    points = largest_points(spec)
    families = ("model.modulator.kind", "model.link.kind", "train.recipe.kind")
    combos = [tuple(p[key] for key in families) for p in points]  # one per combination of the families' options
    assert sorted(combos) == sorted(itertools.product(["none", "history"], ["elu1", "softplus", "exp"],
                                                      ["reference", "modern"]))
    for point in points:
        assert point_problem(spec, point) is None  # a point the sampler could propose
        assert point["model.core.layers"] == 6 and point["model.core.hidden_channels"] == 128
        assert point["model.core.input_kern"] == 5 and point["model.core.hidden_kern"] == 11  # unpadded input
        assert point["model.core.depth_separable"] is True and point["model.readout.samples"] == 8
        assert point["data.batch_size"] == 128
    history = next(p for p in points if p["model.modulator.kind"] == "history")
    assert history["model.modulator.history_length"] == 8 and history["model.modulator.state_dim"] == 4
    assert all(points[0][key] == spec.first_params()[key].edge_values()[0]  # the rest at their first value
               for key in ("train.lr", "model.readout.gauss_type") if key not in SIZE_KEYS)


def test_families_are_compared_and_the_plan_keeps_the_hungriest():
    spec = load_search(CONFIGS / "search_families.yaml")
    points = largest_points(spec)
    assert {(p["model.core.kind"], p["model.readout.kind"]) for p in points} == {
        ("stacked2d", "gaussian"), ("stacked2d", "factorized"), ("se2d", "gaussian"), ("se2d", "factorized")}
    shapes = [ScanShape("a", 300, 100, 80, (1, 36, 64)), ScanShape("b", 200, 100, 80, (1, 36, 64))]
    plan = memory_plan(spec, shapes)
    assert plan.compared == 4 and plan.point in points
    assert plan.largest.peak >= plan.base.peak


# ------------------------------------------------------------------------------------ trials per card
@pytest.mark.parametrize(("largest_gb", "concurrent", "cpus", "share", "says"), [
    (17.3, 32, 1, 0.25, "4 trials per 80.0 GB card: the largest point of the space needs 17.3 GB in training, "
                        "the base config 2.0 GB; card: search.gpu_memory_gb)"),  # memory: floor(72 / 17.3)
    (17.3, 2, 1, 1.0, "1 trial per 80.0 GB card: the largest point of the space needs 17.3 GB in training, the "
                      "base config 2.0 GB; max_concurrent 2 needs no more on 4 cards; memory allows 4"),
    (2.0, 64, 1, 0.125, "8 trials per 80.0 GB card: the largest point of the space needs 2.0 GB in training, the "
                        "base config 2.0 GB; 8 CPUs per card at 1 per trial; memory allows 36"),
    (2.0, 64, 4, 0.5, "2 trials per 80.0 GB card"),  # 8 CPUs per card, 4 per trial
    (2.0, 64, 0.5, 0.125, "8 CPUs per card at 0.5 per trial"),  # a trial needs a CPU all the same
    (19.0, 64, 1, 0.3333, "3 trials per 80.0 GB card"),  # Ray's 1/10000 steps: 3 x 0.3333 fit on a card
    (75.0, 64, 1, 1.0, "more than 0.9 of the card: one trial per card"),
])
def test_trials_per_card_follow_memory_cpus_and_concurrency(largest_gb, concurrent, cpus, share, says):
    settings = SearchSettings(max_concurrent=concurrent, num_trials=64, cpus_per_trial=cpus)
    card = Card(80 * GB, "search.gpu_memory_gb")
    got, line = choose_gpus_per_trial(settings, [NodeInfo("h" * 56, "10.0.0.1", 8, 0), GPU_NODE], card,
                                      _plan(largest_gb))
    assert got == share and line.startswith(f"gpus_per_trial auto -> {share:g} (")
    assert says in line and "\n" not in line


def test_at_most_16_trials_share_a_card():
    node = NodeInfo("g" * 56, "10.0.0.2", cpus=256, gpus=1)
    share, line = choose_gpus_per_trial(SearchSettings(max_concurrent=64, num_trials=64), [node],
                                        Card(141 * GB, "x"), _plan(1.0))
    assert share == 0.0625 and "16 trials per 141.0 GB card" in line and "the most; memory allows 126" in line


def test_without_gpus_auto_is_zero_and_needs_no_memory_plan():
    share, line = choose_gpus_per_trial(SearchSettings(), [NodeInfo("h" * 56, "10.0.0.1", 8, 0)], None, None)
    assert share == 0.0 and line == "gpus_per_trial auto -> 0 (the Ray cluster has no GPU: trials train on the CPU)"


def test_card_memory_comes_from_the_setting_then_the_driver_then_an_assumption(monkeypatch):
    monkeypatch.setattr("search.spec.gpu_share.local_cards", lambda: [("A100 80GB", 85 * GB), ("A100 40GB", 42 * GB)])
    assert card_memory(None) == Card(42 * GB, "the driver's A100 40GB")  # the smallest card the driver sees
    assert card_memory(141.0) == Card(141 * GB, "search.gpu_memory_gb")
    monkeypatch.setattr("search.spec.gpu_share.local_cards", lambda: [])
    assumed = card_memory(None)
    assert assumed.total == 40 * GB and "assumed 40 GB, the smallest common card" in assumed.source


# ------------------------------------------------------------------------- the driver, before any trial
@pytest.fixture
def gpu_node(ray_session, monkeypatch):
    """The session's one node as if it had 4 cards of 80 GB and 16 CPUs (its real id: checked in-process)."""
    node = NodeInfo(ray.get_runtime_context().get_node_id(), "127.0.0.1", cpus=16, gpus=4)
    monkeypatch.setattr("search.raytune.preflight.alive_nodes", lambda: [node])
    monkeypatch.setattr("search.spec.gpu_share.local_cards", lambda: [("Fake 80GB", 80 * GB)])
    return node


def _spec(tiny_data, tmp_path, **search):
    """search_tiny.yaml on the tiny scans, as the driver sees it (absolute paths, a cache under ``tmp_path``)."""
    spec = with_data(parse_search(_tiny_search(**search)), [str(tiny_data.data_dir)])
    return dataclasses.replace(spec, base=absolute_data_paths(spec.base, tmp_path))


def test_on_a_cpu_node_auto_becomes_zero_in_one_line(ray_session, tiny_data, tmp_path, capsys):
    spec = _spec(tiny_data, tmp_path)
    spec = _prepare_and_check(spec, spec.base, tmp_path / "run", progress=False)
    assert spec.settings.gpus_per_trial == 0.0
    out = capsys.readouterr().out
    assert out.count("gpus_per_trial auto") == 1 and "auto -> 0 (the Ray cluster has no GPU" in out
    assert "memory per trial" not in out  # no card, no memory check


def test_on_a_gpu_node_auto_shares_each_card_and_prints_the_memory_plan(gpu_node, tiny_data, tmp_path, capsys):
    spec = _spec(tiny_data, tmp_path, num_trials=16, max_concurrent=16)
    resolved = _prepare_and_check(spec, spec.base, tmp_path / "run", progress=False)
    assert resolved.settings.gpus_per_trial == 0.25  # 16 at once on 4 cards; 4 CPUs per card
    out = capsys.readouterr().out.splitlines()
    auto = [line for line in out if line.startswith("gpus_per_trial auto")]
    assert len(auto) == 1 and auto[0].startswith("gpus_per_trial auto -> 0.25 (4 trials per 80.0 GB card: ")
    assert "4 CPUs per card at 1 per trial" in auto[0] and "card: the driver's Fake 80GB" in auto[0]
    assert any(line.startswith("memory per trial, base config: train ") for line in out)
    largest = "memory per trial, largest point of the space (model.core.hidden_channels=8"
    assert any(line.startswith(largest) for line in out)


def test_an_explicit_zero_on_a_gpu_node_warns_that_trials_train_on_the_cpu(gpu_node, tiny_data, tmp_path, capsys):
    spec = _spec(tiny_data, tmp_path, gpus_per_trial=0)
    assert _prepare_and_check(spec, spec.base, tmp_path / "run", progress=False).settings.gpus_per_trial == 0
    err = capsys.readouterr().err
    assert "warning: gpus_per_trial 0 on a Ray cluster with 4 GPUs: trials will train on the CPU" in err


def test_a_share_too_small_for_the_base_config_is_refused_before_any_trial(gpu_node, tiny_data, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr("search.spec.gpu_share.local_cards", lambda: [("Small 4GB", 4 * GB)])
    spec = _spec(tiny_data, tmp_path, gpus_per_trial=0.125)  # 0.5 GB of a 4 GB card: less than a CUDA context
    with pytest.raises(ConfigError, match=r"gpus_per_trial=0.125 gives each trial 0.5 GB of a 4.0 GB card, not "
                                          r"even the 0.73 GB of its CUDA context"):
        _prepare_and_check(spec, spec.base, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
