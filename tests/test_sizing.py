"""Per-trial sizing of the cluster recipes (cluster/sizing.py): the formula, its refusals, and that each
recipe's Ray request matches its nodes exactly.

The SLURM scripts run end to end with stand-in ``srun``/``scontrol``, a stand-in venv and stand-in
``search.sh``/``wait_nodes.py`` that only record their arguments: cheap, and it checks the wiring from the
``#SBATCH`` header through SLURM's environment variables to the numbers Ray and the search receive.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cluster.sizing import Sizing, size_trials, trials_per_card  # noqa: E402

SIZING = ROOT / "cluster" / "sizing.py"
SCRIPTS = ("slurm-symmetric.sbatch", "slurm-head-worker.sbatch")
G5_2XLARGE = (8, 1)  # vCPUs, GPUs of the instance type aws-gpu.yaml asks for
TRIAL_ARGS = re.compile(r"--cpus-per-trial (\S+) --gpus-per-trial (\S+) --concurrent (\S+)")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SIZING), *args], capture_output=True, text=True, timeout=60)


def test_formula_with_gpus():
    assert size_trials(32, 4, nodes=2, trials_per_gpu=4) == Sizing(2, 0.25, 32)  # slurm-symmetric
    assert size_trials(8, 1, nodes=3, trials_per_gpu=2) == Sizing(4, 0.5, 6)  # slurm-head-worker
    assert size_trials(8, 1, nodes=4, trials_per_gpu=4) == Sizing(2, 0.25, 16)  # aws-gpu.yaml
    assert size_trials(30, 4, trials_per_gpu=4) == Sizing(1, 0.25, 16)  # CPUs rounded down, never above
    assert size_trials(12, 1, trials_per_gpu=3).gpus_per_trial == 0.3333  # Ray's 1/10000 steps, 3 fit


def test_cpu_only_nodes_run_cpu_trials():
    assert size_trials(32, 0, nodes=2) == Sizing(2, 0.0, 32)
    assert size_trials(32, 0, nodes=2, trials_per_gpu=16) == Sizing(2, 0.0, 32)  # ignored without GPUs
    assert size_trials(9, 0, nodes=3, cpus_per_trial=4) == Sizing(4, 0.0, 6)


def test_trials_per_card_from_memory_follow_the_search_s_auto_rule():
    """The stdlib rule here and the search's ``gpus_per_trial: auto`` (search/spec/gpu_share.py) choose the same k on
    one node whose trials fill it (1 CPU each, as many at once as fit)."""
    from search.spec.gpu_share import GB, MAX_TRIALS_PER_CARD, USABLE, Card, MemoryPlan, choose_gpus_per_trial
    from search.raytune.preflight import NodeInfo
    from search.spec.settings import SearchSettings
    from sensorium.memory import MemoryEstimate

    import cluster.sizing as sizing

    assert (sizing.USABLE, sizing.MAX_TRIALS_PER_CARD) == (USABLE, MAX_TRIALS_PER_CARD)
    for card_gb, peak_gb, cpus, gpus in [(80, 17.3, 32, 4), (80, 6.8, 32, 4), (40, 6.8, 64, 8), (141, 2.0, 256, 1),
                                         (80, 75.0, 16, 2), (40, 11.0, 12, 4)]:
        k = trials_per_card(card_gb, peak_gb, cpus // gpus)
        est = MemoryEstimate(context=0, data=0, state=0, activations=round(peak_gb * GB), scoring=0, eval_chunk=64,
                             batch_size=128)
        share, _ = choose_gpus_per_trial(SearchSettings(max_concurrent=cpus, num_trials=cpus),
                                         [NodeInfo("n" * 56, "10.0.0.1", cpus, gpus)], Card(card_gb * GB, "x"),
                                         MemoryPlan(est, est, {}, 1))
        assert size_trials(cpus, gpus, trials_per_gpu=k).gpus_per_trial == share, (card_gb, peak_gb, cpus, gpus)
    assert trials_per_card(80, 17.3, 8) == 4 and trials_per_card(80, 6.8, 8) == 8 and trials_per_card(80, 90, 8) == 1


def test_cli_prints_shell_assignments():
    done = _cli("--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "4", "--nodes", "2")
    assert done.returncode == 0 and done.stdout == "cpus_per_trial=2 gpus_per_trial=0.25 concurrent=32\n"
    done = _cli("--node-cpus", "32", "--node-gpus", "0")
    assert done.stdout == "cpus_per_trial=2 gpus_per_trial=0 concurrent=16\n"
    done = _cli("--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "auto", "--card-gb", "80",
                "--peak-gb", "17.3")
    assert done.returncode == 0 and done.stdout == "cpus_per_trial=2 gpus_per_trial=0.25 concurrent=16\n"
    done = _cli("--help")
    assert done.returncode == 0 and "--trials-per-gpu" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "16"],
     "error: --node-cpus 32 is fewer than --node-gpus 4 x --trials-per-gpu 16 = 64 trials per node"),
    (["--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "0"],
     "error: --trials-per-gpu 0: expected a whole number >= 1"),
    (["--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "0.5"],
     "error: argument --trials-per-gpu: expected a whole number, got '0.5'"),
    (["--node-cpus", "0", "--node-gpus", "0"], "error: --node-cpus 0: expected a whole number >= 1"),
    (["--node-cpus", "8", "--node-gpus", "-1"], "error: --node-gpus -1: expected a whole number >= 0"),
    (["--node-cpus", "8", "--node-gpus", "1", "--nodes", "0"], "error: --nodes 0: expected a whole number >= 1"),
    (["--node-cpus", "1", "--node-gpus", "0"], "error: --cpus-per-trial 2 is more than --node-cpus 1"),
    (["--node-cpus", "32", "--node-gpus", "4", "--cpus-per-trial", "4"],
     "error: --cpus-per-trial 4: only for CPU-only nodes (--node-gpus 0)"),
    (["--node-gpus", "4"], "error: the following arguments are required: --node-cpus"),
    (["--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "auto", "--card-gb", "80"],
     "error: --trials-per-gpu auto needs --card-gb and --peak-gb, and they are only for it"),
    (["--node-cpus", "32", "--node-gpus", "4", "--card-gb", "80", "--peak-gb", "6"],
     "error: --trials-per-gpu auto needs --card-gb and --peak-gb, and they are only for it"),
    (["--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "auto", "--card-gb", "80", "--peak-gb", "0"],
     "error: --peak-gb 0.0: expected a number of GB > 0"),
    (["--node-cpus", "32", "--node-gpus", "4", "--trials-per-gpu", "auto", "--card-gb", "many", "--peak-gb", "6"],
     "error: argument --card-gb: expected a number, got 'many'"),
])
def test_cli_refuses_invalid_input_in_one_line(args, message):
    done = _cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


def test_ray_up_numbers_follow_the_formula():
    raw = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    types = raw["available_node_types"]
    assert {t["node_config"]["InstanceType"] for t in types.values()} == {"g5.2xlarge"}
    nodes = 1 + types["gpu_worker"]["min_workers"]
    assert types["gpu_worker"]["max_workers"] == types["gpu_worker"]["min_workers"]  # a fixed-size cluster
    (cpus, gpus, concurrent), = [TRIAL_ARGS.search(cmd).groups()
                                 for cmd in raw["head_start_ray_commands"] if TRIAL_ARGS.search(cmd)]
    expected = size_trials(*G5_2XLARGE, nodes=nodes, trials_per_gpu=round(1 / float(gpus)))
    assert expected == Sizing(2, 0.25, 16)
    assert (int(cpus), float(gpus), int(concurrent)) == expected


def _allocation(script: str) -> dict[str, str]:
    """What SLURM sets in the batch step for the script's own ``#SBATCH`` header."""
    header = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", (ROOT / "cluster" / script).read_text(), re.M))
    gpus = int(header.get("gpus-per-node", 0)) or int(header["gpus-per-task"]) * int(header["ntasks-per-node"])
    return {"SLURM_JOB_NUM_NODES": header["nodes"], "SLURM_CPUS_PER_TASK": header["cpus-per-task"],
            "SLURM_GPUS_ON_NODE": str(gpus)}


