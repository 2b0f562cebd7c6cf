"""Fairness benchmark: a quiet tenant's propagation latency while another tenant floods.

    python -m benchmarks.fairness_bench [--flood 50000] [--flood-rate 0] [--workers 2]

One Redis, one subscriber process, one Celery worker (prefork). A *quiet* tenant publishes a
credit-cost change every ``--probe-ms`` and we record when each becomes visible in the cache
(PUBLISH -> the cache holds that value or a newer one). First alone (idle p50/p99), then while a
*flood* tenant publishes a bulk import of ``--flood`` user changes (as fast as Redis takes them,
or paced at ``--flood-rate`` per second), until the last flood event is applied.
Each variant runs with its own settings, side by side; prints measured figures only.

Columns: latencies in ms; "to stamp" is publish -> the subscriber stamped the quiet event (its
read lag; sampled every 2 ms, so approximate); "peak queued tasks" is the broker's event queues'
largest backlog. Pub/sub is one ordered stream per connection: with every tenant on one
connection (``CRM_SUBSCRIBER_SHARDS=1``, the baseline) a flood published faster than the
subscriber reads (unpaced) delays every tenant by the subscriber's read lag; sharded (the
default), the quiet tenant has a connection of its own (consumer/ingest/pubsub_shards.py), and the
flood's connection is read at most CRM_BULK_MAX_RATE events a second once it is bulk ("paced"),
so that the flood cannot take the CPU and the workers from the quiet tenant. "p99 after
published" leaves out the probes sent while this benchmark's own publisher was flooding Redis
(on a 2-core machine it competes with everything else for the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import redis

from benchmarks.pipeline_bench import BIN, cpu_model, processes, wait_for
from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from sandbox import SandboxWrapper

QUIET, FLOOD = TenantKeys.of("quiet"), TenantKeys.of("flood")

INTERACTIVE_QUEUES = "crm.events,crm.preload,crm.credits,crm.metrics"


@dataclass(frozen=True)
class Variant:
    env: dict[str, str]
    workers: tuple[tuple[int, str | None, int], ...]
    """(nice, -Q queues or None for all, processes) per worker command; None: --workers."""
    options: tuple[str, ...] = ()


ONE_CONNECTION = {"CRM_SUBSCRIBER_SHARDS": "1"}
"""The baseline: every tenant's channels on one pub/sub connection."""

VARIANTS: dict[str, Variant] = {
    "lanes off, 1 connection": Variant({"CRM_EVENT_LANES": "0", **ONE_CONNECTION}, ((0, None, 0),)),
    "bulk lane, 1 connection": Variant(ONE_CONNECTION, ((0, None, 0),)),
    "bulk lane, sharded, not paced": Variant({"CRM_BULK_MAX_RATE": "0"}, ((0, None, 0),)),
    "bulk lane, sharded, paced (default)": Variant({}, ((0, None, 0),)),
    "bulk lane, sharded, paced 5,000/s": Variant({"CRM_BULK_MAX_RATE": "5000"}, ((0, None, 0),)),
    "lanes off, sharded": Variant({"CRM_EVENT_LANES": "0"}, ((0, None, 0),)),
    "bulk lane, sharded, prefetch 1": Variant({}, ((0, None, 0),), ("--prefetch-multiplier=1",)),
    "bulk lane, sharded, own niced worker": Variant(
        {}, ((0, INTERACTIVE_QUEUES, 1), (10, "crm.events.bulk", 1))
    ),
}


def probe_body(i: int) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": "probe", "newValue": i}}
    )


def flood_body(i: int) -> str:
    return json.dumps(
        {
            "eventType": "user-changed",
            "data": {"userId": f"u{i}", "status": "active", "roles": ["sales"]},
        }
    )


