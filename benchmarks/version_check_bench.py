"""What the near-cache's staleness bound costs: the periodic version check, per second of a reader.

    python -m benchmarks.version_check_bench [--bounds 10,100,1000] [--tenants 1,100]
                                             [--seconds 5] [--rate 2000] [--quick]

A reader keeps a near-cache answer only while its tenant's version was confirmed less than
``CRM_NEAR_CACHE_STALENESS_MS`` ago; its background thread confirms every tenant due (one
pipelined round trip, an ``HMGET`` per tenant), so that a change whose notification was lost
is seen within the bound. For each tenant count and bound, one reader process
(``CRMCache``, every tenant read once) runs two phases on a Redis of this run's own:

* idle: no reads, ``--seconds`` long: the reader's CPU time (user + system, every thread) per
  second, the Redis commands per second it caused (``INFO commandstats``, reset before the
  phase, which counts the commands a script runs too; this script's own INFO/CONFIG calls left
  out) and the Redis server's CPU per second;
* busy: ``--rate`` permission checks per second over its tenants: the same figures and the
  share answered from the near-cache (the rest went to Redis: the bound expired before a check
  confirmed it).

The baseline is the same reader with the bound at its maximum (600 s: no check due during the
run). Metrics flushes are pushed past the run (CRM_METRICS_FLUSH_INTERVAL) so that only the
version checks differ. Prints measured figures only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import redis

from benchmarks.pipeline_bench import ROOT, cpu_model
from crmcache.keyspace import DataClass
from crmcache.store import Store
from ops.dev.redis_server import RedisServer

BASELINE_MS = 600_000
PERMISSION = "crm.leads.create"
USERS = 20
OURS = ("info", "config")
"""Commands this script sends itself, left out of the counts."""


def tenant_ids(count: int) -> list[str]:
    return [f"v{i:03d}" for i in range(count)]


def load(store: Store, tenants: list[str]) -> None:
    data = {
        DataClass.CREDIT_COSTS: [(PERMISSION, "1")],
        DataClass.ROLES: [("sales", json.dumps(["crm.leads.*"]))],
        DataClass.USER_STATUS: [(f"user-{u}", "active") for u in range(USERS)],
        DataClass.USER_ROLES: [(f"user-{u}", json.dumps(["sales"])) for u in range(USERS)],
    }
    for tenant in tenants:
        s0 = store.begin_snapshot(tenant)
        for data_class, items in data.items():
            store.write_snapshot(tenant, data_class, s0, items)
        store.mark_ready(tenant, s0)


# --- the reader process ------------------------------------------------------------------------


def reader_main(count: int) -> None:
    """Read every tenant once, say ready, then run each phase asked on stdin."""
    from consumer.read.cache import CRMCache

    crm = CRMCache().start()
    views = [crm.tenant(t) for t in tenant_ids(count)]
    for view in views:
        view.initialize()
        view.check_permission("user-0", PERMISSION)
    deadline = time.monotonic() + 30
    while not crm.listening and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready", flush=True)
    for line in sys.stdin:
        phase, seconds, rate = line.split()
        print(json.dumps(run_phase(views, phase, float(seconds), int(rate))), flush=True)
    crm.close()


def run_phase(views: list[Any], phase: str, seconds: float, rate: int) -> dict[str, Any]:
    cpu, started = time.process_time(), time.perf_counter()
    reads = near = 0
    if phase == "idle":
        time.sleep(seconds)
    else:
        while (now := time.perf_counter()) - started < seconds:
            target = started + reads / rate
            if now < target:
                time.sleep(target - now)
            view = views[reads % len(views)]
            answer = view.check_permission_detail(f"user-{reads % USERS}", PERMISSION)
            near += answer.source == "near-cache"
            reads += 1
    wall = time.perf_counter() - started
    return {"cpu": time.process_time() - cpu, "wall": wall, "reads": reads, "near": near}


# --- the measuring side ------------------------------------------------------------------------


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.removeprefix("cmdstat_").split("|")[0] not in OURS
    }


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Reader:
    def __init__(self, env: dict[str, str], tenants: int, bound_ms: int) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.version_check_bench", "--reader", str(tenants)],
            cwd=ROOT,
            env={**env, "CRM_NEAR_CACHE_STALENESS_MS": str(bound_ms)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._line() != "ready":
            raise RuntimeError("the reader did not start")

    def _line(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.readline().strip()

    def phase(self, client: redis.Redis, name: str, seconds: float, rate: int) -> dict[str, Any]:
        """Run one phase; the reader's figures with the Redis side's measured around it."""
        assert self.popen.stdin is not None
        client.config_resetstat()
        cpu = server_cpu(client)
        self.popen.stdin.write(f"{name} {seconds} {rate}\n")
        self.popen.stdin.flush()
        result: dict[str, Any] = json.loads(self._line())
        result["commands"] = command_calls(client)
        result["server_cpu"] = server_cpu(client) - cpu
        return result

    def close(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()
        self.popen.wait(timeout=30)


def row(tenants: int, bound: str, phase: str, result: dict[str, Any]) -> str:
    wall = result["wall"]
    commands = result["commands"]
    total = sum(commands.values())
    checks = commands.get("hmget", 0) / tenants / wall
    near = f"{100 * result['near'] / result['reads']:5.1f} %" if result["reads"] else "    -  "
    return (
        f"{tenants:>7} {bound:>10} {phase:<5} {1000 * result['cpu'] / wall:8.2f} "
        f"{total / wall:10.1f} {checks:9.1f} {1000 * result['server_cpu'] / wall:10.2f} "
        f"{result['reads'] / wall:8.0f} {near:>8}"
    )


HEADER = (
    f"{'tenants':>7} {'bound':>10} {'phase':<5} {'cpu ms/s':>8} {'redis cmd/s':>10} "
    f"{'checks/s':>9} {'redis ms/s':>10} {'reads/s':>8} {'near':>8}"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bounds", default="10,100,1000", help="staleness bounds, ms")
    parser.add_argument("--tenants", default="1,100", help="tenant counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rate", type=int, default=2000, help="checks per second when busy")
    parser.add_argument("--quick", action="store_true", help="1 s phases")
    parser.add_argument("--reader", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        reader_main(args.reader)
        return 0
    if args.quick:
        args.seconds = 1.0
    bounds = [int(b) for b in args.bounds.split(",")]
    counts = [int(n) for n in args.tenants.split(",")]
    rows = [HEADER]
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        load(Store(client), tenant_ids(max(counts)))
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CRM_METRICS_FLUSH_INTERVAL": "3600",
            "CRM_TENANT_IDLE_TIMEOUT": "0",
            "CRM_READER_REQUESTS_PRELOAD": "false",
            "CRM_LOG_LEVEL": "WARNING",
        }
        for tenants in counts:
            for bound in [BASELINE_MS, *bounds]:
                label = f"{bound} ms" if bound != BASELINE_MS else "baseline"
                reader = Reader(env, tenants, bound)
                time.sleep(0.5)  # start-up reads and the subscription's confirmation done
                for phase, rate in (("idle", 1), ("busy", args.rate)):
                    result = reader.phase(client, phase, args.seconds, rate)
                    rows.append(row(tenants, label, phase, result))
                reader.close()
        client.close()
    load_avg = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {sys.version.split()[0]}; "
        f"load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; "
        f"{args.seconds:g} s per phase; baseline: bound {BASELINE_MS} ms (no check due)"
    )
    print(
        "cpu ms/s: the reader process's CPU per second; redis cmd/s: commands it caused "
        "(those run by a script included); "
        "checks/s: version checks per tenant per second (HMGET); redis ms/s: server CPU; "
        "near: busy reads answered from the near-cache"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
