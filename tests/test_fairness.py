"""Fair sharing between tenants, end to end: a tenant that floods takes the bulk lane in large
batches, another tenant's event is not held back by the flood's backlog, and a flood published
faster than the subscriber reads does not queue in front of another tenant's messages.

Each test has its own broker database, so that no other worker of the session consumes it.
Exact latency figures belong to ``benchmarks/fairness_bench.py``; the bounds here are generous.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.celery import EVENTS_BULK_QUEUE, EVENTS_QUEUE
from consumer.ingest.subscriber import Subscriber
from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from tasks.producer import CeleryEnqueuer
from tests.conftest import RunningSubscriber, wait_until
from tests.processes import Proc, running, subscriber_args, worker_args

FLOOD, QUIET = TenantKeys.of("flood"), TenantKeys.of("quiet")


def user_changed(i: int) -> str:
    return json.dumps(
        {"eventType": "user-changed", "data": {"userId": f"u{i}", "status": "active"}}
    )


def cost_changed(value: int) -> str:
    return json.dumps(
        {"eventType": "credit-config-changed", "data": {"operationCode": "op", "newValue": value}}
    )


def queued_batches(broker: redis.Redis, queue: str) -> list[tuple[str, int]]:
    """(tenant, events) of every apply_events task waiting in a Redis-broker queue."""
    batches = []
    for raw in broker.lrange(queue, 0, -1):
        message = json.loads(raw)
        (tenant, events), _, _ = json.loads(base64.b64decode(message["body"]))
        batches.append((tenant, len(events)))
    return batches


@pytest.fixture
def private_broker(redis_server: RedisServer) -> Iterator[tuple[str, redis.Redis]]:
    url = f"redis://127.0.0.1:{redis_server.port}/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


@pytest.fixture
def start_private_subscriber(
    settings: Any, private_broker: tuple[str, redis.Redis], r: redis.Redis
) -> Iterator[Callable[[], RunningSubscriber]]:
    started: list[tuple[RunningSubscriber, CeleryEnqueuer]] = []

    def start() -> RunningSubscriber:
        own = settings.model_copy(update={"celery_broker_url": private_broker[0]})
        enqueuer = CeleryEnqueuer(own)
        sub = RunningSubscriber(Subscriber(own, enqueuer)).start()
        started.append((sub, enqueuer))
        wait_until(lambda: sub.subscriber.stats["subscribes"] >= 1, what="subscription")
        return sub

    yield start
    for sub, enqueuer in started:
        sub.stop()
        enqueuer.close()


def publish_flood(r: redis.Redis, count: int, quiet_every: int = 0) -> int:
    """Publish `count` user changes of the flood tenant, pipelined; with `quiet_every`, one
    quiet cost change after every that many. Returns the number of quiet events."""
    quiet = 0
    for start in range(0, count, 500):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 500, count)):
            pipe.publish(FLOOD.channel("users"), user_changed(i))
            if quiet_every and (i + 1) % quiet_every == 0:
                quiet += 1
                pipe.publish(QUIET.channel("credit-configs"), cost_changed(quiet))
        pipe.execute()
    return quiet


def test_a_flooding_tenant_takes_the_bulk_lane_in_large_batches_and_others_stay_interactive(
    r: redis.Redis,
    settings: Any,
    private_broker: tuple[str, redis.Redis],
    start_private_subscriber: Callable[[], RunningSubscriber],
) -> None:
    sub = start_private_subscriber()
    # When one tenant floods 3,000 changes while another sends a few, and no worker runs
    quiet = publish_flood(r, 3000, quiet_every=500)
    wait_until(
        lambda: sub.subscriber.stats["published"] == 3000 + quiet, what="everything enqueued"
    )
    # Then the quiet tenant's batches all wait in the interactive lane
    interactive = queued_batches(private_broker[1], EVENTS_QUEUE)
    bulk = queued_batches(private_broker[1], EVENTS_BULK_QUEUE)
    assert sum(n for t, n in interactive if t == "quiet") == quiet == 6
    assert all(tenant == "flood" for tenant, _ in bulk)
    # And most of the flood in the bulk lane, in batches larger than the interactive ones
    assert sum(n for _, n in bulk) >= 3000 - 2 * settings.bulk_threshold
    assert max(n for _, n in bulk) > settings.batch_size
    assert len(bulk) < 3000 / settings.batch_size


@pytest.mark.slow
def test_a_quiet_tenants_event_overtakes_a_flood_backlog(
    r: redis.Redis,
    env: dict[str, str],
    private_broker: tuple[str, redis.Redis],
    start_private_subscriber: Callable[[], RunningSubscriber],
    tmp_path: Path,
) -> None:
    # Given a backlog of 20,000 user changes of one tenant, waiting for a worker
    sub = start_private_subscriber()
    publish_flood(r, 20_000)
    wait_until(lambda: sub.subscriber.stats["published"] == 20_000, what="flood enqueued")
    worker = Proc(
        worker_args(pool="prefork", concurrency=2),
        {**os.environ, "CELERY_BROKER_URL": private_broker[0]},
        tmp_path / "worker.log",
    )
    with running(worker):
        users = FLOOD.values(DataClass.USER_STATUS)
        wait_until(lambda: r.hlen(users) > 0, timeout=30, what="the worker applying the flood")
        # When another tenant changes a cost
        published = time.monotonic()
        assert r.publish(QUIET.channel("credit-configs"), cost_changed(7)) == 1
        # Then it is applied long before the flood is, within a generous bound
        wait_until(
            lambda: r.hget(QUIET.values(DataClass.CREDIT_COSTS), "op") == b"7",
            timeout=20,
            what="the quiet tenant's cost",
        )
        latency = time.monotonic() - published
        applied = r.hlen(users)
        assert applied < 10_000, f"the quiet event waited for {applied} flood events"
        assert latency < 2.0


def probe_latencies(r: redis.Redis, until: Callable[[], bool], count: int = 10**6) -> list[float]:
    """Publish a quiet cost change every 10 ms until `until()` (or `count` of them); seconds
    from each publish until the cache holds it (one at a time: each probe is waited for)."""
    costs, latencies = QUIET.values(DataClass.CREDIT_COSTS), []
    start = int(r.hget(costs, "op") or 0)
    deadline = time.monotonic() + 60
    while len(latencies) < count and not until() and time.monotonic() < deadline:
        value = start + len(latencies) + 1
        published = time.monotonic()
        assert r.publish(QUIET.channel("credit-configs"), cost_changed(value)) == 1
        expected = str(value).encode()
        wait_until(lambda v=expected: r.hget(costs, "op") == v, timeout=20, interval=0.001)
        latencies.append(time.monotonic() - published)
        time.sleep(max(0.0, published + 0.01 - time.monotonic()))
    return latencies


def p99_ms(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] * 1000


def test_an_unpaced_flood_does_not_queue_in_front_of_another_tenants_events(
    r: redis.Redis,
    env: dict[str, str],
    wrapper: Any,
    private_broker: tuple[str, redis.Redis],
    tmp_path: Path,
) -> None:
    # Given a subscriber serving two listed tenants (each on a pub/sub connection of its own
    # by default) and two worker processes, all real processes
    for tenant in ("flood", "quiet"):
        wrapper.add_tenant(tenant)
    proc_env = {
        **os.environ,
        **env,
        "CELERY_BROKER_URL": private_broker[0],
        "CRM_TENANTS": "flood,quiet",
        "CRM_LOG_LEVEL": "WARNING",
    }
    worker = Proc(worker_args(pool="prefork", concurrency=2), proc_env, tmp_path / "worker.log")
    sub = Proc(subscriber_args(), proc_env, tmp_path / "subscriber.log")
    publisher = redis.Redis.from_url(env["REDIS_URL"])
    with running(worker, sub):
        wait_until(lambda: r.hget(QUIET.meta, "ready") == b"1", timeout=30, what="first resync")
        idle = probe_latencies(r, lambda: False, count=100)
        # When another tenant publishes 50,000 user changes as fast as Redis takes them (faster
        # than one subscriber reads them) while the quiet tenant changes a cost every 10 ms
        flooding = threading.Thread(target=publish_flood, args=(publisher, 50_000))
        flooding.start()
        users = FLOOD.values(DataClass.USER_STATUS)
        busy = probe_latencies(r, lambda: r.hlen(users) >= 50_000)
        flooding.join()
        assert r.hlen(users) == 50_000, sub.output()[-2000:]
    publisher.close()
    # Then the quiet tenant's changes keep arriving: none waits for the flood's read backlog
    # (with one pub/sub connection for both, CRM_SUBSCRIBER_SHARDS=1, the worst took ~1.2 s)
    worst = max(busy) * 1000
    assert worst < 500, f"quiet: worst {worst:.0f} ms flooded, p99 {p99_ms(idle):.0f} ms idle"
    assert len(busy) >= 20
