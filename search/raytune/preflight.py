"""Pre-flight checks of a search on a Ray cluster, run by the driver after it connects and before any trial.

Three questions, each answered on the nodes that will really run trials, with a one-line UserError (and a
fourth, on memory, for trials on GPUs: :func:`check_memory`):

1. Do the per-trial resources (CPUs, GPUs) fit on at least one alive node?
2. Is the run folder visible from every node that can run a trial? The driver writes a marker file into
   it and a tiny task pinned to each such node reads it back: a node with its own local disk at that path
   does not see the marker. Remote URIs (``s3://``, ``gs://``, ...) are accepted as they are.
3. Are the data paths readable on those nodes? (Trials open the scans where they run; nothing is shipped.)

The driver's own node is checked in-process; only the other nodes get a probe task, so a one-node search
costs no extra Ray work. The decision logic (``fitting_nodes``, ``verdict``) is plain Python on
``NodeInfo`` values and per-node answers, so it can be tested without a cluster.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensorium.errors import ConfigError, UserError

if TYPE_CHECKING:  # imported where used: the probe task runs this module on every node, without torch
    from search.spec.gpu_share import Card, MemoryPlan

# URI schemes Ray Tune can store a run under (through pyarrow.fs); the run folder is then not a local path.
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
PROBE_TIMEOUT_S = 120.0  # a node's probe task may first have to start a Python worker there
MARKER_PREFIX = ".preflight-"
RUN_FOLDER = "run folder"  # key of the run-folder problem in a probe's answer (data problems: their path)


@dataclass(frozen=True)
class NodeInfo:
    """An alive Ray node as the checks see it: id, address and total CPUs / GPUs."""

    node_id: str
    address: str
    cpus: float
    gpus: float

    @property
    def label(self) -> str:
        return f"{self.address} ({self.node_id[:8]})"


def preflight(trial_cpus: float, trial_gpus: float, storage_path: str, data_paths: list[Path]) -> None:
    """Raise UserError unless a trial fits a node, and every node that can run one sees the run folder
    ``storage_path`` (a local path or a remote URI) and can read every path in ``data_paths``.

    Call after ``ray.init``/connect and before any trial starts.
    """
    import ray

    targets = fitting_nodes(alive_nodes(), trial_cpus, trial_gpus)
    run_dir = local_dir(storage_path)
    data = [str(Path(p).expanduser().resolve()) for p in data_paths]
    driver_id = ray.get_runtime_context().get_node_id()
    remote = [n for n in targets if n.node_id != driver_id]

    answers: dict[NodeInfo, dict[str, str]] = {}
    for node in targets:
        if node.node_id == driver_id:  # the driver's node: no marker needed, data checked here
            answers[node] = probe_node(None, "", data)
    if not remote:
        verdict(answers, storage_path, data)
        return
    marker, token = (None, "") if run_dir is None else write_marker(run_dir)
    try:
        answers.update(_probe_remote(remote, None if marker is None else str(marker), token, data))
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    verdict(answers, storage_path, data)


def alive_nodes() -> list[NodeInfo]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    return [node_info(raw) for raw in ray.nodes() if raw.get("Alive")]


def node_info(raw: dict[str, Any]) -> NodeInfo:
    """One entry of ``ray.nodes()`` as a NodeInfo."""
    resources = raw.get("Resources") or {}
    return NodeInfo(
        node_id=str(raw["NodeID"]),
        address=str(raw.get("NodeManagerAddress") or raw.get("NodeManagerHostname") or "?"),
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
    )


def fitting_nodes(nodes: list[NodeInfo], trial_cpus: float, trial_gpus: float) -> list[NodeInfo]:
    """The nodes on which one trial's CPUs and GPUs fit; UserError listing every node when none does."""
    if trial_cpus < 0 or trial_gpus < 0:
        raise UserError(f"per-trial resources CPU={trial_cpus:g} GPU={trial_gpus:g}: expected values >= 0")
    if trial_gpus > 1 and trial_gpus != int(trial_gpus):
        raise UserError(f"--gpus-per-trial {trial_gpus:g}: above 1 Ray needs a whole number of GPUs")
    if not nodes:
        raise UserError("the Ray cluster has no alive node")
    fit = [n for n in nodes if n.cpus >= trial_cpus and n.gpus >= trial_gpus]
    if not fit:
        listing = ", ".join(f"{n.label}: CPU {n.cpus:g} GPU {n.gpus:g}" for n in nodes)
        raise UserError(
            f"a trial needs CPU {trial_cpus:g} GPU {trial_gpus:g} on one node, but no alive node has that "
            f"({listing}); lower --cpus-per-trial/--gpus-per-trial or add larger nodes"
        )
    return fit


