"""A local three-master Redis Cluster for the tests: three ``redis-server --cluster-enabled
yes`` on free loopback ports, joined with ``redis-cli --cluster create`` (which ships with
redis-server, so CI installs nothing new), persisting nothing, stopped and removed at exit.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from types import TracebackType

from posguard.supervisor.redis_server import PrivateRedisServer, RedisServerMissing, start_redis_server

__all__ = ["LocalCluster", "start_cluster"]

CLUSTER_READY_TIMEOUT = 30.0
"""Seconds the three nodes get to agree (cluster_state:ok); a bounded wait, never a sleep."""


class LocalCluster:
    """Three running cluster masters; ``url`` names the first one (the client's seed)."""

    def __init__(self, nodes: list[PrivateRedisServer], password: str = "") -> None:
        self.nodes = nodes
        self.password = password

    @property
    def auth(self) -> list[str]:
        """redis-cli's password options (``--no-auth-warning`` keeps its stderr quiet)."""
        return ["-a", self.password, "--no-auth-warning"] if self.password else []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def cli(self, port: int, *args: str) -> str:
        """One redis-cli command against one node (plain text, as an operator would type it)."""
        out = subprocess.run(["redis-cli", *self.auth, "-p", str(port), *args], capture_output=True, text=True, timeout=10,
                             check=True)
        return out.stdout.strip()

    def master_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot``, from the cluster's own table (CLUSTER NODES:
        ``id ip:port@bus flags master ... connected 0-5460 ...``)."""
        for line in self.cli(self.nodes[0].port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2].split(","):
                continue
            for spec in fields[8:]:
                low, _, high = spec.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1])
        raise AssertionError(f"no master serves slot {slot}")

    def master_of_key(self, key: str) -> int:
        return self.master_of_slot(self.keyslot(key))

    def keyslot(self, key: str) -> int:
        return int(self.cli(self.nodes[0].port, "CLUSTER", "KEYSLOT", key))

    def flush(self) -> None:
        for port in self.ports:
            self.cli(port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_cluster(*, password: str = "") -> LocalCluster:
    """Start the three masters and join them; with ``password``, every node requires it
    (``requirepass``, and ``masterauth`` for each other)."""
    if shutil.which("redis-cli") is None:
        raise RedisServerMissing("redis-cli was not found on PATH (it ships with redis-server)")
    nodes: list[PrivateRedisServer] = []
    try:
        for _ in range(3):
            nodes.append(_cluster_node(password))
        cluster = LocalCluster(nodes, password)
        subprocess.run(
            ["redis-cli", *cluster.auth, "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        _wait_ok(cluster)
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _cluster_node(password: str) -> PrivateRedisServer:
    from posguard.supervisor.redis_server import free_port

    port = free_port()
    while port > 55535:  # redis-server refuses a higher port when clustered (its old bus-port rule)
        port = free_port()
    return start_redis_server(port, extra_args=[
        "--cluster-enabled", "yes",
        "--cluster-port", str(free_port()),  # the bus on a free port of its own, not port + 10000
        "--cluster-config-file", f"nodes-{port}.conf",  # relative to --dir: the node's temporary directory
        "--cluster-node-timeout", "2000",
        *(["--requirepass", password, "--masterauth", password] if password else []),
    ])


def _wait_ok(cluster: LocalCluster) -> None:
    """Every node says cluster_state:ok and knows all three (bounded; polled, not slept out)."""
    deadline = time.monotonic() + CLUSTER_READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        infos = [cluster.cli(port, "CLUSTER", "INFO") for port in cluster.ports]
        if all("cluster_state:ok" in info and "cluster_known_nodes:3" in info for info in infos):
            return
        last = infos[-1]
        time.sleep(0.05)
    raise RuntimeError(f"the test cluster did not reach cluster_state:ok in {CLUSTER_READY_TIMEOUT} s: {last}")
