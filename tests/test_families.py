"""Architecture families as a conditional search space, end to end: two core and two readout families searched
with real Ray and Optuna on the tiny synthetic data, the report per family, export of a non-baseline family,
and a search file with a family's parameter outside its option refused before Ray starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from search.raytune.driver import run_search
from search.products.export import export_best
from search.products.report import write_report
from search.spec.space import load_run_spec, parse_search
from search.raytune.tuner import make_sampler
from search.store.study import TUNE_TRIAL_ID, load_study
from sensorium.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMBOS = [("stacked2d", "gaussian"), ("se2d", "factorized"), ("se2d", "gaussian"), ("stacked2d", "factorized")]


def _families(data_dir: Path) -> dict:
    raw = yaml.safe_load((ROOT / "configs" / "search_families.yaml").read_text())
    raw["base"] = str((ROOT / "configs" / raw["base"]).resolve())
    raw["overrides"]["data.scans"] = [str(data_dir)]
    return raw


@pytest.fixture(scope="module")
def families_run(ray_session, tiny_data, tmp_path_factory):
    raw = _families(tiny_data.data_dir)
    raw["overrides"]["train.max_epochs"] = 2
    # every pair of families once: partial points, the sampler fills each option's own parameters
    raw["search"].update(num_trials=4, max_concurrent=2, asha={"grace_period": 1, "max_t": 2},
                         start_with=[{"model.core.kind": c, "model.readout.kind": r} for c, r in COMBOS])
    run_dir = tmp_path_factory.mktemp("families") / "run"
    records = run_search(parse_search(raw), run_dir, progress=False, live_every_s=1e9)
    return run_dir, records


def test_every_family_pair_trains_with_its_own_parameters(families_run):
    run_dir, records = families_run
    assert sorted((r.params["model.core.kind"], r.params["model.readout.kind"]) for r in records) == sorted(COMBOS)
    for r in records:
        assert r.status in ("done", "stopped") and r.best_val_corr is not None, r.error
        se, factorized = r.params["model.core.kind"] == "se2d", r.params["model.readout.kind"] == "factorized"
        assert ("model.core.se_reduction" in r.params) == se and ("model.readout.samples" in r.params) != factorized
        assert r.params.get("model.shifter.enabled", True) is not factorized  # the option's fixed value
        cfg = load_config(r.path / "config.yaml")  # what the trial trained
        assert (cfg.model.core.kind, cfg.model.readout.kind) == (r.params["model.core.kind"],
                                                                 r.params["model.readout.kind"])
    assert make_sampler(load_run_spec(run_dir))._group  # TPE's grouped multivariate mode on this space
    study = load_study(run_dir)  # trained to the end: COMPLETE; stopped by ASHA: PRUNED
    status = {r.trial_id: r.status for r in records}
    assert all(t.state == {"done": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED}[
        status[t.user_attrs[TUNE_TRIAL_ID]]] for t in study.trials)


def test_report_shows_results_per_family_and_export_writes_the_family(families_run, tmp_path):
    run_dir, records = families_run
    out = write_report(run_dir, tmp_path / "report")
    text = (out / "report.md").read_text()
    for kind_key, options in (("model.core.kind", ("stacked2d", "se2d")),
                              ("model.readout.kind", ("gaussian", "factorized"))):
        assert f"## Results per `{kind_key}`" in text
        for option in options:
            assert f"| {option} | 2 | 2 |" in text
    header = (out / "trials.csv").read_text().splitlines()[0]
    assert "model.core.se_reduction" in header and "model.readout.normalize" in header
    path = export_best(run_dir, tmp_path / "best.yaml")
    best = min((r for r in records if r.ranked), key=lambda r: -r.best_val_corr)
    assert load_config(path).model.readout.kind == best.params["model.readout.kind"]


def test_a_family_parameter_outside_its_option_is_refused_before_ray_starts(tiny_data, tmp_path):
    raw = _families(tiny_data.data_dir)
    raw["parameters"]["model.readout.init_noise"] = {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2,
                                                    "role": "nuisance"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "sensorium.cli", "run", str(path), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert ("parameters.model.readout.init_noise: a field of model.readout.kind factorized, which is searched: nest "
            "it under that option of model.readout.kind") in out.stderr
    assert "ray" not in out.stdout.lower() and not (tmp_path / "run").exists()
