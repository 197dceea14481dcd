"""Wait until a Ray cluster has at least N alive nodes (the SLURM head/worker script runs it before the search).

    python cluster/wait_nodes.py HOST:PORT N [--timeout S]

Exit code 0 once N nodes are alive, 1 (with a one-line reason) when the timeout passes first.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def wait_nodes(address: str, count: int, timeout_s: float) -> int:
    """Wait for the head's port to accept connections (``ray.init`` would retry for minutes without a
    bound), connect, then poll until ``count`` nodes are alive; returns how many are."""
    import ray

    deadline = time.monotonic() + timeout_s
    host, port = address.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Ray head answered at {address} within {timeout_s:g} s") from None
            time.sleep(2)
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        while (alive := alive_nodes()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {alive} of {count} Ray nodes joined {address} within {timeout_s:g} s")
            time.sleep(2)
        return alive
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description="wait until a Ray cluster has at least N alive nodes")
    parser.add_argument("address", help="HOST:PORT of the head")
    parser.add_argument("count", type=int, help="nodes to wait for (head included)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    args = parser.parse_args()
    try:
        alive = wait_nodes(args.address, args.count, args.timeout)
    except TimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{alive} Ray nodes alive at {args.address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
