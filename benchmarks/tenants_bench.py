"""Many tenants: a full preload of 1,000 tenants x 1,000 users, and what 1,000 tenants cost.

    python -m benchmarks.tenants_bench [--tenants 1000] [--users 1000] [--workers 2]
                                       [--concurrency 8]

1. Preload: a local Wrapper (the sandbox, in this process) holds every tenant; Celery worker
   processes run one ``preload_all`` run with at most ``--concurrency`` preloads asking the
   Wrapper at once (CRM_PRELOAD_CONCURRENCY); progress is read from the run record in Redis
   every second. Goal: all tenants within 60 s.
2. Redis memory per cached entry: used_memory after the preload over the fields cached
   (credit costs, roles, user statuses, user roles; stamps, meta and hash overhead included).
3. Subscriber memory: RSS of a ``crmcache subscribe`` process before and after it received
   events of every tenant (5 each, with eventId and seq).

One reader process serving every tenant (connections, RSS, cold and warm reads) is
``benchmarks.tenants_reader_bench``.

The sandbox's HTTP handler writes a response's headers and body separately; with Nagle's
algorithm on, every keep-alive request then waits ~40 ms for a delayed ACK. This benchmark turns
TCP_NODELAY on for it (``--sandbox-nagle`` keeps the stall) so that the figures are crmcache's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from benchmarks.pipeline_bench import BIN, cpu_model, processes, wait_for
from config.celery import celery_config
from config.settings import load_settings
from crmcache import keyspace, preload_runs
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.store import Store
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper

MIB = 1024 * 1024


def tenant_data(users: int) -> dict[str, Any]:
    return {
        "creditConfigs": [{"operationCode": f"crm.op{i}", "creditCost": i % 7} for i in range(20)],
        "roles": [
            {"roleId": f"r{i}", "permissions": [f"crm.area{i}.*", "crm.reports.read"]}
            for i in range(10)
        ],
        "users": [
            {
                "userId": f"user-{i}",
                "status": "active" if i % 10 else "suspended",
                "roles": [f"r{i % 10}", f"r{(i + 3) % 10}"],
            }
            for i in range(users)
        ],
    }


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:04d}" for i in range(count)]


def run_preload(
    r: redis.Redis, app: Celery, tenants: list[str], timeout: float
) -> tuple[float | None, preload_runs.RunProgress | None]:
    store = Store(r)
    started = time.perf_counter()
    app.send_task(
        "crmcache.preload_all",
        kwargs={"reason": "benchmark", "guard": False, "tenants": tenants},
        queue="crm.preload",
    )
    last = -1.0
    while time.perf_counter() - started < timeout:
        progress = preload_runs.progress(store)
        elapsed = time.perf_counter() - started
        if progress is not None and elapsed - last >= 1.0:
            last = elapsed
            print(
                f"  {elapsed:5.1f}s  {progress.done:>5}/{progress.total} done, "
                f"{progress.failed} failed, {progress.retried} retried, "
                f"{progress.done / elapsed:,.0f} tenants/s",
                flush=True,
            )
        if progress is not None and progress.finished:
            return time.perf_counter() - started, progress
        time.sleep(0.1)
    return None, preload_runs.progress(store)


def cached_fields(r: redis.Redis, tenants: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for tenant in tenants:
        keys = TenantKeys.of(tenant)
        for data_class in (
            DataClass.CREDIT_COSTS,
            DataClass.ROLES,
            DataClass.USER_STATUS,
            DataClass.USER_ROLES,
        ):
            pipe.hlen(keys.values(data_class))
    return sum(pipe.execute())


def rss_mib(pid: int) -> float:
    """Resident set size (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def subscriber_memory(r: redis.Redis, env: dict[str, str], tenants: list[str]) -> dict[str, str]:
    """RSS of the subscriber idle, then after 5 events from every tenant were applied."""
    subscriber = [str(BIN / "crmcache"), "subscribe"]
    with processes([subscriber], env):
        if not wait_for(lambda: r.get(keyspace.LEADER) is not None, 30):
            raise RuntimeError("the subscriber did not start")
        time.sleep(1.0)
        pid = int(r.get(keyspace.LEADER).decode().split(":")[1])  # type: ignore[union-attr]
        idle = rss_mib(pid)
        for n in range(5):
            pipe = r.pipeline(transaction=False)
            for tenant in tenants:
                body = {
                    "eventType": "credit-config-changed",
                    "eventId": f"{tenant}-{n}",
                    "seq": n + 1,
                    "data": {"operationCode": "crm.probe", "newValue": n},
                }
                pipe.publish(TenantKeys.of(tenant).channel("credit-configs"), json.dumps(body))
            pipe.execute()
        last = TenantKeys.of(tenants[-1]).values(DataClass.CREDIT_COSTS)
        wait_for(lambda: r.hget(last, "crm.probe") == b"4", 60)
        time.sleep(0.5)
        busy = rss_mib(pid)
    return {"subscriber RSS idle MiB": f"{idle:.1f}", "after all tenants MiB": f"{busy:.1f}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--users", type=int, default=1000, help="users per tenant")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--concurrency", type=int, default=8, help="CRM_PRELOAD_CONCURRENCY")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--sandbox-nagle", action="store_true", help="keep the 40 ms stall")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    from sandbox.handler import SandboxRequestHandler

    SandboxRequestHandler.disable_nagle_algorithm = not args.sandbox_nagle
    tenants = tenant_ids(args.tenants)
    built = time.perf_counter()
    data = {"tenants": {t: tenant_data(args.users) for t in tenants}}
    with RedisServer() as server, SandboxWrapper(data, redis_url=server.url) as wrapper:
        print(f"sandbox with {args.tenants:,} tenants built in {time.perf_counter() - built:.1f}s")
        del data
        r = redis.Redis.from_url(server.url)
        broker = f"redis://127.0.0.1:{server.port}/1"
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CELERY_BROKER_URL": broker,
            "WRAPPER_API_URL": wrapper.url,
            "CRM_PRELOAD_CONCURRENCY": str(args.concurrency),
            "CRM_LOG_LEVEL": "WARNING",
        }
        worker = [
            str(BIN / "celery"),
            "-A",
            "tasks",
            "worker",
            "--pool=prefork",
            f"--concurrency={args.workers}",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ]
        app = Celery("tenants-bench")
        app.conf.update(celery_config(load_settings(CELERY_BROKER_URL=broker)))
        memory_before = int(r.info("memory")["used_memory"])
        with processes([worker], env):
            if not wait_for(lambda: bool(app.control.ping(timeout=0.5)), 60):
                raise RuntimeError("the worker did not start")
            print(
                f"preloading {args.tenants:,} tenants x {args.users:,} users, "
                f"{args.workers} worker processes, at most {args.concurrency} at the Wrapper:"
            )
            elapsed, progress = run_preload(r, app, tenants, args.timeout)
        app.close()
        fields = cached_fields(r, tenants)
        used = int(r.info("memory")["used_memory"]) - memory_before
        rows = {
            "preload s": f"{elapsed:.1f}" if elapsed else "timeout",
            "tenants/s": f"{args.tenants / elapsed:,.0f}" if elapsed else "-",
            "failed": str(progress.failed if progress else "?"),
            "cached fields": f"{fields:,}",
            "Redis MiB": f"{used / MIB:,.0f}",
            "bytes per field": f"{used / max(fields, 1):.0f}",
            "bytes per user": f"{used / max(args.tenants * args.users, 1):.0f}",
        }
        rows.update(subscriber_memory(r, env, tenants))
        r.close()

    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_model()}; load average before/after "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f}; sandbox Nagle "
        f"{'on (40 ms stalls)' if args.sandbox_nagle else 'off'}"
    )
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"  {key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
