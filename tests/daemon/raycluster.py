"""A real Ray cluster on this machine for the tests of `lookalike import`: a head node and
worker nodes, each started by `ray start --block` in a process group of its own, so that
stopping a node ends what it started (its raylet, its workers), and nothing else.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")  # the installed `ray` command
START_S = 120.0  # a node's start, on a loaded 2-core machine
STOP_S = 5.0


@dataclass
class Cluster:
    address: str  # for `--ray-address`
    env: dict[str, str]  # what a driver needs to join: its token
    nodes: list[subprocess.Popen[bytes]]

    def owns(self, pid: int) -> bool:
        """Whether process `pid` descends from one of this cluster's nodes (Ray starts its
        workers in process groups of their own)."""
        nodes = {node.pid for node in self.nodes}
        while pid > 1:
            if pid in nodes:
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rpartition(")")[2].split()[1])  # (the name may hold spaces)
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start ARGS --block` in a new session; returns once the node runs."""
    with open(log, "wb") as out:
        node = subprocess.Popen([str(RAY), "start", *args, "--block", "--disable-usage-stats"],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + START_S
    while "Ray runtime started." not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            stop([node])
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return node


def stop(nodes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each node's process group (`ray start` stops what it started, and a
    worker ends with its node), then SIGKILL to whatever of them is left."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        for node in nodes:
            with suppress(ProcessLookupError):
                os.killpg(node.pid, sent)
        deadline = time.monotonic() + STOP_S
        for node in nodes:
            with suppress(subprocess.TimeoutExpired):
                node.wait(timeout=max(0.1, deadline - time.monotonic()))


@contextmanager
def cluster(folder: Path, workers: int = 2, cpus: int = 1) -> Iterator[Cluster]:
    """A head and `workers` worker nodes of `cpus` CPUs each, with a token of their own.

    A node stops at SIGTERM without first draining (Ray's default: waiting up to 30 s for
    its work to move elsewhere, longer than `stop` waits before its SIGKILL).
    """
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        head_log = folder / "head.log"
        nodes.append(start_node(["--head", "--port", str(port), "--num-cpus", str(cpus),
                                 "--include-dashboard", "false",
                                 "--temp-dir", str(folder / "ray")], head_log, env))
        found = re.search(r"Local node IP: (\S+)", head_log.read_text())
        assert found, head_log.read_text()
        address = f"{found.group(1)}:{port}"
        for n in range(workers):  # one after the other: started at once, they race for ports
            nodes.append(start_node(["--address", address, "--num-cpus", str(cpus)],
                                    folder / f"worker{n}.log", env))
        yield Cluster(address, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"]},
                      nodes)
    finally:
        stop(nodes)


def processes(title: str, but: str = "\0") -> Iterator[int]:
    """Ids of the processes whose title (a Ray worker's: `ray::...`) contains `title` and
    not `but`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"ray::") and title.encode() in command \
                    and but.encode() not in command.rstrip(b"\0"):
                yield int(entry.name)