def _submit(script: str, tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the batch script with stand-ins; returns it and the recorded srun/search.sh calls."""
    submit, stubs, calls = tmp_path / "submit", tmp_path / "bin", tmp_path / "calls"
    (submit / "cluster").mkdir(parents=True)
    (submit / ".venv" / "bin").mkdir(parents=True)
    stubs.mkdir()
    for name in (script, "sizing.py"):
        (submit / "cluster" / name).symlink_to(ROOT / "cluster" / name)
    (submit / "cluster" / "search.sh").write_text('echo "search.sh $*" >> "$CALLS"\n')
    (submit / "cluster" / "wait_nodes.py").write_text("")
    (submit / ".venv" / "bin" / "activate").write_text(f'export PATH="{stubs}:{Path(sys.executable).parent}:$PATH"\n')
    (stubs / "srun").write_text('#!/bin/bash\necho "srun $*" >> "$CALLS"\n'
                                'case " $* " in *" hostname "*) echo 10.0.0.1 ;; esac\n')
    # One line per write, as scontrol does for a long node list: a `| head -n 1` reader under pipefail would
    # kill it with SIGPIPE (exit 141) now and then; the scripts must read the whole list.
    (stubs / "scontrol").write_text('#!/bin/bash\nfor i in $(seq "$SLURM_JOB_NUM_NODES"); do echo "node$i"; done\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CALLS": str(calls), "SLURM_SUBMIT_DIR": str(submit),
            "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node[1-3]"}
    done = subprocess.run(["bash", str(submit / "cluster" / script)], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("script, node, trials", [
    ("slurm-symmetric.sbatch", "--num-cpus=32 --num-gpus=4", (2, 0.25, 32)),
    ("slurm-head-worker.sbatch", "--num-cpus=8 --num-gpus=1", (4, 0.5, 6)),
])
def test_sbatch_sizes_trials_from_its_allocation(script, node, trials, tmp_path):
    assert "python cluster/sizing.py" in (ROOT / "cluster" / script).read_text()
    done, calls = _submit(script, tmp_path, _allocation(script))
    assert done.returncode == 0, done.stderr
    assert any(node in call for call in calls), calls  # every node offers Ray the job's CPUs and GPUs
    (cpus, gpus, concurrent), = [TRIAL_ARGS.search(call).groups() for call in calls if TRIAL_ARGS.search(call)]
    assert (int(cpus), float(gpus), int(concurrent)) == trials


def test_sbatch_takes_trials_per_card_from_memory_with_trials_per_gpu_auto(tmp_path):
    env = {**_allocation("slurm-symmetric.sbatch"), "TRIALS_PER_GPU": "auto", "CARD_GB": "80", "PEAK_GB": "17.3"}
    done, calls = _submit("slurm-symmetric.sbatch", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert any("--cpus-per-trial 2 --gpus-per-trial 0.25 --concurrent 32" in call for call in calls), calls


def test_sbatch_on_a_cpu_only_partition_runs_cpu_trials(tmp_path):
    env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_ON_NODE": "32"}  # no GPUs, no --cpus-per-task
    done, calls = _submit("slurm-symmetric.sbatch", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert any("--num-cpus=32 --num-gpus=0" in call for call in calls), calls
    assert any("--cpus-per-trial 2 --gpus-per-trial 0 --concurrent 32" in call for call in calls), calls


def test_sbatch_stops_before_ray_when_the_trials_do_not_fit(tmp_path):
    env = {**_allocation("slurm-symmetric.sbatch"), "TRIALS_PER_GPU": "16"}
    done, calls = _submit("slurm-symmetric.sbatch", tmp_path, env)
    assert done.returncode == 2
    assert "error: --node-cpus 32 is fewer than --node-gpus 4 x --trials-per-gpu 16" in done.stderr
    assert calls == []
