"""Wall time of the same small search on one Ray node and on two (loopback, this machine).

The search is configs/search_tiny.yaml on the tiny synthetic scans, run by the real command line
(`sensorium-search run ... --address`) against a fresh cluster from cluster/local_cluster.py:

- 1 node x 1 CPU: trials run one at a time;
- 1 node x 2 CPUs: two at a time on one node;
- 2 nodes x 1 CPU: two at a time, one on each node (the cluster path: pre-flight probes, remote workers).

On a 2-core machine the last two use the same two cores, so their ratio is the cost of the multi-node
path; the first against the last is the gain from adding a node. The preprocessed cache is built once
before the timed runs. Writes results/bench_cluster.md.

    .venv/bin/python bench/bench_cluster.py [--trials 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cluster.local_cluster import LocalCluster  # noqa: E402

OUT = ROOT / "results" / "bench_cluster.md"
CLI = str(Path(sys.executable).parent / "sensorium-search")
SEARCH_FILE = ROOT / "configs" / "search_tiny.yaml"
SETUPS = (("1 node x 1 CPU", 1, 1), ("1 node x 2 CPUs", 1, 2), ("2 nodes x 1 CPU", 2, 1))


def prepare(work: Path) -> Path:
    """Tiny synthetic scans in ``work`` with their cache built (cache_dir resolves against ``work``)."""
    from search.raytune.prepare import absolute_data_paths, prepare_caches
    from search.spec.space import load_search, with_data
    from sensorium.data.synth import SynthConfig, generate

    data = generate(work / "synth", SynthConfig.tiny(seed=0), progress=False).data_dir
    base = with_data(load_search(SEARCH_FILE), [str(data)]).base
    prepare_caches(absolute_data_paths(base, root=work), progress=False)
    return data


def timed_search(nodes: int, cpus: int, data: Path, work: Path, trials: int) -> dict[str, float]:
    """Start a cluster, run the search through it, stop it; wall and in-search seconds, trials per node."""
    out = work / f"run-{nodes}x{cpus}-{time.monotonic_ns()}"
    with LocalCluster(nodes=nodes, cpus=cpus) as cluster:
        start = time.perf_counter()
        done = subprocess.run(
            [CLI, "run", str(SEARCH_FILE), "--address", cluster.address, "--out", str(out), "--data", str(data),
             "--trials", str(trials), "--concurrent", "2", "--cpus-per-trial", "1", "--quiet"],
            env=cluster.env, cwd=work, capture_output=True, text=True, timeout=1800,
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"search on {nodes} node(s) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    inner = re.search(r"search ended after (\d+) s", done.stdout)
    per_node: dict[str, int] = {}
    for result in out.glob("trial_*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        ip = json.loads(lines[-1])["node_ip"]
        per_node[ip] = per_node.get(ip, 0) + 1
    return {"wall": wall, "search": float(inner.group(1)) if inner else float("nan"), "per_node": per_node}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        data = prepare(work)
        for name, nodes, cpus in SETUPS:
            runs = [timed_search(nodes, cpus, data, work, args.trials) for _ in range(args.repeats)]
            rows.append((name, runs))
            walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
            print(f"{name}: wall {walls} s; trials per node {runs[-1]['per_node']}", file=sys.stderr)

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    base = {name: median(runs, "wall") for name, runs in rows}
    lines = [
        "# Cluster search: one node vs two (loopback, this machine)",
        "",
        f"`bench/bench_cluster.py --trials {args.trials} --repeats {args.repeats}`: configs/search_tiny.yaml "
        "(tiny model, up to 4 epochs, ASHA) on the tiny synthetic scans, 2 trials at a time where the "
        "cluster has room, 1 CPU per trial, run by `sensorium-search run --address` against a fresh "
        "cluster from cluster/local_cluster.py. Wall = the whole command (imports, connecting, data check, "
        "pre-flight, search); search = the Tuner's own time as the command prints it. Medians of "
        f"{args.repeats} runs.",
        "",
        "| setup | wall (s) | search (s) | trials per node (last run) | wall vs 2 nodes x 1 CPU |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    two = base["2 nodes x 1 CPU"]
    for name, runs in rows:
        per_node = ", ".join(f"{ip}: {n}" for ip, n in sorted(runs[-1]["per_node"].items()))
        lines.append(
            f"| {name} | {base[name]:.1f} | {median(runs, 'search'):.0f} | {per_node} | {base[name] / two:.2f} |"
        )
    lines += [
        "",
        f"Two nodes vs one node of the same size (1 CPU): {base['1 node x 1 CPU'] / two:.2f}x faster. "
        f"Two 1-CPU nodes vs one 2-CPU node (same cores): {two / base['1 node x 2 CPUs']:.2f}x the time.",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        "both nodes share its cores and disk, so this measures Ray's multi-node path, not extra hardware.",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
