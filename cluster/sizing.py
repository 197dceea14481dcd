"""Per-trial resources of a search that fills whole nodes: CPUs, GPU fraction and trials at once.

With GPUs, every card runs ``trials_per_gpu`` trials and the node's CPUs are split evenly among all the
trials of the node, so Ray's per-trial request adds up to exactly what a node has::

    cpus_per_trial = floor(node_cpus / (node_gpus x trials_per_gpu))     (at least 1)
    gpus_per_trial = 1 / trials_per_gpu
    concurrent     = nodes x node_gpus x trials_per_gpu

Without GPUs (``node_gpus`` 0) trials run on the CPU with ``cpus_per_trial`` CPUs each (default 2) and
``concurrent = nodes x floor(node_cpus / cpus_per_trial)``.

``--trials-per-gpu auto`` takes k from memory, by the rule of the search's ``gpus_per_trial: auto``
(``search/spec/gpu_share.py``), given the card's memory and the peak of the largest point of the search space (what
the ``gpus_per_trial auto`` line of a search prints: "the largest point of the space needs X GB", the CUDA
context included)::

    trials_per_gpu = min(floor(0.9 x card_gb / peak_gb), floor(node_cpus / node_gpus), 16)    (at least 1)

The SLURM scripts evaluate the command line's output (shell assignments)::

    $ python cluster/sizing.py --node-cpus 32 --node-gpus 4 --trials-per-gpu 4 --nodes 2
    cpus_per_trial=2 gpus_per_trial=0.25 concurrent=32
    $ python cluster/sizing.py --node-cpus 32 --node-gpus 4 --trials-per-gpu auto --card-gb 80 --peak-gb 17.3
    cpus_per_trial=2 gpus_per_trial=0.25 concurrent=16

Invalid input: exit code 2 and one line ``error: ...`` on stderr naming the argument. Stdlib only.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NamedTuple

DEFAULT_CPU_TRIAL_CPUS = 2  # CPUs per trial on CPU-only nodes: torch's intra-op threads of one trial
# Ray counts resources in steps of 1/10000 (ray_constants.MIN_RESOURCE_GRANULARITY): the GPU fraction is
# rounded down to that step so that trials_per_gpu of them always fit on one card (1/3 -> 0.3333).
RAY_RESOURCE_STEPS = 10_000
# --trials-per-gpu auto: the part of a card planned for trials and the most trials per card (search/spec/gpu_share.py's
# USABLE and MAX_TRIALS_PER_CARD; tests/test_sizing.py checks that both rules agree)
USABLE = 0.9
MAX_TRIALS_PER_CARD = 16


class Sizing(NamedTuple):
    cpus_per_trial: int  # logical CPUs Ray reserves for one trial
    gpus_per_trial: float  # fraction of one card per trial (0: the trial runs on the CPU)
    concurrent: int  # trials running at once over all nodes

    def shell(self) -> str:
        """Shell assignments, e.g. ``cpus_per_trial=2 gpus_per_trial=0.25 concurrent=32``."""
        return f"cpus_per_trial={self.cpus_per_trial} gpus_per_trial={self.gpus_per_trial:g} concurrent={self.concurrent}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def size_trials(
    node_cpus: int, node_gpus: int, nodes: int = 1, trials_per_gpu: int = 4, cpus_per_trial: int | None = None
) -> Sizing:
    """Per-trial CPUs, GPU fraction and concurrency of a search over ``nodes`` identical nodes.

    node_cpus: CPUs Ray may use on each node (the job's CPUs per node, not the machine's).
    node_gpus: whole GPUs on each node; 0 for CPU trials.
    nodes: nodes in the Ray cluster, the head included.
    trials_per_gpu: trials sharing one card (GPU nodes only; ignored without GPUs so the same call serves
        a GPU and a CPU-only partition).
    cpus_per_trial: CPUs of one CPU trial (CPU-only nodes; default 2). With GPUs it follows from the
        formula, so giving it there is refused.
    Raises ValueError naming the argument (as its command-line flag) and what was expected.
    """
    checks = [("node_cpus", node_cpus, 1), ("node_gpus", node_gpus, 0), ("nodes", nodes, 1),
              ("trials_per_gpu", trials_per_gpu, 1)]
    if cpus_per_trial is not None:
        checks.append(("cpus_per_trial", cpus_per_trial, 1))
    for name, value, minimum in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{_flag(name)} {value!r}: expected a whole number >= {minimum}")
    if node_gpus == 0:
        cpus = DEFAULT_CPU_TRIAL_CPUS if cpus_per_trial is None else cpus_per_trial
        if cpus > node_cpus:
            raise ValueError(f"--cpus-per-trial {cpus} is more than --node-cpus {node_cpus}: no trial fits on a node")
        return Sizing(cpus, 0.0, nodes * (node_cpus // cpus))
    if cpus_per_trial is not None:
        raise ValueError(f"--cpus-per-trial {cpus_per_trial}: only for CPU-only nodes (--node-gpus 0); with GPUs "
                         "it is --node-cpus / (--node-gpus x --trials-per-gpu)")
    trials_per_node = node_gpus * trials_per_gpu
    if node_cpus < trials_per_node:
        raise ValueError(f"--node-cpus {node_cpus} is fewer than --node-gpus {node_gpus} x --trials-per-gpu "
                         f"{trials_per_gpu} = {trials_per_node} trials per node, and each trial needs a CPU: "
                         "lower --trials-per-gpu or use more CPUs per node")
    gpus = math.floor(RAY_RESOURCE_STEPS / trials_per_gpu) / RAY_RESOURCE_STEPS
    return Sizing(node_cpus // trials_per_node, gpus, nodes * trials_per_node)


def trials_per_card(card_gb: float, peak_gb: float, cpus_per_card: int) -> int:
    """Trials that share one card of ``card_gb`` GB when the largest trial needs ``peak_gb`` GB (its CUDA context
    included) and each needs one of the node's ``cpus_per_card`` CPUs per card: at most ``MAX_TRIALS_PER_CARD``,
    at least 1 (a trial that needs more than ``USABLE`` of the card gets it whole).
    Raises ValueError naming the argument (as its command-line flag) and what was expected."""
    for name, value in (("card_gb", card_gb), ("peak_gb", peak_gb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{_flag(name)} {value!r}: expected a number of GB > 0")
    return max(1, min(math.floor(USABLE * card_gb / peak_gb), cpus_per_card, MAX_TRIALS_PER_CARD))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, like the project's other commands, instead of argparse's usage block."""
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _whole_or_auto(text: str) -> int | str:
    return text if text == "auto" else _whole(text)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="cluster/sizing.py",
        description="Per-trial CPUs, GPU fraction and concurrency that fill the nodes exactly; prints shell "
                    "assignments (cpus_per_trial=... gpus_per_trial=... concurrent=...) for eval.",
    )
    parser.add_argument("--node-cpus", type=_whole, required=True, help="CPUs Ray may use on each node")
    parser.add_argument("--node-gpus", type=_whole, required=True, help="GPUs on each node (0: CPU trials)")
    parser.add_argument("--nodes", type=_whole, default=1, help="nodes in the cluster (default 1)")
    parser.add_argument("--trials-per-gpu", type=_whole_or_auto, default=4,
                        help="trials sharing one card (default 4), or auto: from --card-gb and --peak-gb")
    parser.add_argument("--card-gb", type=_number, help="--trials-per-gpu auto: memory of one card in GB (80)")
    parser.add_argument("--peak-gb", type=_number,
                        help="--trials-per-gpu auto: GB the largest point of the search space needs (the "
                             "'gpus_per_trial auto' line of a search prints it)")
    parser.add_argument("--cpus-per-trial", type=_whole, default=None,
                        help=f"CPUs per trial on CPU-only nodes (default {DEFAULT_CPU_TRIAL_CPUS})")
    args = parser.parse_args(argv)
    auto = args.trials_per_gpu == "auto"
    if auto != (args.card_gb is not None) or auto != (args.peak_gb is not None):
        parser.error("--trials-per-gpu auto needs --card-gb and --peak-gb, and they are only for it")
    try:
        per_gpu = args.trials_per_gpu
        if auto:  # a CPU-only partition ignores it, as it ignores a number
            per_gpu = trials_per_card(args.card_gb, args.peak_gb, args.node_cpus // max(args.node_gpus, 1))
        sizing = size_trials(args.node_cpus, args.node_gpus, args.nodes, per_gpu, args.cpus_per_trial)
    except ValueError as exc:
        parser.error(str(exc))
    print(sizing.shell())
    return 0


if __name__ == "__main__":
    sys.exit(main())
