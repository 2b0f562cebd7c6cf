"""Test harness: a Redis Cluster and a Sentinel setup started from ``redis-server`` on free
ports, nothing on disk (each server in its own temporary directory, no RDB, no AOF).

A run where they cannot be started fails: ``redis-server`` (7.x) is required by the harness
anyway, and it has ``--cluster-enabled`` and ``--sentinel``.
"""

from __future__ import annotations

import socket
import time

import redis

from crmcache.redis_server import RedisServer

CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10_000


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, and below 65536."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_PORT_OFFSET >= 65536:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if callable(condition) and condition():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class RedisClusterHarness:
    """Three masters, no replicas, slots split evenly; ``url`` names it for crmcache."""

    def __init__(self, masters: int = 3) -> None:
        self.servers = [
            RedisServer(
                port=cluster_port(),
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ),
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> RedisClusterHarness:
        clients = []
        try:
            for server in self.servers:
                server.start()
                clients.append(redis.Redis(port=server.port, socket_timeout=5))
            per_node = CLUSTER_SLOTS // len(clients)
            for i, client in enumerate(clients):
                last = CLUSTER_SLOTS - 1 if i == len(clients) - 1 else (i + 1) * per_node - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", i * per_node, last)
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", "127.0.0.1", self.servers[0].port)
            _wait(
                lambda: (
                    all(c.cluster("info")["cluster_state"] == "ok" for c in clients)
                    and all(len(c.cluster("nodes")) == len(clients) for c in clients)
                ),
                30,
                "the cluster to agree",
            )
        except BaseException:
            self.stop()
            raise
        finally:
            for client in clients:
                client.close()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.cleanup()

    def node_of(self, key: str) -> int:
        """The port of the master serving `key`."""
        client = redis.Redis(port=self.servers[0].port)
        try:
            slot = int(client.cluster("keyslot", key))
            for entry in client.cluster("slots"):
                start, end, master = entry[0], entry[1], entry[2]
                if start <= slot <= end:
                    return int(master[1])
        finally:
            client.close()
        raise RuntimeError(f"no master serves {key!r}")

    def flush(self) -> None:
        for server in self.servers:
            client = redis.Redis(port=server.port)
            client.flushall()
            client.close()
