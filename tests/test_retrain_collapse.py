"""retrain leaves a collapsed seed out of its ensemble: the rule on numbers, then for real (a seed given an absurd
learning rate with ``--seed-set`` keeps its untrained model, as the diverged seed 43 of issue 20 did)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from search.products.retrain import (
    COLLAPSE_FRACTION,
    MEMBERS_FILE,
    collapse_reasons,
    labelled,
    pick_members,
)
from sensorium.cli import main
from sensorium.config import load_config
from sensorium.errors import UserError
from sensorium.submission import read_submission


def _members(*scores_and_epochs):
    return [{"seed": s, "best_val_corr": v, "best_epoch": e} for s, (v, e) in enumerate(scores_and_epochs)]


@pytest.mark.parametrize(("members", "train_on_validation", "flagged"), [
    # seed noise, real scan and tiny test scans (their widest spread over 6 seeds): nothing flagged
    (_members((0.285, 8), (0.280, 7)), False, {}),
    (_members((0.0896, 2), (0.0461, 4), (0.0406, 3), (0.0932, 3), (0.1259, 2), (0.1057, 4)), False, {}),
    # issue 20: the untrained model kept, scoring next to nothing
    (_members((0.285, 8), (0.003, 0)), False, {1: "best epoch 0"}),
    # the untrained model kept though it scores well (tiny scans: an untrained model can reach 0.08)
    (_members((0.0896, 2), (0.0841, 0), (0.0406, 3)), False, {1: "best epoch 0"}),
    # trained, but far below the best sibling (not the mean: one bad sibling does not lower the bar)
    (_members((0.30, 9), (0.05, 3), (0.01, 0)), False, {1: "< 0.2 x 0.3000 (seed 0", 2: "best epoch 0"}),
    # no better than a constant prediction, or not finite
    (_members((0.285, 8), (-0.006, 3)), False, {1: "<= 0: no better than a constant"}),
    (_members((0.285, 8), (math.nan, 3)), False, {1: "nan <= 0"}),
    # one seed: nothing to compare with, but the untrained model or a non-positive score are still flagged
    (_members((0.01, 3)), False, {}),
    (_members((0.2, 0)), False, {0: "best epoch 0"}),
    (_members((0.0, 4)), False, {0: "<= 0"}),
    # --train-on-validation: fit keeps the last epoch, so epoch 0 says nothing; the in-sample fit is compared
    (_members((0.45, 0), (0.44, 0)), True, {}),
    (_members((0.45, 6), (0.02, 6)), True, {1: "< 0.2 x 0.4500"}),
])
def test_collapse_rule_on_numbers(members, train_on_validation, flagged):
    reasons = collapse_reasons(members, train_on_validation)
    assert set(reasons) == {f"seed_{seed}" for seed in flagged}
    for seed, words in flagged.items():
        assert words in reasons[f"seed_{seed}"]


def test_the_best_member_is_never_below_its_siblings_and_the_bar_is_a_fraction_of_the_best():
    best = 0.3
    just_above, just_below = _members((best, 5), (COLLAPSE_FRACTION * best + 1e-9, 5)), _members(
        (best, 5), (COLLAPSE_FRACTION * best - 1e-9, 5))
    assert collapse_reasons(just_above) == {} and set(collapse_reasons(just_below)) == {"seed_1"}


def test_pick_members_leaves_collapsed_ones_out_keeps_a_lone_one_and_refuses_all(tmp_path, capsys):
    members = _members((0.285, 8), (0.003, 0), (0.279, 7))
    picked = pick_members(members, collapse_reasons(members), tmp_path)
    assert list(picked) == ["seed_1"] and picked["seed_1"]["left_out"] and "best epoch 0" in picked["seed_1"]["reason"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: retrain: seed 1 left out of the ensemble: best val "
                                                   "corr 0.0030 at epoch 0 (siblings: seed 0 0.2850, seed 2 0.2790)")
    lone = _members((0.2, 0))
    picked = pick_members(lone, collapse_reasons(lone), tmp_path)
    assert picked["seed_0"]["left_out"] is False  # nothing to replace it with
    assert "seed 0 kept though collapsed (the only seed)" in capsys.readouterr().err
    both = _members((0.01, 0), (0.0, 0))
    with pytest.raises(UserError, match=r"^all 2 seeds collapsed \(seed 0 0.0100 at epoch 0; seed 1 0.0000 at "
                                        r"epoch 0\): no ensemble written") as err:
        pick_members(both, collapse_reasons(both), tmp_path)
    assert "\n" not in str(err.value)


def test_labelled_names_the_ensemble_seeds_and_the_left_out_ones():
    summary = {"seeds": [0, 1, 2], "ensemble_seeds": [0, 2], "scores": {"ensemble": 1, "seed_0": 2, "seed_1": 3},
               "collapsed": [{"seed": 1, "left_out": True}]}
    assert list(labelled(summary)["scores"]) == ["ensemble of seeds 0, 2", "seed_0", "seed_1 (left out)"]
    assert labelled({"seeds": [0], "scores": None})["scores"] is None


def test_retrain_leaves_a_collapsed_seed_out_of_the_ensemble(finished_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    # lr 100 for seed 1 only: its first epoch kills the output (val corr 0), no epoch beats the untrained model
    assert main(["retrain", str(finished_run), "--seeds", "3", "--out", str(out), "--quiet",
                 "--seed-set", "1", "train.lr=100"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "retrain.json").read_text())
    by_seed = {m["seed"]: m for m in summary["members"]}
    assert by_seed[1]["best_epoch"] == 0 and by_seed[0]["best_epoch"] > 0 and by_seed[2]["best_epoch"] > 0
    assert load_config(out / "seed_1" / "config.yaml").train.lr == 100  # the override reached seed 1 only
    assert load_config(out / "seed_0" / "config.yaml").train.lr == load_config(out / "seed_2" / "config.yaml").train.lr
    assert summary["choices"]["seed_overrides"] == {"1": {"train.lr": "100"}}
    # named, with its score and its siblings', on the console and in retrain.json
    warnings = [line for line in captured.err.splitlines() if "left out" in line]
    assert warnings == [f"warning: retrain: seed 1 left out of the ensemble: best val corr "
                        f"{by_seed[1]['best_val_corr']:.4f} at epoch 0 (siblings: seed 0 "
                        f"{by_seed[0]['best_val_corr']:.4f}, seed 2 {by_seed[2]['best_val_corr']:.4f}): "
                        f"{summary['collapsed'][0]['reason']}"]
    assert summary["seeds"] == [0, 1, 2] and summary["ensemble_seeds"] == [0, 2]
    assert [(c["seed"], c["left_out"]) for c in summary["collapsed"]] == [(1, True)]
    assert "best epoch 0" in summary["collapsed"][0]["reason"]
    assert summary["collapse_rule"]["fraction_of_best_sibling"] == COLLAPSE_FRACTION
    # the ensemble is the good seeds' average: bit for bit, and not the average of all three
    key = tiny_data.competition_keys[0]
    for name in ("submission_file_live_test.csv", "submission_file_final_test.csv"):
        ensemble = read_submission(out / key / name)[3].astype(np.float32)
        seeds = {s: read_submission(out / f"seed_{s}" / "submission" / key / name)[3].astype(np.float32)
                 for s in (0, 1, 2)}
        good = ((seeds[0].astype(np.float64) + seeds[2]) / 2).astype(np.float32)
        np.testing.assert_array_equal(ensemble, good)
        every = (sum(v.astype(np.float64) for v in seeds.values()) / 3).astype(np.float32)
        assert not np.allclose(ensemble, every)
    beside = json.loads((out / key / MEMBERS_FILE).read_text())  # beside the CSVs: which seeds they average
    assert beside["seeds"] == [0, 2] and [c["seed"] for c in beside["collapsed"]] == [1]
    # the score table labels the models; the left-out seed is still scored, to show what it would have cost
    assert "ensemble of seeds 0, 2" in captured.out and "seed_1 (left out)" in captured.out
    assert set(summary["scores"]) == {"ensemble", "seed_0", "seed_1", "seed_2"}
    assert "the ensemble of seeds 0, 2" in captured.out.splitlines()[-1]


def test_retrain_stops_when_every_seed_collapsed_and_writes_no_ensemble(finished_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    fast = ["train.max_epochs=1", "train.lr=100"]
    assert main(["retrain", str(finished_run), "--seeds", "2", "--out", str(out), "--quiet",
                 *(a for s in (0, 1) for item in fast for a in ("--seed-set", str(s), item))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: all 2 seeds collapsed (seed 0 ") and err.count("\n") == 1
    key = tiny_data.competition_keys[0]
    assert not (out / "retrain.json").exists() and not (out / key).exists()
    assert (out / "seed_0" / "checkpoints" / "best.pt").is_file()  # the seeds' own runs stay, to look into


@pytest.mark.parametrize(("options", "message"), [
    (["--seed-set", "5", "train.lr=0.01"], "--seed-set 5: not a seed of this retrain (seeds 0 to 1)"),
    (["--seed-set", "x", "train.lr=0.01"], "--seed-set x train.lr=0.01: SEED must be an integer"),
    (["--seed-set", "1", "seed=7"], "the seed and data.scans are the same for every seed"),
    (["--seed-set", "1", "train.nope=1"], "train.nope"),
])
def test_seed_set_is_checked_before_training(finished_run, tmp_path, capsys, options, message):
    assert main(["retrain", str(finished_run), "--seeds", "2", "--out", str(tmp_path / "r"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