class QuietProbe:
    """Publishes the quiet tenant's probe every `interval`; records when each became visible."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.sent: list[float] = []
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._watch_client = redis.Redis.from_url(url)
        self._pubsub = self._watch_client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(QUIET.changes_channel)
        self.stamped: list[tuple[float, int]] = []
        self._threads = [
            threading.Thread(target=self._watch_stamps, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
            threading.Thread(target=self._publish, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _publish(self) -> None:
        client = redis.Redis.from_url(self.url)
        channel = QUIET.channel("credit-configs")
        started = time.perf_counter()
        i = 0
        while not self._stop.is_set():
            target = started + i * self.interval
            while (now := time.perf_counter()) < target:
                time.sleep(max(0.0, target - now - 0.0002))
            self.sent.append(time.perf_counter())
            client.publish(channel, probe_body(i))
            i += 1
        client.close()

    def _watch(self) -> None:
        last = -1
        field = QUIET.values(DataClass.CREDIT_COSTS)
        while not self._stop.is_set():
            if self._pubsub.get_message(timeout=0.05) is None:
                continue
            value = self._watch_client.hget(field, "probe")
            now = time.perf_counter()
            if value is not None and int(value) > last:
                last = int(value)
                self.seen.append((now, last))

    def _watch_stamps(self) -> None:
        client = redis.Redis.from_url(self.url)
        last = 0
        while not self._stop.wait(0.002):
            value = int(client.get(QUIET.seq) or 0)
            if value > last:
                last = value
                self.stamped.append((time.perf_counter(), value))
        client.close()

    def stamp_lag(self, first: int, last: int, offset: int) -> list[float]:
        """ms from publish until the subscriber stamped probe i (seq i + offset)."""
        out, j = [], 0
        for i in range(first, last):
            while j < len(self.stamped) and self.stamped[j][1] < i + offset:
                j += 1
            if j < len(self.stamped):
                out.append((self.stamped[j][0] - self.sent[i]) * 1000)
        return out

    def mark(self) -> int:
        return len(self.sent)

    def latencies(self, first: int, last: int) -> list[float]:
        """Propagation latency (ms) of probes first..last-1; a probe never seen is left out."""
        out, j = [], 0
        for i in range(first, last):
            while j < len(self.seen) and self.seen[j][1] < i:
                j += 1
            if j < len(self.seen):
                out.append((self.seen[j][0] - self.sent[i]) * 1000)
        return out

    def close(self) -> None:
        time.sleep(0.3)  # let the last probes land
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._pubsub.close()
        self._watch_client.close()


class QueueDepth:
    """Samples the broker's event queues (Redis lists) every 10 ms: the peak backlog."""

    def __init__(self, broker_url: str, queues: list[str]) -> None:
        self.client = redis.Redis.from_url(broker_url)
        self.queues = queues
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            pipe = self.client.pipeline(transaction=False)
            for queue in self.queues:
                pipe.llen(queue)
            self.peak = max(self.peak, sum(pipe.execute()))

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        self.client.close()
        return self.peak


def flood(r: redis.Redis, count: int, rate: float) -> None:
    channel = FLOOD.channel("users")
    chunk = 500 if rate <= 0 else max(1, int(rate / 100))
    started = time.perf_counter()
    for start in range(0, count, chunk):
        if rate > 0:
            target = started + start / rate
            while (now := time.perf_counter()) < target:
                time.sleep(target - now)
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + chunk, count)):
            pipe.publish(channel, flood_body(i))
        pipe.execute()


def quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return (float("nan"),) * 3  # type: ignore[return-value]
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98], max(values)


def worker_command(
    nice: int, queues: str | None, count: int, options: tuple[str, ...]
) -> list[str]:
    return [
        *(["nice", "-n", str(nice)] if nice else []),
        str(BIN / "celery"),
        "-A",
        "tasks",
        "worker",
        "--pool=prefork",
        f"--concurrency={count}",
        *(["-Q", queues] if queues else []),
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
        *options,
    ]


