"""Horizontal workers: the event pipeline with 1, 2 and 4 worker processes.

    python -m benchmarks.scale_bench [--workers 1 2 4] [--events 40000] [--tenants 20]

For each worker count: two ``crmcache subscribe`` processes (one active, one standing by) and
that many ``celery -A tasks worker --pool=solo`` processes (one process each, as on separate
hosts), all on one Redis. Measures throughput (a burst of ``--events`` events spread over
``--tenants`` tenants, published as fast as Redis takes them, until the last is visible) and
propagation latency p50/p99 at a paced ``--rate`` (pipeline_bench's probe). Prints measured
figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import redis

from benchmarks.pipeline_bench import BIN, cpu_model, paced, processes, wait_for, wait_listening
from crmcache import keyspace
from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper


def burst(r: redis.Redis, count: int, tenants: list[str], timeout: float) -> float | None:
    """Publish `count` cost changes round-robin over `tenants`; events/s until all visible."""
    keys = [TenantKeys.of(t) for t in tenants]
    r.delete(*(k.values(DataClass.CREDIT_COSTS) for k in keys))
    started = time.perf_counter()
    for start in range(0, count, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 500, count)):
            body = {
                "eventType": "credit-config-changed",
                "data": {"operationCode": f"op{i}", "newValue": i},
            }
            pipe.publish(keys[i % len(keys)].channel("credit-configs"), json.dumps(body))
        pipe.execute()

    def applied() -> bool:
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hlen(k.values(DataClass.CREDIT_COSTS))
        return sum(pipe.execute()) >= count

    done = wait_for(applied, timeout)
    return count / (time.perf_counter() - started) if done else None


def all_ready(r: redis.Redis, tenants: list[str]) -> bool:
    return all(r.hget(TenantKeys.of(t).meta, "ready") == b"1" for t in tenants)


def worker_command() -> list[str]:
    return [
        str(BIN / "celery"),
        "-A",
        "tasks",
        "worker",
        "--pool=solo",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--events", type=int, default=40_000, help="burst size")
    parser.add_argument("--tenants", type=int, default=20, help="tenants of the burst")
    parser.add_argument("--rate", type=int, default=1000, help="paced rate, events/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced duration")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    tenants = [f"scale{i}" for i in range(args.tenants)]
    rows = []
    with (
        RedisServer() as server,
        SandboxWrapper(
            {"tenants": {t: {} for t in ["bench", *tenants]}}, redis_url=server.url
        ) as wrapper,
    ):
        r = redis.Redis.from_url(server.url)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
            "WRAPPER_API_URL": wrapper.url,
            "CRM_TENANTS": ",".join(["bench", *tenants]),
            "CRM_LOG_LEVEL": "WARNING",
        }
        subscribers = [[str(BIN / "crmcache"), "subscribe"]] * 2
        for count in args.workers:
            r.flushall()
            with processes([*[worker_command()] * count, *subscribers], env):
                wait_listening(r)
                # The subscribe's resync first: a preload racing the burst would remove the
                # burst's values, which the Wrapper does not have.
                if not wait_for(lambda: all_ready(r, ["bench", *tenants]), 60):
                    raise RuntimeError("the tenants were never preloaded")
                rate = burst(r, args.events, tenants, timeout=max(120.0, args.events / 200))
                p50, p99, unseen = paced(r, server.url, args.rate, args.seconds)
                leader = r.get(keyspace.LEADER)
            rows.append(
                {
                    "worker processes": str(count),
                    "subscribers": "2 (1 active)" if leader else "?",
                    "events/s": f"{rate:,.0f}" if rate else "timeout",
                    f"p50 ms @{args.rate}/s": f"{p50:.2f}",
                    f"p99 ms @{args.rate}/s": f"{p99:.2f}",
                    "unseen": str(unseen),
                }
            )
        r.close()

    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_model()}; load average before/after "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f}; burst of {args.events:,} events over "
        f"{args.tenants} tenants; Redis broker on loopback"
    )
    headers = list(rows[0])
    widths = [max(len(h), *(len(row[h]) for row in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(headers, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
