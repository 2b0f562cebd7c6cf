"""Read-side benchmark: SmartCRMConsumer's latency next to its floors, RSS, bytes per entry.

    python -m benchmarks.read_bench [--samples 20000]

Starts its own Redis (``ops.dev.redis_server``) and the sandbox Wrapper, loads one tenant of
1,000 operations, 200 roles and 10,000 users through the real snapshot path, then measures, in
one run and on one machine, p50/p99 of single calls (each timed on its own):

  * the floors: a plain dict lookup, and a plain ``HGET`` on a pooled redis-py client;
  * ``get_credit_cost`` and ``check_permission``: near-cache hit, and the Redis path (near-cache
    off: one Lua call per read); their ``*_detail`` forms on a near-cache hit, to show what
    the plain value costs on top of the rich answer it is taken from;
  * a reference hit (``get_user_profile`` of a cached profile);
  * the RSS of a separate reader process with the tenant cached, and bytes per cached entry
    (Redis ``MEMORY USAGE``; near-cache: RSS growth per entry).

Prints measured figures only; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from config.settings import Settings, load_settings
from consumer import SmartCRMConsumer
from crmcache.keyspace import DataClass, RefKind, TenantKeys
from crmcache.redis_client import make_redis
from crmcache.store import Store
from ops.dev.redis_server import RedisServer

TENANT = "bench"
KEYS = TenantKeys.of(TENANT)
OPERATIONS, ROLES, USERS = 1_000, 200, 10_000
AREAS = ("leads", "contacts", "reports", "deals", "tasks", "notes", "files", "admin")
GOALS = {"near": 20.0, "redis": 300.0, "reference": 500.0}


def tenant_data(rnd: random.Random) -> dict[DataClass, list[tuple[str, str]]]:
    """1,000 operations, 200 roles (exact grants and trailing wildcards), 10,000 users."""
    ops = [f"crm.{AREAS[i % len(AREAS)]}.op{i}" for i in range(OPERATIONS)]
    costs = [(op, str(rnd.choice([0, 1, 2, 5, 10, 2.5]))) for op in ops]
    roles = []
    for i in range(ROLES):
        grants = rnd.sample(ops, 8) + [f"crm.{rnd.choice(AREAS)}.*"]
        roles.append((f"role-{i}", json.dumps(grants)))
    status, user_roles = [], []
    for i in range(USERS):
        status.append((f"user-{i}", "active" if i % 20 else "suspended"))
        picked = rnd.sample(range(ROLES), rnd.randint(1, 3))
        user_roles.append((f"user-{i}", json.dumps([f"role-{r}" for r in picked])))
    return {
        DataClass.CREDIT_COSTS: costs,
        DataClass.ROLES: roles,
        DataClass.USER_STATUS: status,
        DataClass.USER_ROLES: user_roles,
    }


def load_tenant(store: Store, data: dict[DataClass, list[tuple[str, str]]]) -> None:
    """Through the write side's snapshot scripts, then marked ready (as a preload does)."""
    s0 = store.begin_snapshot(TENANT)
    for data_class, items in data.items():
        store.write_snapshot(TENANT, data_class, s0, items)
    store.mark_ready(TENANT, s0)


