"""One reader process serving every tenant: connections, memory, cold and warm reads.

    python -m benchmarks.tenants_reader_bench [--tenants 1000] [--operations 100] [--roles 20]
                                              [--users 200] [--samples 200000] [--zipf 1.1]

Starts its own Redis, loads every tenant through the write side's snapshot scripts, then runs
the reader in a separate process (so its RSS is its own) holding one ``CRMCache`` for all
tenants, and prints, measured in this run:

* the Redis connections the process holds (``CLIENT LIST``, counted by this process while the
  reader waits) after it touched 1, 10, 100 and every tenant;
* the time to the first answer of a cold tenant (its state built, one Redis round trip) next
  to a plain ``HGET`` on the same pool (the floor);
* near-cache hit p50/p99 of ``get_credit_cost_detail`` and ``check_permission_detail`` with
  reads spread over all tenants with a Zipf skew, next to the same reads on one tenant served
  by a client of its own (interleaved in rounds, so both see the same machine load);
* RSS after imports, after the Zipf reads, and with every tenant's data in the near-cache;
* the version checks the background thread sent meanwhile (``HMGET`` calls per second).

Goals: at most 4 connections at any tenant count, RSS at most 120 MiB with 1,000
tenants, hit p99 within 1.5x of the one-tenant figure. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import redis

from benchmarks.pipeline_bench import cpu_model
from benchmarks.read_bench import rss_mib
from config.settings import load_settings
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.store import Store
from ops.dev.redis_server import RedisServer

OP_COUNT_CHECKPOINTS = (1, 10, 100)
ROUND = 1000
GOALS = {"connections": 4, "rss": 120.0, "p99_ratio": 1.5}


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:04d}" for i in range(count)]


def tenant_data(ops: int, roles: int, users: int) -> dict[DataClass, list[tuple[str, str]]]:
    """``ops`` operations, ``roles`` roles (a wildcard and exact grants), ``users`` users."""
    role_grants = [
        json.dumps([f"crm.area{r % 10}.*", "crm.reports.read", f"crm.op{r}"]) for r in range(roles)
    ]
    return {
        DataClass.CREDIT_COSTS: [(f"crm.op{i}", str(i % 7)) for i in range(ops)],
        DataClass.ROLES: [(f"r{r}", grants) for r, grants in enumerate(role_grants)],
        DataClass.USER_STATUS: [
            (f"user-{u}", "active" if u % 10 else "suspended") for u in range(users)
        ],
        DataClass.USER_ROLES: [
            (f"user-{u}", json.dumps([f"r{u % roles}", f"r{(u + 7) % roles}"]))
            for u in range(users)
        ],
    }


def load(store: Store, tenants: list[str], data: dict[DataClass, list[tuple[str, str]]]) -> None:
    for tenant in tenants:
        s0 = store.begin_snapshot(tenant)
        for data_class, items in data.items():
            store.write_snapshot(tenant, data_class, s0, items)
        store.mark_ready(tenant, s0)


# --- the reader process -------------------------------------------------------------------------


def checkpoint(name: str) -> None:
    """Tell the parent where we are and wait until it counted our connections."""
    print(f"CHECKPOINT {name}", flush=True)
    sys.stdin.readline()


def percentiles(values: list[int]) -> tuple[float, float]:
    values = sorted(values)
    return values[len(values) // 2] / 1000, values[int(len(values) * 0.99)] / 1000


def cold_first_answers(crm: Any, tenants: list[str]) -> dict[str, tuple[float, float]]:
    """Touch every tenant once (in random order), timing each first answer, interleaved with a
    plain HGET on the same pool; checkpoints after 1, 10, 100 tenants and all of them."""
    client = crm.conn.client
    order = random.Random(3).sample(tenants, len(tenants))
    cold, floor = [], []
    clock = time.perf_counter_ns
    for n, tenant in enumerate(order, start=1):
        view = crm.tenant(tenant)
        start = clock()
        view.get_credit_cost_detail("crm.op1")
        cold.append(clock() - start)
        key = TenantKeys.of(tenant).values(DataClass.CREDIT_COSTS)
        start = clock()
        client.hget(key, "crm.op2")
        floor.append(clock() - start)
        if n in OP_COUNT_CHECKPOINTS:
            checkpoint(f"{n} tenants")
    checkpoint(f"{len(order)} tenants")
    return {"cold": percentiles(cold), "floor": percentiles(floor)}


class ZipfReads:
    """Reads spread over the tenants with a Zipf skew, drawn round by round (nothing is kept:
    the reader's RSS stays its own): half credit costs, half permission checks."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.rnd = random.Random(seed)
        weights = [1 / (rank + 1) ** args.zipf for rank in range(args.tenants)]
        self.cum_weights = list(itertools.accumulate(weights))
        self.ranked = self.rnd.sample(range(args.tenants), args.tenants)  # tenant of each rank
        self.ops = [f"crm.op{i}" for i in range(args.operations)]
        self.users = [f"user-{u}" for u in range(args.users)]
        self.permissions = ["crm.reports.read", *(f"crm.area{a}.edit" for a in range(10))]

    def round(self, count: int) -> list[tuple[int, str, str]]:
        """(tenant index, operation or user, "" or the permission) per read."""
        rnd = self.rnd
        picked = rnd.choices(self.ranked, cum_weights=self.cum_weights, k=count)
        out = []
        for tenant in picked:
            if rnd.random() < 0.5:
                out.append((tenant, rnd.choice(self.ops), ""))
            else:
                out.append((tenant, rnd.choice(self.users), rnd.choice(self.permissions)))
        return out


def timed_hits(views: list[Any], reads: list[tuple[int, str, str]], out: list[int]) -> int:
    """Each read timed on its own; the near-cache hits' durations go to ``out``. Returns how
    many reads were hits."""
    clock = time.perf_counter_ns
    hits = 0
    for tenant, key, permission in reads:
        view = views[tenant]
        start = clock()
        if permission:
            answer: Any = view.check_permission_detail(key, permission)
        else:
            answer = view.get_credit_cost_detail(key)
        elapsed = clock() - start
        if answer.source == "near-cache":
            out.append(elapsed)
            hits += 1
    return hits


def zipf_reads(crm: Any, solo: Any, args: argparse.Namespace) -> dict[str, Any]:
    views = [crm.tenant(t) for t in tenant_ids(args.tenants)]
    alone = [solo] * args.tenants
    warm = ZipfReads(args, seed=5)
    for _ in range(0, args.samples, ROUND):  # warm-up: what the near-cache will hold
        reads = warm.round(ROUND)
        timed_hits(views, reads, [])
        timed_hits(alone, [(0, *rest) for _, *rest in reads], [])
    drawn = ZipfReads(args, seed=5)
    many_hits: list[int] = []
    one_hits: list[int] = []
    started = time.monotonic()
    checkpoint("zipf start")
    for _ in range(0, args.samples, ROUND):
        reads = drawn.round(ROUND)
        timed_hits(views, reads, many_hits)
        timed_hits(alone, [(0, *rest) for _, *rest in reads], one_hits)
    checkpoint("zipf end")
    return {
        "elapsed": time.monotonic() - started,
        "many": percentiles(many_hits),
        "one": percentiles(one_hits),
        "hit_rate": len(many_hits) / args.samples,
        "touched": len(crm.tenants()),
    }


def probe(args: argparse.Namespace) -> None:
    """(--probe) The reader process."""
    from consumer import CRMCache

    imported = rss_mib()
    settings = load_settings(REDIS_URL=args.probe, CRM_READER_REQUESTS_PRELOAD="false")
    crm = CRMCache(settings).start()
    checkpoint("0 tenants")
    first = cold_first_answers(crm, tenant_ids(args.tenants))
    solo_cache = CRMCache(settings)
    solo = solo_cache.tenant(tenant_ids(1)[0])
    zipf = zipf_reads(crm, solo, args)
    gc.collect()
    after_zipf, entries_zipf = rss_mib(), crm.get_metrics()["nearCacheEntries"]
    for tenant in tenant_ids(args.tenants):
        crm.tenant(tenant).initialize()
    full, entries_full = rss_mib(), crm.get_metrics()["nearCacheEntries"]
    checkpoint("all warm")
    solo_cache.close()
    crm.close()
    rss = {"imports": imported, "zipf": after_zipf, "full": full}
    entries = {"zipf": entries_zipf, "full": entries_full}
    print(json.dumps({**first, **zipf, "rss": rss, "entries": entries}))


# --- the parent ----------------------------------------------------------------------------------


def run_probe(args: argparse.Namespace, url: str, admin: redis.Redis) -> dict[str, Any]:
    """Run the reader process; at each checkpoint count its connections (everyone's but ours)
    and the server's HMGET calls so far."""
    command = [sys.executable, "-m", "benchmarks.tenants_reader_bench", "--probe", url]
    command += [f"--{k}={getattr(args, k)}" for k in ("tenants", "operations", "users", "zipf")]
    command += [f"--samples={args.samples}"]
    counts: dict[str, tuple[int, int]] = {}
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("CHECKPOINT "):
                result: dict[str, Any] = json.loads(line)
                break
            name = line.split(" ", 1)[1].strip()
            stats = admin.info("commandstats").get("cmdstat_hmget", {})
            counts[name] = (len(admin.client_list()) - 1, int(stats.get("calls", 0)))
            proc.stdin.write("ok\n")
            proc.stdin.flush()
    result["connections"] = counts
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--operations", type=int, default=100)
    parser.add_argument("--roles", type=int, default=20)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--zipf", type=float, default=1.1, help="skew of reads over tenants")
    parser.add_argument("--probe", metavar="REDIS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args)
        return 0
    load_before = os.getloadavg()[0]
    tenants = tenant_ids(args.tenants)
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        started = time.perf_counter()
        load(Store(admin), tenants, tenant_data(args.operations, args.roles, args.users))
        print(f"loaded {args.tenants:,} tenants in {time.perf_counter() - started:.1f}s")
        result = run_probe(args, server.url, admin)
        admin.close()
    report(args, result, load_before)
    return 0


def report(args: argparse.Namespace, result: dict[str, Any], load_before: float) -> None:
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_model()}, Python {sys.version.split()[0]}; "
        f"load average before/after {load_before:.2f} / {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.tenants:,} tenants x ({args.operations} operations, {args.roles} roles, "
        f"{args.users} users); {args.samples:,} reads, Zipf s={args.zipf}\n"
    )
    connections = result["connections"]
    held = {name: n for name, (n, _) in connections.items() if name.endswith("tenants")}
    print("Redis connections held by the reader process (CLIENT LIST):")
    for name, count in held.items():
        print(f"  after touching {name:<14} {count}   (goal <= {GOALS['connections']})")
    cold, floor = result["cold"], result["floor"]
    print(
        f"\nfirst answer of a cold tenant: p50 {cold[0]:.0f} µs, p99 {cold[1]:.0f} µs "
        f"(plain HGET on the same pool: p50 {floor[0]:.0f} µs, p99 {floor[1]:.0f} µs)"
    )
    many, one = result["many"], result["one"]
    ratio = many[1] / one[1] if one[1] else float("nan")
    print(
        f"near-cache hit, reads over all tenants: p50 {many[0]:.1f} µs, p99 {many[1]:.1f} µs; "
        f"one tenant (same run): p50 {one[0]:.1f} µs, p99 {one[1]:.1f} µs; "
        f"p99 ratio {ratio:.2f} (goal <= {GOALS['p99_ratio']})"
    )
    print(
        f"near-cache hit rate of the Zipf reads: {result['hit_rate']:.1%} "
        f"({result['touched']:,} tenants held)"
    )
    rss, entries = result["rss"], result["entries"]
    print(
        f"\nreader RSS: {rss['imports']:.1f} MiB after imports; {rss['zipf']:.1f} MiB after the "
        f"Zipf reads ({entries['zipf']:,} near-cache entries); {rss['full']:.1f} MiB with every "
        f"tenant's data held ({entries['full']:,} entries; goal <= {GOALS['rss']:.0f} MiB)"
    )
    start, end = connections["zipf start"][1], connections["zipf end"][1]
    print(
        f"background version checks during the reads: "
        f"{(end - start) / result['elapsed']:,.0f} HMGET/s for {result['touched']:,} tenants"
    )


if __name__ == "__main__":
    sys.exit(main())