def check_memory(plan: MemoryPlan, share: float, card: Card) -> None:
    """Print the memory model's line (``MemoryEstimate.describe``) for the base config and for the largest point
    of the space, then check them against one trial's part of a card: ``share`` x the card's memory (the
    allocator is capped at that less the CUDA context, which sits outside the cap: ``runtime.cap_gpu_memory``;
    a whole card, share 1, is not capped).

    Refuses (ConfigError) when the base config does not fit, or the share cannot even hold a CUDA context: then
    most of the space fails too and the search would learn nothing. Only warns (stderr, with the numbers) when
    just the largest point does not fit: the trials near it fail with CUDA out of memory, each recorded as a
    failed trial that TPE learns to avoid, while the rest of the space runs.
    """
    from search.spec.gpu_share import GB, SIZE_KEYS
    from search.spec.settings import gpus_text
    from sensorium.memory import CUDA_CONTEXT_BYTES

    sizes = " ".join(f"{key}={value}" for key, value in plan.point.items()
                     if key in SIZE_KEYS or key.endswith(".kind"))
    print(f"memory per trial, base config: {plan.base.describe()}", flush=True)
    print(f"memory per trial, largest point of the space ({sizes or 'the base sizes'}; largest of "
          f"{plan.compared} compared): {plan.largest.describe()}", flush=True)
    part = min(share, 1.0) * card.total
    where = f"gpus_per_trial={gpus_text(share)} gives each trial {part / GB:.1f} GB of a {card.gb:.1f} GB card"
    if part <= CUDA_CONTEXT_BYTES:
        raise ConfigError(f"{where}, not even the {CUDA_CONTEXT_BYTES / GB:.2f} GB of its CUDA context; expected "
                          "a larger share (gpus_per_trial auto picks one)")
    if plan.base.peak > part:
        raise ConfigError(f"{where}, but the base config needs {plan.base.peak / GB:.1f} GB at its peak; expected a "
                          "larger share (gpus_per_trial auto picks one that fits the largest point of the space)")
    if plan.largest.peak > part:
        print(f"warning: {where}, but the largest point of the space needs {plan.largest.peak / GB:.1f} GB at its "
              "peak: trials near it will fail with CUDA out of memory (failed trials, which TPE learns to avoid); "
              "gpus_per_trial auto picks a share that fits it", file=sys.stderr, flush=True)


def local_dir(storage_path: str) -> Path | None:
    """The run folder as an absolute local path, or None for a supported remote URI."""
    if "://" in storage_path:
        scheme, rest = storage_path.split("://", 1)
        if scheme.lower() == "file":
            return Path(rest).resolve()
        if scheme.lower() in REMOTE_SCHEMES:
            return None
        raise UserError(
            f"run folder {storage_path}: URI scheme {scheme!r} is not supported; "
            f"use a path on shared storage or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}"
        )
    return Path(storage_path).expanduser().resolve()


def write_marker(run_dir: Path) -> tuple[Path, str]:
    """Create ``run_dir`` and write a uniquely named marker file into it; returns (marker, its content)."""
    token = uuid.uuid4().hex
    marker = run_dir / f"{MARKER_PREFIX}{token}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as err:
        raise UserError(f"run folder {run_dir}: cannot write there ({err.strerror})") from err
    return marker, token


def probe_node(marker: str | None, token: str, data_paths: list[str]) -> dict[str, str]:
    """Run on one node: what this node cannot see. Returns {path: reason}; empty when all is well.

    ``marker``: the driver's marker file (None: skip the run-folder check); ``token``: its content.
    """
    problems: dict[str, str] = {}
    if marker is not None:
        try:
            content = Path(marker).read_text()
        except FileNotFoundError:
            problems[RUN_FOLDER] = "the driver's marker file is missing there"
        except OSError as err:
            problems[RUN_FOLDER] = f"cannot read the driver's marker file ({err.strerror})"
        else:
            if content != token:
                problems[RUN_FOLDER] = "a different file is at the marker's path"
    for path in data_paths:
        if not os.path.exists(path):
            problems[path] = "missing"
        elif not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
            problems[path] = "not readable"
    return problems


def verdict(answers: dict[NodeInfo, dict[str, str]], storage_path: str, data_paths: list[str]) -> None:
    """Turn per-node answers of ``probe_node`` into one UserError (run folder first, then data), or pass."""
    blind = sorted(f"{n.label} ({p[RUN_FOLDER]})" for n, p in answers.items() if RUN_FOLDER in p)
    if blind:
        raise UserError(
            f"run folder {storage_path} is not visible from node(s) {', '.join(blind)}: with several nodes "
            f"put --out on storage every node mounts (NFS, Lustre, ...) or use a URI such as s3://bucket/path"
        )
    for path in data_paths:
        missing = sorted(f"{n.label} ({p[path]})" for n, p in answers.items() if path in p)
        if missing:
            raise UserError(
                f"data {path} is not readable on node(s) {', '.join(missing)}: trials read the scans where "
                f"they run, so put them on storage every node mounts or copy them to this path on each node"
            )


def _probe_remote(
    nodes: list[NodeInfo], marker: str | None, token: str, data: list[str]
) -> dict[NodeInfo, dict[str, str]]:
    """Run ``probe_node`` once on each node (a zero-CPU task pinned there); UserError if one fails or hangs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = {
        node: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        ).remote(marker, token, data)
        for node in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    answers: dict[NodeInfo, dict[str, str]] = {}
    for node, ref in refs.items():
        if ref not in ready:
            ray.cancel(ref, force=True)
            raise UserError(
                f"node {node.label} did not answer the pre-flight check within {PROBE_TIMEOUT_S:g} s"
            )
        try:
            answers[node] = ray.get(ref)
        except ray.exceptions.RayError as err:
            first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise UserError(
                f"node {node.label}: the pre-flight task failed ({first}); is the project installed there?"
            ) from err
    return answers
