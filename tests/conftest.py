"""Shared fixtures: one tiny synthetic dataset and one Ray instance per test session.

Fixtures here are shared by every test module; add new shared ones with small edits.
"""

from __future__ import annotations

import os

import pytest

# Keep torch and BLAS from oversubscribing the 2 cores when Ray workers run beside pytest.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Two tiny synthetic scans (one competition scan, one pre-training scan) at 36x64, with ground truth."""
    from sensorium.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    return generate(out, SynthConfig.tiny(seed=0), progress=False)


@pytest.fixture
def make_scan(tmp_path):
    """Factory writing a small random scan folder with sensorium.data.format.write_scan; returns its path.

    ``make_scan(key="1-2-3", n_trials=40, n_neurons=6, image_shape=(36, 64), competition=False, seed=0)``.
    Neuron 0 fires once, weakly (std far below 1% of the mean std: exercises the threshold rule).
    Competition scans get a final_test tier, zeroed test responses and 32-hex trial_idx strings, as the
    real ones.
    """
    import numpy as np

    from sensorium.data.format import ScanArrays, scan_folder_name, write_scan

    def make(key="1-2-3", n_trials=40, n_neurons=6, image_shape=(36, 64), competition=False, seed=0):
        rng = np.random.default_rng(seed)
        tiers = np.array(["train", "validation", "test"] + ["final_test"] * competition)
        tiers = tiers[np.arange(n_trials) % len(tiers)]
        responses = rng.gamma(0.5, 2.0, (n_trials, n_neurons)).astype(np.float32)
        responses[:, 0] = 0
        responses[0, 0] = 1e-3
        if competition:
            responses[np.isin(tiers, ["test", "final_test"])] = 0
        trial_idx = rng.permutation(n_trials)
        scan = ScanArrays(
            images=rng.uniform(0, 255, (n_trials, 1, *image_shape)).astype(np.float32),
            responses=responses,
            behavior=rng.gamma(2.0, 1.0, (n_trials, 3)).astype(np.float32),
            pupil_center=rng.normal(30, 5, (n_trials, 2)).astype(np.float32),
            trials={
                "tiers": tiers,
                "frame_image_id": np.where(tiers == "train", np.arange(n_trials), np.arange(n_trials) % 5),
                "frame_image_class": np.array(["imagenet"] * n_trials),
                "trial_idx": np.array([f"{i:032x}" for i in trial_idx]) if competition else trial_idx,
                "frame_trial_ts": np.array([f"2019-01-01 00:00:{i % 60:02d}" for i in range(n_trials)]),
            },
            neurons={
                "unit_ids": np.arange(1, n_neurons + 1),
                "cell_motor_coordinates": rng.uniform(-300, 300, (n_neurons, 3)),
                "animal_ids": np.full(n_neurons, 1),
                "sessions": np.full(n_neurons, 2),
                "scan_idx": np.full(n_neurons, 3),
                "area": np.array(["V1"] * n_neurons),
                "layer": np.array(["L2/3"] * n_neurons),
            },
        )
        return write_scan(tmp_path / "scans" / scan_folder_name(key), scan)

    return make


@pytest.fixture(scope="session")
def interrupted_fit():
    """``interrupted_fit(cfg, scans, run_dir, epoch)``: a fit killed right after ``epoch`` (its report raises), as a
    crash would leave it: curves up to that epoch and the checkpoints written by then."""
    from sensorium.training import fit

    class Killed(Exception):
        pass

    def die_after(epoch: int):
        def report(e, metrics, checkpoint_dir):
            if e == epoch:
                raise Killed

        return report

    def run(cfg, scans, run_dir, epoch: int) -> None:
        with pytest.raises(Killed):
            fit(cfg, run_dir, data=scans, report=die_after(epoch), progress=False)

    return run


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session: 2 CPUs, a small object store, no dashboard."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 1024**2,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def finished_run(ray_session, tiny_data, tmp_path_factory):
    """A finished 2-trial search of configs/search_tiny.yaml on ``tiny_data``; returns its run folder.

    Shared by the modules that read a search back (export, retrain, report, ensemble): they write only into
    their own subfolders of it (best_config.yaml, retrain/, report/, ensemble/) or elsewhere.
    """
    from pathlib import Path

    import yaml

    from search.raytune.driver import run_search
    from search.spec.space import parse_search, with_data

    configs = Path(__file__).resolve().parent.parent / "configs"
    raw = yaml.safe_load((configs / "search_tiny.yaml").read_text())
    raw["base"] = str((configs / raw["base"]).resolve())
    raw["search"].update(num_trials=2, max_concurrent=2)
    spec = with_data(parse_search(raw), [str(tiny_data.data_dir)])
    run_dir = tmp_path_factory.mktemp("search") / "run"
    run_search(spec, run_dir, progress=False, live_every_s=1e9)
    return run_dir
