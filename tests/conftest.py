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
