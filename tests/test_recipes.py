"""Training recipes (``train.recipe``): the registry against the config's families, the modern recipe's parts
driven directly (schedule, weight decay, clipping, early stopping), its config, and fits on the tiny synthetic
scans (lr curve, the weight average in best.pt, resume). The reference recipe is pinned by tests/test_training.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch
import yaml

from search.spec.space import parse_search
from sensorium import typed
from sensorium.config import (
    ExperimentConfig, ModernRecipeConfig, TrainConfig, apply_overrides, load_config, set_value, set_values,
)
from sensorium.data import ScanData, load_data
from sensorium.errors import ConfigError
from sensorium.models import ScanMeta, build_model, scan_meta
from sensorium.training import fit
from sensorium.training.fit import steps_per_epoch
from sensorium.training.recipes import RECIPES, build_recipe
from sensorium.training.recipes.modern import DECAYED_LAYERS, warmup_cosine
from sensorium.training.rundir import RunDir

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
MODERN = {"train.recipe.kind": "modern", "train.recipe.warmup_epochs": 1, "train.max_epochs": 4}


def test_every_recipe_of_the_config_has_a_recipe_and_back():
    assert set(typed.families(get_type_hints(TrainConfig)["recipe"])) == set(RECIPES)


# ------------------------------------------------------------------------------ the modern recipe's parts
def _model_and_train(**recipe):
    """The tiny model with a history modulator (two lr groups) on one fake scan, and its modern TrainConfig."""
    cfg = set_values(load_config(TINY), {"model.modulator.kind": "history", **MODERN,
                                         **{f"train.recipe.{k}": v for k, v in recipe.items()}})
    torch.manual_seed(0)
    meta = {"a": ScanMeta(5, np.random.default_rng(0).uniform(-1, 1, (5, 3)))}
    return build_model(cfg.model, meta, (4, 36, 64)), cfg.train


def test_warmup_then_cosine_per_step_in_every_group():
    model, train = _model_and_train(warmup_epochs=2, final_lr_fraction=0.1)
    recipe = build_recipe(train, model, steps_per_epoch=3)  # 12 steps, 6 of them warm-up
    scales = [g["initial_lr"] / train.lr for g in recipe.optimizer.param_groups]  # the groups' peak lrs
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in recipe.optimizer.param_groups])
        recipe.step()
    for s, lrs in enumerate(seen):
        want = train.lr * warmup_cosine(s, total=12, warmup=6, final=0.1)
        assert lrs == pytest.approx([want * k for k in scales], rel=1e-12)  # the modulator group keeps its scale
    first = [row[0] / train.lr for row in seen]
    assert first[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])  # linear warm-up to the peak
    assert first[6] == 1.0 and all(a > b for a, b in zip(first[6:], first[7:]))  # then a decreasing cosine
    assert first[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert warmup_cosine(12, total=12, warmup=6, final=0.1) == pytest.approx(0.1)  # the end of the schedule


def test_weight_decay_shrinks_layer_weights_only():
    model, train = _model_and_train(weight_decay=0.5, warmup_epochs=0, ema_decay=0.0)
    recipe = build_recipe(train, model, steps_per_epoch=3)
    layer_weights = {id(m.weight) for m in model.modules() if isinstance(m, DECAYED_LAYERS)}
    for group in recipe.optimizer.param_groups:
        assert all((id(p) in layer_weights) == (group["weight_decay"] > 0) for p in group["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in recipe.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {n for n, p in model.named_parameters() if p.ndim == 1} <= no_decay  # biases and batch norm
    assert {"core.features.layer0.norm.weight", "readout.a.sigma", "modulator.a.history"} <= no_decay

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decay moves anything
    shrink = {names[id(p)]: 1.0 - g["lr"] * g["weight_decay"] for g in recipe.optimizer.param_groups
              for p in g["params"]}  # AdamW: p <- p * (1 - lr * weight_decay), at the group's lr
    recipe.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] * shrink[n], msg=n)
        assert (shrink[n] == 1.0) == (n in no_decay)
    assert len(no_decay) < len(before)


@pytest.mark.parametrize("clip_norm", [0.0, 0.05])
def test_clip_norm_bounds_the_global_gradient_norm(clip_norm):
    model, train = _model_and_train(clip_norm=clip_norm)
    recipe = build_recipe(train, model, steps_per_epoch=3)
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    recipe.optimizer.register_step_pre_hook(record)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    recipe.step()
    assert (norms[0] == pytest.approx(clip_norm, rel=1e-5)) if clip_norm else (norms[0] > 1.0)


@pytest.mark.parametrize("patience, scores, epochs", [
    (2, [0.1, 0.2, 0.15, 0.19, 0.3], 4),  # two epochs below the best: stop, no lr-decay rounds
    (0, [0.1, 0.2, 0.0, 0.0, 0.0], 4),  # never: the whole schedule (train.max_epochs = 4)
])
def test_modern_early_stopping_is_patience_alone(patience, scores, epochs):
    model, train = _model_and_train(patience=patience)
    recipe = build_recipe(train, model, steps_per_epoch=3)
    recipe.stopper.start(0.0)
    actions = []
    while not recipe.stopper.done:
        actions.append(recipe.end_epoch(scores[recipe.stopper.epoch]).action)
    assert actions == ["continue"] * (epochs - 1) + ["stop"]
    assert recipe.stopper.best_epoch == 2


# ------------------------------------------------------------------------------------------- the config
def test_a_kind_override_switches_to_the_family_s_own_defaults():
    cfg = apply_overrides(ExperimentConfig(), ["train.recipe.kind=modern"])
    assert cfg.train.recipe == ModernRecipeConfig()  # the reference's patience (5) is another knob: not kept
    cfg = apply_overrides(ExperimentConfig(), ["train.recipe.kind=modern", "train.recipe.ema_decay=0.99"])
    assert cfg.train.recipe.ema_decay == 0.99
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, message", [
    (["train.recipe.kind=modern", "train.recipe.ema_decy=0.9"], "unknown key 'train.recipe.ema_decy'"),
    (["train.recipe.kind=modern", "train.recipe.lr_decay_steps=2"],
     "train.recipe.lr_decay_steps: a field of train.recipe.kind reference, but here train.recipe.kind is 'modern'"),
    (["train.recipe.kind=adamw"], "train.recipe.kind='adamw': expected one of ['reference', 'modern']"),
    (["train.recipe.kind=modern", "train.recipe.ema_decay=1"], "train.recipe.ema_decay=1.0: expected 0 <= value < 1"),
    (["train.recipe.kind=modern", "train.recipe.weight_decay=-0.1"],
     "train.recipe.weight_decay=-0.1: expected a value >= 0"),
    (["train.recipe.kind=modern", "train.recipe.final_lr_fraction=2"], "train.recipe.final_lr_fraction=2.0"),
    (["train.recipe.kind=modern", "train.recipe.warmup_epochs=1.5"], "train.recipe.warmup_epochs=1.5: expected an"),
    (["train.recipe.kind=modern", "train.recipe.clip_norm=-1"], "train.recipe.clip_norm=-1.0: expected a value >= 0"),
    (["train.recipe.patience=0"], "train.recipe.patience=0: expected a value > 0"),  # the reference's: > 0
])
def test_a_bad_recipe_knob_is_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(ExperimentConfig(), overrides)
    assert message in str(err.value)


def test_a_yaml_key_of_another_recipe_names_the_key_and_the_recipe(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"recipe": {"kind": "modern", "min_lr": 1e-4}}}))
    with pytest.raises(ConfigError, match="unknown key 'train.recipe.min_lr' of train.recipe.kind='modern'"):
        load_config(path)


def test_one_decay_round_leaves_the_decay_knobs_unread_and_a_search_of_them_refused():
    cfg = set_value(ExperimentConfig(), "train.recipe.lr_decay_steps", 1)
    assert cfg.unread_keys()["train.recipe.lr_decay_factor"] == "train.recipe.lr_decay_steps"
    assert "train.recipe.min_lr" in cfg.unread_keys()
    assert not any(k.startswith("train.") for k in ExperimentConfig().unread_keys())
    raw = {"base": {"train": {"max_epochs": 6, "recipe": {"lr_decay_steps": 1}}},
           "parameters": {"train.recipe.lr_decay_factor": {"type": "uniform", "low": 0.1, "high": 0.5,
                                                           "role": "nuisance"}},
           "search": {"num_trials": 2, "max_concurrent": 1, "asha": {"grace_period": 1, "max_t": 6}}}
    with pytest.raises(ConfigError, match="searched while train.recipe.lr_decay_steps is 1, so nothing reads it"):
        parse_search(raw)


def test_the_recipe_is_searchable_with_each_option_s_own_knobs():
    recipe = {"type": "categorical", "role": "scientific", "choices": {
        "reference": {"train.recipe.lr_decay_factor": {"type": "uniform", "low": 0.1, "high": 0.5,
                                                       "role": "nuisance"}},
        "modern": {"train.recipe.weight_decay": {"type": "loguniform", "low": 1e-3, "high": 0.1, "role": "nuisance"},
                   "train.recipe.ema_decay": {"type": "categorical", "choices": [0.0, 0.99], "role": "nuisance"},
                   "train.recipe.warmup_epochs": 2},
    }}
    raw = {"base": {"train": {"max_epochs": 6}},
           "parameters": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "role": "nuisance"},
                          "train.recipe.kind": recipe},
           "search": {"num_trials": 2, "max_concurrent": 1, "asha": {"grace_period": 1, "max_t": 6}}}
    spec = parse_search(raw)
    cfg = spec.resolve({"train.lr": 0.005, "train.recipe.kind": "modern", "train.recipe.weight_decay": 0.01,
                        "train.recipe.ema_decay": 0.99, "train.recipe.warmup_epochs": 2})
    assert cfg.train.recipe == ModernRecipeConfig(weight_decay=0.01, ema_decay=0.99, warmup_epochs=2)
    raw["parameters"]["train.recipe.weight_decay"] = recipe["choices"]["modern"].pop("train.recipe.weight_decay")
    with pytest.raises(ConfigError, match="a field of train.recipe.kind modern, which is searched: nest it"):
        parse_search(raw)


# ------------------------------------------------------------------------------------- fits on tiny scans
@pytest.fixture(scope="module")
def tiny_cfg(tiny_data, tmp_path_factory) -> ExperimentConfig:
    return set_values(load_config(TINY), {"data.scans": [str(p) for p in tiny_data.scan_paths],
                                          "data.cache_dir": str(tmp_path_factory.mktemp("cache")), **MODERN})


@pytest.fixture(scope="module")
def tiny_scans(tiny_cfg) -> dict[str, ScanData]:
    return load_data(tiny_cfg.data, progress=False)


TIMES = ("epoch_seconds", "train_seconds", "data_seconds")


def _curves(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in RunDir(run_dir).read_curves()]


def _fit_keeping_improved_checkpoints(cfg: ExperimentConfig, scans, run_dir: Path):
    """fit; and at each epoch that improved, (best.pt, last.pt) as they were written (tiny: every epoch)."""
    improved = []

    def report(epoch, metrics, checkpoint_dir):
        if metrics["best_epoch"] == epoch:
            improved.append(tuple(torch.load(checkpoint_dir / name, weights_only=True)
                                  for name in ("best.pt", "last.pt")))

    result = fit(cfg, run_dir, data=scans, report=report, progress=False)
    assert improved, "no epoch improved on the untrained model"
    return result, improved


@pytest.fixture(scope="module")
def modern_run(tiny_cfg, tiny_scans, tmp_path_factory):
    """One uninterrupted modern fit, with its checkpoints at the epochs that improved."""
    return _fit_keeping_improved_checkpoints(tiny_cfg, tiny_scans, tmp_path_factory.mktemp("modern") / "run")


def test_the_lr_curve_is_the_schedule_at_each_epoch_s_first_step(modern_run, tiny_cfg, tiny_scans):
    result, _ = modern_run
    steps = steps_per_epoch(tiny_scans, tiny_cfg)
    lrs = [row["lr"] for row in _curves(result.run_dir)]
    total, warmup = 4 * steps, steps
    want = [tiny_cfg.train.lr * warmup_cosine(e * steps, total, warmup, 0.01) for e in range(result.epochs_run)]
    assert result.epochs_run == 4 and lrs == pytest.approx(want, rel=1e-9)
    assert lrs[0] == pytest.approx(tiny_cfg.train.lr / steps) and lrs[1] == tiny_cfg.train.lr


def test_best_pt_holds_the_weight_average_with_the_trained_model_s_batch_norm_statistics(modern_run, tiny_cfg,
                                                                                          tiny_scans):
    result, improved = modern_run
    model = build_model(tiny_cfg.model, scan_meta(tiny_scans), next(iter(tiny_scans.values())).in_shape)
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    buffers = [n for n, _ in model.named_buffers()]
    for best, last in improved:
        average = dict(zip(params, last["recipe"]["average"]["values"]))
        assert all(torch.equal(best["model"][n], average[n]) for n in params)
        assert not all(torch.equal(best["model"][n], last["model"][n]) for n in params)  # not the trained weights
        assert all(torch.equal(best["model"][n], last["model"][n]) for n in buffers)
    final = torch.load(RunDir(result.run_dir).best, weights_only=True)["model"]
    assert all(torch.equal(v, final[k]) for k, v in result.model.state_dict().items())


def test_without_an_average_the_trained_weights_are_evaluated(tiny_cfg, tiny_scans, tmp_path):
    cfg = set_values(tiny_cfg, {"train.recipe.ema_decay": 0.0, "train.max_epochs": 2})
    _, improved = _fit_keeping_improved_checkpoints(cfg, tiny_scans, tmp_path / "plain")
    for best, last in improved:
        assert "average" not in last["recipe"]
        assert all(torch.equal(v, last["model"][k]) for k, v in best["model"].items())


def test_a_modern_run_interrupted_and_resumed_gives_the_uninterrupted_curves(modern_run, tiny_cfg, tiny_scans,
                                                                             tmp_path, interrupted_fit):
    result, _ = modern_run
    run_dir = tmp_path / "killed"
    interrupted_fit(tiny_cfg, tiny_scans, run_dir, 2)
    resumed = fit(tiny_cfg, run_dir, data=tiny_scans, resume=run_dir, progress=False)
    assert _curves(run_dir) == _curves(result.run_dir)
    assert (resumed.best_epoch, resumed.epochs_run) == (result.best_epoch, result.epochs_run)
    for (name, a), b in zip(result.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    last, again = (torch.load(RunDir(d).last, weights_only=True)["recipe"] for d in (result.run_dir, run_dir))
    assert last["scheduler"]["last_epoch"] == again["scheduler"]["last_epoch"] == 4 * steps_per_epoch(tiny_scans,
                                                                                                      tiny_cfg)
    assert last["average"]["updates"] == again["average"]["updates"]


def test_a_run_written_before_the_recipe_was_a_family_resumes_as_the_reference(tiny_cfg, tiny_scans, tmp_path,
                                                                              interrupted_fit):
    """Its config's train.patience etc. read as train.recipe (kind reference), and its last.pt's optimizer, scheduler
    and stopper at the top level resume the reference recipe: the same curves as a run never interrupted."""
    cfg = set_values(tiny_cfg, {"train.recipe.kind": "reference", "train.max_epochs": 3})
    whole = fit(cfg, tmp_path / "whole", data=tiny_scans, progress=False)
    run_dir = tmp_path / "old"
    interrupted_fit(cfg, tiny_scans, run_dir, 1)
    last_path = RunDir(run_dir).last
    last = torch.load(last_path, weights_only=True)
    old_config = last["config"]
    old_config["train"].update(old_config["train"].pop("recipe"))
    old_config["train"].pop("kind")
    assert "patience" in old_config["train"]
    last.update(last.pop("recipe"), config=old_config)
    torch.save(last, last_path)
    assert ExperimentConfig.from_dict(old_config) == cfg
    resumed = fit(cfg, run_dir, data=tiny_scans, resume=run_dir, progress=False)
    assert _curves(run_dir) == _curves(whole.run_dir)
    assert (resumed.best_epoch, resumed.epochs_run) == (whole.best_epoch, whole.epochs_run)
