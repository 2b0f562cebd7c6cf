"""Test harness: a Redis Cluster and a Sentinel setup started from ``redis-server`` on free
ports, nothing on disk (each server in its own temporary directory, no RDB, no AOF).

A run where they cannot be started fails: ``redis-server`` (7.x) is required by the harness
anyway, and it has ``--cluster-enabled`` and ``--sentinel``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ops.dev.redis_server import RedisServer, free_port, server_binary

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


class SentinelProcess:
    """One ``redis-server --sentinel`` with its config file in a temporary directory."""

    def __init__(self, service: str, master_port: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="crmcache-sentinel-")
        self.config = Path(self.dir) / "sentinel.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "protected-mode no",
                    f"dir {self.dir}",
                    f"sentinel monitor {service} 127.0.0.1 {master_port} 1",
                    f"sentinel down-after-milliseconds {service} 1000",
                    f"sentinel failover-timeout {service} 10000",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.process = subprocess.Popen(
            [server_binary(), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            _wait(lambda: client.ping(), 10, "the Sentinel to answer")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelHarness:
    """A master, a replica and one Sentinel watching them (quorum 1, failover in seconds)."""

    SERVICE = "crm-master"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer()
        self.sentinel: SentinelProcess | None = None

    def url(self, db: int = 0) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.SERVICE}/{db}"

    def start(self) -> SentinelHarness:
        try:
            self.master.start()
            self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
            self.replica.start()
            replica = redis.Redis(port=self.replica.port)
            try:
                _wait(
                    lambda: replica.info("replication")["master_link_status"] == "up",
                    30,
                    "the replica to sync",
                )
            finally:
                replica.close()
            self.sentinel = SentinelProcess(self.SERVICE, self.master.port).start()
            _wait(lambda: self.replicas_known() >= 1, 20, "the Sentinel to know the replica")
        except BaseException:
            self.stop()
            raise
        return self

    def sentinel_client(self) -> redis.Redis:
        assert self.sentinel is not None
        return redis.Redis(port=self.sentinel.port, socket_timeout=2, decode_responses=True)

    def replicas_known(self) -> int:
        client = self.sentinel_client()
        try:
            return len(client.execute_command("SENTINEL", "REPLICAS", self.SERVICE))
        finally:
            client.close()

    def master_port(self) -> int:
        client = self.sentinel_client()
        try:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            return int(port)
        finally:
            client.close()

    def kill_master(self) -> None:
        """SIGKILL the master: no goodbye, whatever it had not replicated is lost."""
        assert self.master.process is not None
        self.master.process.kill()
        self.master.process.wait(timeout=5)

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        for server in (self.replica, self.master):
            server.cleanup()