def run_variant(
    name: str, variant: Variant, server: RedisServer, args: argparse.Namespace
) -> dict[str, str]:
    r = redis.Redis.from_url(server.url)
    r.flushall()
    env = {**args.base_env, **variant.env}
    workers = [
        worker_command(nice, queues, count or args.workers, variant.options)
        for nice, queues, count in variant.workers
    ]
    with processes([*workers, [str(BIN / "crmcache"), "subscribe"]], env):
        channel = QUIET.channel("credit-configs")
        if not wait_for(lambda: r.publish(channel, probe_body(-1)) >= 1, 30):
            raise RuntimeError("the subscriber never listened")
        time.sleep(1.0)
        probe = QuietProbe(server.url, args.probe_ms / 1000)
        time.sleep(args.idle_seconds)
        idle_end = probe.mark()
        depth = QueueDepth(env["CELERY_BROKER_URL"], event_queues())
        started = time.perf_counter()
        flood(r, args.flood, args.flood_rate)
        published = time.perf_counter() - started
        published_at = probe.mark()
        users = FLOOD.values(DataClass.USER_STATUS)
        done = wait_for(lambda: r.hlen(users) >= args.flood, 300)
        drained = time.perf_counter() - started
        flood_end = probe.mark()
        probe.close()
        peak = depth.close()
    r.close()
    idle = quantiles(probe.latencies(5, idle_end))
    busy = quantiles(probe.latencies(idle_end, flood_end))
    draining = quantiles(probe.latencies(published_at, flood_end))
    offset = probe.stamped[0][1] if probe.stamped else 0
    stamp = quantiles(probe.stamp_lag(idle_end, flood_end, offset))
    return {
        "variant": name,
        "idle p50": f"{idle[0]:.1f}",
        "idle p99": f"{idle[1]:.1f}",
        "flood p50": f"{busy[0]:.1f}",
        "flood p99": f"{busy[1]:.1f}",
        "flood max": f"{busy[2]:.1f}",
        "p99 ratio": f"{busy[1] / idle[1]:.1f}x",
        "p99 after published": f"{draining[1]:.1f}",
        "flood p50/p99 to stamp": f"{stamp[0]:.0f}/{stamp[1]:.0f}",
        "flood published s": f"{published:.2f}",
        "flood applied s": f"{drained:.2f}" if done else "timeout",
        "flood ev/s": f"{args.flood / drained:,.0f}" if done else "-",
        "peak queued tasks": str(peak),
    }


def event_queues() -> list[str]:
    from config import celery as celery_conf

    return [name for name in celery_conf.QUEUES if name.startswith("crm.events")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=50_000, help="flood events")
    parser.add_argument("--flood-rate", type=float, default=0, help="events/s, 0: unpaced")
    parser.add_argument("--probe-ms", type=float, default=10.0, help="quiet probe interval")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="repeatable")
    args = parser.parse_args()
    args.load_before = f"{os.getloadavg()[0]:.2f}"

    rows = []
    with (
        RedisServer() as server,
        SandboxWrapper({"tenants": {"quiet": {}, "flood": {}}}, redis_url=server.url) as wrapper,
    ):
        args.base_env = {
            **os.environ,
            "REDIS_URL": server.url,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{server.port}/1",
            "WRAPPER_API_URL": wrapper.url,
            "CRM_TENANTS": "quiet,flood",
            "CRM_LOG_LEVEL": "WARNING",
        }
        for name in args.variant or list(VARIANTS):
            rows.append(run_variant(name, VARIANTS[name], server, args))

    load = os.getloadavg()
    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_model()}; load average before/after "
        f"{args.load_before} / {load[0]:.2f}; flood {args.flood:,} user changes "
        f"{'unpaced' if args.flood_rate <= 0 else f'at {args.flood_rate:,.0f}/s'}, "
        f"quiet probe every {args.probe_ms:g} ms, {args.workers} worker processes; ms"
    )
    headers = list(rows[0])
    widths = [max(len(h), *(len(row[h]) for row in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(headers, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
