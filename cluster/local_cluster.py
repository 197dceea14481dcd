"""A real multi-node Ray cluster on one machine, on loopback addresses, that stops only what it started.

For the cluster test and benchmark, and for trying the ``--address`` path without a second machine::

    python cluster/local_cluster.py --nodes 2 --cpus 1     # prints the address, Ctrl-C stops the cluster

Each node is its own ``ray start`` (head on 127.0.0.2, workers on 127.0.0.3, ...: Ray rewrites 127.0.0.1
to the machine's public IP, other loopback addresses it keeps) with its own temp dir, its own ports and a
custom resource ``node<i>`` that trials do not ask for (so tests can see which node a trial ran on by its
IP). Every ``ray start`` runs in a new session, so all daemons of the cluster share that session's
process group; ``stop()`` signals those groups and the worker processes the raylets forked, never another
Ray on the machine (``ray stop`` would kill every Ray here, including other users' and pytest's).

Token authentication is on with a fresh random token (Ray 2.60 needs one consistent auth mode on every
node and driver); ``env`` holds it for drivers started against the cluster.

A worker node can get ``private_dirs``: it starts in its own mount namespace with an empty tmpfs over each
of them, so it sees a different (empty) folder at the same path, like a node with its own local disk.
That needs root and ``unshare`` (``LocalCluster.can_isolate()``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path



def free_port() -> int:
    """A TCP port that was free a moment ago (there is a small race; Ray fails loudly if it is taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCluster:
    """``nodes`` Ray nodes with ``cpus`` CPUs each; use as a context manager (stops on exit)."""

    nodes: int = 2
    cpus: int = 1
    object_store_mb: int = 100
    private_dirs: tuple[Path, ...] = ()  # tmpfs-masked on every worker node (not on the head)
    address: str = ""
    env: dict[str, str] = field(default_factory=dict)
    _groups: list[int] = field(default_factory=list)
    _temp_dirs: list[Path] = field(default_factory=list)

    @staticmethod
    def can_isolate() -> bool:
        """True when worker nodes can get private mounts here (root, util-linux unshare)."""
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            return False
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0

    def node_ip(self, index: int) -> str:
        return f"127.0.0.{index + 2}"

    def start(self) -> LocalCluster:
        """Start the head, then the workers; returns self with ``address`` and ``env`` set."""
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        port = free_port()
        self.address = f"{self.node_ip(0)}:{port}"
        try:
            for index in range(self.nodes):
                self._start_node(index, port)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, index: int, port: int) -> None:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"rc{index}-"))  # short: Ray's socket paths must stay < 108
        self._temp_dirs.append(temp_dir)
        ray = str(Path(sys.executable).parent / "ray")
        cmd = [
            ray, "start", f"--node-ip-address={self.node_ip(index)}", f"--num-cpus={self.cpus}",
            "--num-gpus=0", f'--resources={{"node{index}": 1}}', f"--temp-dir={temp_dir}",
            f"--object-store-memory={self.object_store_mb * 1024**2}",
            f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
            "--min-worker-port=0", "--max-worker-port=0",  # OS-chosen: the default range is shared by nodes
        ]
        if index == 0:
            cmd += ["--head", f"--port={port}", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
            if self.private_dirs:
                mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(d))}" for d in self.private_dirs)
                cmd = ["unshare", "--mount", "--propagation", "private",
                       "sh", "-c", f"{mounts} && exec {shlex.join(cmd)}"]
        log = temp_dir / "ray_start.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self._groups.append(proc.pid)  # session leader: its pid is the process group of every daemon
            if proc.wait(timeout=120) != 0:
                raise RuntimeError(f"ray start of node {index} failed:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM every process of this cluster, SIGKILL what is left after 3 s, remove the temp dirs."""
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        for temp_dir in self._temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        self._temp_dirs.clear()

    def kill_node(self, index: int) -> list[int]:
        """SIGKILL every process of worker node ``index`` (its daemons and the workers its raylet forked),
        like a machine that vanishes; returns the pids killed. The head and other nodes are left alone."""
        if index == 0:
            raise ValueError("kill_node: the head (index 0) is the cluster; stop() it instead")
        temp_dir = str(self._temp_dirs[index]).encode()
        killed = []
        for pid in self.pids():
            try:
                pgrp = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
                mine = pgrp == self._groups[index] or temp_dir in Path(f"/proc/{pid}/cmdline").read_bytes()
                if mine:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            except (OSError, ValueError, IndexError):
                continue
        return killed

    def pids(self) -> list[int]:
        """Live (non-zombie) processes of this cluster: its ``ray start`` process groups, and every process
        carrying its token in the environment (the workers a raylet forks get process groups of their own).
        Linux ``/proc``; empty after ``stop()``."""
        token = f"RAY_AUTH_TOKEN={self.env.get('RAY_AUTH_TOKEN', '-')}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
                if fields[0] == "Z":
                    continue
                if int(fields[2]) in self._groups or token in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per node")
    args = parser.parse_args()
    # Stop the cluster on Ctrl-C and on SIGTERM, also when started in the background (SIGINT ignored there).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with LocalCluster(nodes=args.nodes, cpus=args.cpus) as cluster:
        print(f"Ray cluster of {args.nodes} nodes at {cluster.address}; in another shell:")
        print(f"  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.env['RAY_AUTH_TOKEN']}")
        print(f"  sensorium-search run configs/search_tiny.yaml --address {cluster.address} --out ...")
        print("Ctrl-C (or SIGTERM) stops the cluster.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
