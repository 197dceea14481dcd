"""A real two-node Ray cluster on this machine (head 127.0.0.2, worker 127.0.0.3, 1 CPU each, own temp dirs
and ports): the search command joins it with ``--address``, its trials run on both nodes, and the results,
best config and submission land in the shared run folder; the pre-flight checks refuse what cannot work.

The worker node starts in its own mount namespace with an empty tmpfs over one folder (``nodelocal``): the
same path shows different contents there, like a node with its own local disk. Everything runs in
subprocesses against that cluster, so the session's in-process Ray is never touched, and the fixture stops
exactly the processes the cluster started (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cluster.local_cluster import LocalCluster  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the local cluster needs /proc")
CLI = str(Path(sys.executable).parent / "sensorium-search")
NODE_IPS = {"127.0.0.2", "127.0.0.3"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(LocalCluster, base folder, whether the worker node has a private ``base/nodelocal``)."""
    base = tmp_path_factory.mktemp("cluster")
    (base / "nodelocal").mkdir()
    isolated = LocalCluster.can_isolate()
    local = LocalCluster(nodes=2, cpus=1, private_dirs=(base / "nodelocal",) if isolated else ())
    local.start()
    try:
        yield local, base, isolated
    finally:
        local.stop()
    assert local.pids() == [], "processes of the test cluster survived stop()"


def _cli(local: LocalCluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=local.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _search(local: LocalCluster, out: Path, data: list[Path], *extra: str) -> subprocess.CompletedProcess:
    return _cli(local, "run", "configs/search_tiny.yaml", "--address", local.address, "--out", str(out),
                "--data", *map(str, data), "--quiet", *extra)


def test_wait_nodes_waits_for_the_nodes_or_times_out(cluster):
    local, _, _ = cluster
    def wait(count: str, timeout: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "cluster" / "wait_nodes.py"), local.address, count, "--timeout", timeout]
        return subprocess.run(cmd, env=local.env, capture_output=True, text=True, timeout=120)

    done = wait("2", "60")
    assert done.returncode == 0 and done.stdout.strip() == f"2 Ray nodes alive at {local.address}", done.stderr
    done = wait("3", "2")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(f"only 2 of 3 Ray nodes joined {local.address} within 2 s")


def test_search_runs_on_both_nodes_and_lands_in_the_shared_run_folder(cluster, tiny_data):
    local, base, _ = cluster
    run_dir = base / "shared" / "search"
    done = _search(local, run_dir, [tiny_data.data_dir])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    trial_dirs = sorted(run_dir.glob("trial_*"))
    assert len(trial_dirs) == 3  # configs/search_tiny.yaml: 3 trials, 2 at a time, 1 CPU each
    where = {}
    for trial in trial_dirs:
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert rows, f"{trial.name} reported nothing"
        where[trial.name] = {row["node_ip"] for row in rows}  # Tune adds the node of each result
        assert list(trial.glob("checkpoint_*/best.pt")), f"{trial.name}: no checkpoint in the shared folder"
    assert set().union(*where.values()) == NODE_IPS, where

    done = _cli(local, "export", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "best_config.yaml").is_file()

    done = _cli(local, "retrain", str(run_dir), "--seeds", "1", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    for key in tiny_data.competition_keys:
        for name in ("submission_file_live_test.csv", "submission_file_final_test.csv"):
            assert (run_dir / "retrain" / key / name).is_file()


@pytest.fixture(scope="module")
def refusals(cluster, tiny_data):
    """Three searches the pre-flight checks must refuse, started at once against the cluster:
    name -> (run folder or data path, exit code, last stderr line). The private-mount cases need root."""
    local, base, isolated = cluster
    cases = {"resources": (base / "shared" / "search-too-big", [tiny_data.data_dir], ["--cpus-per-trial", "64"])}
    if isolated:
        scan = shutil.copytree(tiny_data.scan_paths[0], base / "nodelocal" / tiny_data.scan_paths[0].name)
        cases["run_folder"] = (base / "nodelocal" / "search", [tiny_data.data_dir], [])
        cases["data"] = (base / "shared" / "search-local-data", [scan], [])
    procs = {
        name: subprocess.Popen(
            [CLI, "run", "configs/search_tiny.yaml", "--address", local.address, "--out", str(out),
             "--data", *map(str, data), "--quiet", *extra],
            env=local.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for name, (out, data, extra) in cases.items()
    }
    results = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        path = cases[name][1][0] if name == "data" else cases[name][0]
        results[name] = (path, proc.returncode, (err.strip().splitlines() or [""])[-1])
    return results


def test_preflight_refuses_resources_no_node_has(refusals):
    _, code, error = refusals["resources"]
    assert code == 2
    assert error.startswith("error: a trial needs CPU 64 GPU 0 on one node, but no alive node has that"), error
    assert all(f"{ip} (" in error for ip in NODE_IPS)


def test_preflight_refuses_a_run_folder_the_worker_node_cannot_see(refusals):
    if "run_folder" not in refusals:
        pytest.skip("no private mounts here (needs root and unshare)")
    run_dir, code, error = refusals["run_folder"]
    assert code == 2
    assert error.startswith(f"error: run folder {run_dir} is not visible from node(s) 127.0.0.3 ("), error
    assert "127.0.0.2" not in error
    assert not list(run_dir.glob("trial_*")) and not list(run_dir.glob(".preflight-*"))


def test_preflight_refuses_data_the_worker_node_cannot_read(refusals):
    if "data" not in refusals:
        pytest.skip("no private mounts here (needs root and unshare)")
    scan, code, error = refusals["data"]
    assert code == 2
    assert error.startswith(f"error: data {scan} is not readable on node(s) 127.0.0.3 ("), error
    assert "(missing)" in error


def test_ray_up_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(raw))
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if " start " in cmd or "search.sh" in cmd)
    assert any("cluster/search.sh auto configs/search_default.yaml" in cmd for cmd in starts)
    assert (ROOT / "configs" / "search_default.yaml").is_file()


@pytest.mark.parametrize("script", ["search.sh", "slurm-symmetric.sbatch", "slurm-head-worker.sbatch"])
def test_cluster_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(ROOT / "cluster" / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