def interleaved(
    calls: dict[str, Callable[[], Any]], samples: int, warmup: int = 500
) -> dict[str, tuple[float, float]]:
    """p50 and p99 in µs of ``samples`` calls of each function, each call timed on its own.

    The calls are interleaved round-robin (A B C A B C ...), so every row of the table is
    measured under the same machine load: the side-by-side comparison stays fair on a busy
    machine even when the absolute p99s move.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    timings: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for i in range(samples):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            call = calls[name]
            start = clock()
            call()
            timings[name].append(clock() - start)
    out = {}
    for name, values in timings.items():
        values.sort()
        out[name] = (values[len(values) // 2] / 1000, values[int(len(values) * 0.99)] / 1000)
    return out


def cycler(items: list[Any]) -> Callable[[], Any]:
    """Next item on each call (so reads spread over many keys, not one hot key)."""
    state = {"i": 0}

    def next_item() -> Any:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def rss_mib() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(redis_url: str) -> None:
    """In a fresh process: RSS after imports, then with the whole tenant in the near-cache."""
    settings = load_settings(REDIS_URL=redis_url, CRM_READER_REQUESTS_PRELOAD="false")
    before = rss_mib()
    crm = SmartCRMConsumer(TENANT, settings).initialize()
    for i in range(USERS):
        crm.check_permission(f"user-{i}", "crm.leads.op0")
    for i in range(OPERATIONS):
        crm.get_credit_cost(f"crm.{AREAS[i % len(AREAS)]}.op{i}")
    entries = crm.get_metrics()["criticalCacheSize"]
    after = rss_mib()
    crm.shutdown()
    print(json.dumps({"before": before, "after": after, "entries": entries}))


def measure(settings: Settings, samples: int, rnd: random.Random) -> list[tuple[str, float, float]]:
    ops = [f"crm.{AREAS[i % len(AREAS)]}.op{i}" for i in range(OPERATIONS)]
    users = [f"user-{i}" for i in range(USERS)]
    checks = [(rnd.choice(users), rnd.choice(ops)) for _ in range(5000)]
    floor_dict = {op: (1, 0, 0.0) for op in ops}
    next_op = cycler(ops)
    next_check = cycler(checks)
    client = make_redis(settings.cache_url)
    costs_key = KEYS.values(DataClass.CREDIT_COSTS)
    near = SmartCRMConsumer(TENANT, settings).initialize()
    remote = SmartCRMConsumer(TENANT, settings.model_copy(update={"near_cache": False}))
    # Two groups, each interleaved: in-process reads with their dict floor, and Redis reads
    # with their HGET floor (network calls in between would evict the CPU caches that the
    # in-process reads live on, which is a different benchmark).
    local: dict[str, Callable[[], Any]] = {
        "plain dict lookup (floor)": lambda: floor_dict.get(next_op()),
        "get_credit_cost, near-cache hit": lambda: near.get_credit_cost(next_op()),
        "check_permission, near-cache hit": lambda: near.check_permission(*next_check()),
        "get_credit_cost_detail, near-cache hit": lambda: near.get_credit_cost_detail(next_op()),
        "check_permission_detail, near-cache hit": lambda: near.check_permission_detail(
            *next_check()
        ),
    }
    remote_calls: dict[str, Callable[[], Any]] = {
        "plain HGET, pooled client (floor)": lambda: client.hget(costs_key, next_op()),
        "get_credit_cost, Redis path": lambda: remote.get_credit_cost(next_op()),
        "check_permission, Redis path": lambda: remote.check_permission(*next_check()),
    }
    calls = {**local, **remote_calls}
    try:
        for name in calls:  # first calls load the Lua scripts
            calls[name]()
        results = interleaved(local, samples) | interleaved(remote_calls, samples)
        hits = near.get_metrics()["nearCacheHits"]
        assert hits >= 4 * samples, f"near-cache runs missed the near-cache ({hits} hits)"
    finally:
        near.shutdown()
        remote.shutdown()
        client.close()
    return [(name, *results[name]) for name in calls]


def reference_hit(settings: Settings, samples: int) -> list[tuple[str, float, float]]:
    """get_user_profile of a profile cached in Redis (read through once), next to HGET."""
    from sandbox import SandboxWrapper

    client = make_redis(settings.cache_url)
    costs_key = KEYS.values(DataClass.CREDIT_COSTS)
    with SandboxWrapper() as wrapper:
        ref_settings = settings.model_copy(update={"wrapper_api_url": wrapper.url})
        crm = SmartCRMConsumer("acme", ref_settings)
        path = ("GET", "/api/users/user-456/profile")
        try:
            crm.get_user_profile("user-456")
            results = interleaved(
                {
                    "plain HGET (same run, floor)": lambda: client.hget(costs_key, "crm.leads.op0"),
                    "get_user_profile, reference hit": lambda: crm.get_user_profile("user-456"),
                },
                samples,
            )
            assert wrapper.requests[path] == 1, "the reference hits asked the Wrapper"
        finally:
            crm.shutdown()
            client.close()
    return [(name, *values) for name, values in results.items()]


def bytes_per_entry(client: redis.Redis) -> dict[str, float]:
    acme = TenantKeys.of("acme")
    out = {}
    for data_class, count in (
        (DataClass.CREDIT_COSTS, OPERATIONS),
        (DataClass.ROLES, ROLES),
        (DataClass.USER_STATUS, USERS),
        (DataClass.USER_ROLES, USERS),
    ):
        usage = client.memory_usage(KEYS.values(data_class), samples=0) or 0
        out[f"{data_class.value} (hash field)"] = usage / count
    out["profile entry (hash + TTL)"] = float(
        client.memory_usage(acme.ref(RefKind.PROFILE, "user-456"), samples=0) or 0
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--rss-child", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    rnd = random.Random(7)
    with RedisServer() as server:
        settings = load_settings(REDIS_URL=server.url, CRM_READER_REQUESTS_PRELOAD="false")
        client = make_redis(server.url)
        try:
            load_tenant(Store(client), tenant_data(rnd))
            rows = measure(settings, args.samples, rnd)
            rows += reference_hit(settings, args.samples // 2)
            entry_bytes = bytes_per_entry(client)
        finally:
            client.close()
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.read_bench", "--rss-child", server.url],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        rss = json.loads(child.stdout.strip().splitlines()[-1])
    report(rows, rss, entry_bytes, args.samples)


def report(
    rows: list[tuple[str, float, float]],
    rss: dict[str, Any],
    entry_bytes: dict[str, float],
    samples: int,
) -> None:
    print(
        f"crmcache read benchmark: {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, redis-py {redis.__version__}, {samples} samples per row"
    )
    print(f"tenant: {OPERATIONS} operations, {ROLES} roles, {USERS} users\n")
    print(f"{'read':<42}{'p50 µs':>10}{'p99 µs':>10}{'goal p99':>10}")
    for name, p50, p99 in rows:
        goal = ""
        if "near-cache hit" in name:
            goal = f"{GOALS['near']:.0f}"
        elif "Redis path" in name:
            goal = f"{GOALS['redis']:.0f}"
        elif "reference" in name:
            goal = f"{GOALS['reference']:.0f}"
        print(f"{name:<42}{p50:>10.1f}{p99:>10.1f}{goal:>10}")
    growth = rss["after"] - rss["before"]
    print(
        f"\nreader RSS: {rss['before']:.1f} MiB after imports, {rss['after']:.1f} MiB with "
        f"{rss['entries']} near-cache entries (goal <= 50 MB); "
        f"~{growth * 1024 * 1024 / max(rss['entries'], 1):.0f} bytes per near-cache entry"
    )
    print("Redis bytes per cached entry (MEMORY USAGE):")
    for name, value in entry_bytes.items():
        print(f"  {name:<32}{value:>8.0f}")


if __name__ == "__main__":
    main()
