"""After a search (conftest's ``finished_run``): export -> train round trip, the seed-ensemble retrain with
scored submissions, the report."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.products.export import export_best, read_best_config
from search.products.report import boundary_check, write_report
from search.store.results import best_trial, load_trials
from search.products.retrain import retrain
from search.raytune.trainable import train_seed
from search.spec.space import load_run_spec, parse_search
from sensorium.cli import main
from sensorium.config import config_hash, load_config, set_value
from sensorium.data import load_data
from sensorium.errors import UserError
from sensorium.submission import GROUND_TRUTH_FILES, read_submission
from sensorium.training.fit import fit


def test_export_then_train_reproduces_the_config_hash(finished_run, tmp_path):
    path = export_best(finished_run)
    cfg, prov = read_best_config(path)
    best = best_trial(load_trials(finished_run))
    assert prov["trial_id"] == best.trial_id and prov["best_val_corr"] == pytest.approx(best.best_val_corr)
    assert prov["best_epoch"] == best.best_epoch and Path(prov["checkpoint"]).is_file()
    assert prov["config_hash"] == config_hash(cfg)
    assert {"torch", "ray", "optuna"} <= set(prov["versions"])
    assert cfg.train.lr == pytest.approx(best.params["train.lr"])
    # the file goes straight back to `train`, which writes the same resolved config
    assert main(["train", str(path), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert config_hash(load_config(tmp_path / "again" / "config.yaml")) == prov["config_hash"]


def test_export_reseed_top_picks_the_best_mean_over_seeds_and_records_it(finished_run, tmp_path, capsys):
    out = tmp_path / "best_config.yaml"
    assert main(["export", str(finished_run), "--out", str(out), "--reseed-top", "2", "--seeds", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    cfg, prov = read_best_config(out)
    reseed = prov["reseed"]
    records = load_trials(finished_run)
    single = best_trial(records)
    rows = reseed["candidates"]
    assert (reseed["top"], reseed["seeds"]) == (2, 2) and len(rows) == 2
    assert sorted(row["single_seed_rank"] for row in rows) == [1, 2]
    for row in rows:
        record = next(r for r in records if r.trial_id == row["trial_id"])
        own = row["search_run"]
        assert own["counted"] == (record.status == "done") and own["best_val_corr"] == record.best_val_corr
        reseeded = [s for s in row["scores"] if s != own["seed"]]
        assert reseeded == [own["seed"] + 1, own["seed"] + 2]  # N more seeds, none the search's own
        assert len(row["scores"]) == 2 + own["counted"]
        for s in reseeded:  # each a real run of the trial's config with that seed
            run = finished_run / "reseed" / f"{row['trial_id']}_seed_{s}"
            assert load_config(run / "config.yaml").seed == s
            assert row["scores"][s] == pytest.approx(json.loads((run / "metrics.json").read_text())["best_val_corr"])
        assert row["mean"] == pytest.approx(np.mean(list(row["scores"].values())))
        assert row["sd"] == pytest.approx(np.std(list(row["scores"].values()), ddof=1))
    # the pick is the best mean, and its config is what best_config.yaml holds
    assert rows[0]["mean"] >= rows[1]["mean"] and reseed["pick"] == rows[0]["trial_id"] == prov["trial_id"]
    picked = next(r for r in records if r.trial_id == prov["trial_id"])
    assert config_hash(cfg) == config_hash(load_run_spec(finished_run).resolve(picked.params))
    # how far the search's single-seed pick was from the mean pick
    where = [row["trial_id"] for row in rows].index(single.trial_id)
    assert reseed["single_seed_pick"] == {"trial_id": single.trial_id, "rank_by_mean": where + 1,
                                          "mean": rows[where]["mean"],
                                          "below_pick": rows[0]["mean"] - rows[where]["mean"]}
    assert single.trial_id in printed and f"{rows[0]['mean']:.4f}" in printed
    assert ("also has the best mean" if where == 0 else "ranks 2 of 2 by mean") in printed


@pytest.mark.parametrize(("options", "message"), [
    (["--seeds", "3"], "--seeds: only with --reseed-top K"),
    (["--reseed-top", "3"], "--reseed-top 3: only 2 trial(s) of "),
    (["--reseed-top", "2", "--pick", "cheapest"], "--reseed-top and --pick cheapest exclude each other"),
])
def test_export_refuses_bad_reseed_options_with_one_line(finished_run, tmp_path, capsys, options, message):
    assert main(["export", str(finished_run), "--out", str(tmp_path / "b.yaml"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and not (tmp_path / "b.yaml").exists()


def test_provenance_key_is_only_accepted_in_best_config_files(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "provenance": {"trial_id": "abc"}}))
    with pytest.raises(UserError, match="unknown key 'provenance'"):
        load_config(bad)
    with pytest.raises(UserError, match="not a best_config.yaml"):
        read_best_config(bad)


def test_retrain_ensembles_seeds_and_scores_every_competition_submission(finished_run, tiny_data, tmp_path):
    summary = retrain(finished_run, seeds=2, progress=False)  # 2 Ray tasks at once, 1 CPU each
    out = Path(summary["out"])
    key = tiny_data.competition_keys[0]
    assert summary["seeds"] == [0, 1] and [m["seed"] for m in summary["members"]] == [0, 1]
    assert all(set(m) == {"seed", "run_dir", "best_val_corr", "best_epoch", "epochs", "seconds", "files"}
               for m in summary["members"])
    # a task trains what an in-process fit of the seed's config trains
    seed_cfg = load_config(Path(summary["members"][0]["run_dir"]) / "config.yaml")
    assert seed_cfg.train.threads == 1 and seed_cfg.train.device == "cpu"
    again = fit(seed_cfg, tmp_path / "in_process", progress=False)
    assert again.best_epoch == summary["members"][0]["best_epoch"]
    assert again.best_val_corr == pytest.approx(summary["members"][0]["best_val_corr"], abs=1e-6)
    scan = load_data(seed_cfg.data, progress=False)[key]
    assert set(summary["ensemble_files"]) == {f"{key}/submission_file_live_test.csv",
                                              f"{key}/submission_file_final_test.csv"}
    for name in ("submission_file_live_test.csv", "submission_file_final_test.csv"):
        trials, _, neurons, ensemble = read_submission(out / key / name)
        members = [read_submission(out / f"seed_{s}" / "submission" / key / name) for s in summary["seeds"]]
        for m_trials, _, m_neurons, _ in members:
            assert list(m_trials) == list(trials) and list(m_neurons) == list(neurons)
        # the float32 predictions summed in float64 in seed order, divided by the seeds: bit for bit the same file
        # as when the tasks returned their predictions to the driver (they come from the seeds' .npy files now)
        seeds = [m[3].astype(np.float32) for m in members]  # a CSV holds float32 values in their shortest text
        expected = (sum(v.astype(np.float64) for v in seeds) / len(seeds)).astype(np.float32)
        np.testing.assert_array_equal(ensemble.astype(np.float32), expected)
        tier = {"submission_file_live_test.csv": "test", "submission_file_final_test.csv": "final_test"}[name]
        row_of = {t: i for i, t in enumerate(trials)}
        for s, (_, _, _, member) in zip(summary["seeds"], members):  # each seed's saved predictions are its CSV's
            saved = out / f"seed_{s}" / "predictions" / f"{key}.{tier}"
            values, rows = np.load(f"{saved}.npy"), np.load(f"{saved}.rows.npy")
            assert values.dtype == np.float32 and np.array_equal(rows, scan.tier_indices(tier))
            in_file = [row_of[str(t)] for t in np.asarray(scan.trial_ids)[rows]]
            np.testing.assert_array_equal(values, member[in_file].astype(np.float32))
    assert summary["ground_truth"] == str(tiny_data.ground_truth_dir)  # found next to the data
    assert summary["ground_truth_files"] == {
        key: {tier: str(tiny_data.ground_truth_dir / key / name) for tier, name in GROUND_TRUTH_FILES.items()}}
    scores = summary["scores"]
    assert set(scores) == {"ensemble", *(f"seed_{s}" for s in summary["seeds"])}
    assert set(scores["ensemble"][key]) == {"test", "final_test"}
    assert -1 <= scores["ensemble"][key]["test"]["single_trial_correlation"] <= 1
    assert key in summary["oracle"]
    assert json.loads((out / "retrain.json").read_text())["seeds"] == summary["seeds"]
    with pytest.raises(UserError, match="already holds a retrain"):
        retrain(finished_run, seeds=1, progress=False)


def _arrays(value):
    """The numpy arrays anywhere in a nested dict / list / tuple."""
    if isinstance(value, np.ndarray):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [a for item in items for a in _arrays(item)]


def test_a_seed_task_returns_a_small_summary_and_leaves_its_predictions_on_disk(finished_run, tiny_data, tmp_path):
    import ray

    cfg = set_value(read_best_config(export_best(finished_run))[0], "train.max_epochs", 1)
    seed_dir = tmp_path / "seed_0"
    task = ray.remote(num_cpus=1, max_retries=0)(train_seed)
    done = ray.get(task.remote(cfg.to_dict(), str(seed_dir), 1.0, 0.0))  # what passes through the object store
    assert len(pickle.dumps(done)) < 1_000_000 and not _arrays(done)  # paths and scores: no data, whatever its size
    assert set(done) == {"member", "predictions", "started", "device", "host"}
    key = tiny_data.competition_keys[0]
    assert set(done["predictions"]) == set(done["member"]["files"]) == {
        f"{key}/submission_file_live_test.csv", f"{key}/submission_file_final_test.csv"}
    for rel, paths in done["predictions"].items():
        assert Path(paths["values"]).parent == seed_dir / "predictions"
        values = np.load(paths["values"], mmap_mode="r")
        csv_values = read_submission(done["member"]["files"][rel])[3]
        assert values.shape == csv_values.shape and len(np.load(paths["rows"])) == len(values)


def test_retrain_refuses_ground_truth_that_matches_nothing_before_training(finished_run, tiny_data, tmp_path, capsys):
    wrong = tmp_path / "gt"
    wrong.mkdir()
    other = next(k for k in tiny_data.keys if k not in tiny_data.competition_keys)  # a pre-training scan's trials
    shutil.copy(tiny_data.ground_truth_dir / other / GROUND_TRUTH_FILES["test"], wrong / "ground_truth_file_test.csv")
    assert main(["retrain", str(finished_run), "--seeds", "1", "--out", str(tmp_path / "r"), "--quiet",
                 "--ground-truth", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ground-truth {wrong}: no ground-truth CSV there holds the test or final_test "
                          f"trials of scan {tiny_data.competition_keys[0]}; tried {wrong / 'ground_truth_file_test.csv'}")
    assert err.count("\n") == 1 and not (tmp_path / "r" / "seed_0").exists()


def test_retrain_on_train_plus_validation_and_device_are_recorded_choices(finished_run, tmp_path, capsys):
    best = export_best(finished_run)
    prov = read_best_config(best)[1]
    assert main(["retrain", str(best), "--out", str(tmp_path / "tv"), "--seeds", "1", "--train-on-validation",
                 "--device", "auto", "--cpus-per-seed", "2"]) == 0
    assert "retrain: seed 0 on" in capsys.readouterr().err  # progress: where, when and the best epoch
    summary = json.loads((tmp_path / "tv" / "retrain.json").read_text())
    epochs = max(1, prov["best_epoch"])
    assert summary["choices"] == {"train_on_validation": True, "max_epochs": epochs, "device": "auto"}
    run_cfg = load_config(Path(summary["members"][0]["run_dir"]) / "config.yaml")
    assert run_cfg.train.train_on_validation and run_cfg.train.max_epochs == epochs
    assert run_cfg.train.device == "cpu" and run_cfg.train.threads == 2  # auto with no GPU given: the CPU


@pytest.mark.parametrize(("options", "message"), [
    # 1 seed on the session's 2-CPU Ray: 2 CPUs by default
    (["--gpus-per-seed", "1"], "--cpus-per-seed 2 --gpus-per-seed 1: a trial needs CPU 2 GPU 1 on one node, but no"),
    (["--device", "cuda"], "--gpus-per-seed 1: a trial needs"),  # cuda asks for a GPU per seed by default
    (["--device", "cuda:1", "--gpus-per-seed", "0"], "train.device='cuda:1' needs a GPU, but --gpus-per-seed is 0"),
    (["--cpus-per-seed", "64"], "--cpus-per-seed 64 --gpus-per-seed 0"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
])
def test_retrain_refuses_impossible_resources_with_one_line(finished_run, tmp_path, capsys, options, message):
    assert main(["retrain", str(finished_run), "--seeds", "1", "--out", str(tmp_path / "r"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "seed_0").exists()


def test_report_writes_table_summary_and_plots(finished_run):
    out = write_report(finished_run)
    with open(out / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    records = load_trials(finished_run)
    assert [r["trial_id"] for r in rows] == [r.trial_id for r in records]
    assert {"train.lr", "model.core.hidden_channels", "status", "best_val_corr", "best_epoch"} <= set(rows[0])
    text = (out / "report.md").read_text()
    assert best_trial(records).trial_id in text and "Boundary check" in text
    for name in ("history.png", "curves.png", "param_train.lr.png"):
        assert (out / name).stat().st_size > 1000


def test_boundary_check_flags_a_best_value_at_the_edge(finished_run):
    spec = parse_search(yaml.safe_load((finished_run / "search.yaml").read_text()))
    best = best_trial(load_trials(finished_run))
    lr = next(p for p in spec.params if p.key == "train.lr")
    best.params = {**best.params, "train.lr": lr.high * 0.99}
    assert any("train.lr" in line and "high end" in line for line in boundary_check(spec, best))
    best.params = {**best.params, "train.lr": (lr.low * lr.high) ** 0.5}  # the middle on a log scale
    assert not boundary_check(spec, best)


def test_demo_smoke_runs_every_stage_and_scores_against_the_oracle(ray_session, tmp_path):
    from search.products.demo import run_demo

    summary = run_demo(tmp_path / "demo", smoke=True, seeds=2)
    assert summary["trials"]["run"] == summary["trials"]["requested"] == 3
    assert set(summary["seconds"]) == {"synth", "search", "export", "retrain", "baseline", "ensemble", "report",
                                       "total"}
    table = summary["table"]
    for label in ("oracle (noise-free truth)", "baseline, untuned (1 seed)", "tuned, seed 0", "tuned, ensemble of 2",
                  "best single trial", "trial ensemble of "):
        assert label in table
    assert set(summary["scores"]["trials"]) == {"trial_ensemble", "best_trial", "seed_ensemble"}
    assert Path(summary["report"]).is_file() and Path(summary["demo_md"]).is_file()
    g = summary["budgets"]  # the compute each model had, stated in demo.md
    assert g["search"]["epochs"] >= 3 and g["search"]["train_s"] > 0
    assert g["retrain"]["seeds"] == 2 and g["baseline"]["seeds"] == 1
    assert g["retrain"]["epochs"] >= 2 and g["baseline"]["seconds"] > 0
    assert f"the search {g['search']['epochs']} trial-epochs" in Path(summary["demo_md"]).read_text()
    key = next(iter(summary["oracle"]))
    assert (tmp_path / "demo" / "search" / "retrain" / key / "submission_file_final_test.csv").is_file()
    assert (tmp_path / "demo" / "baseline" / key / "submission_file_live_test.csv").is_file()
    assert (tmp_path / "demo" / "search" / "ensemble" / key / "submission_file_live_test.csv").is_file()
