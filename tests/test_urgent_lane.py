"""The urgent lane: events that may revoke access reach the worker serving crm.events.urgent.

Real processes: the subscriber (in a thread, with its Celery producer) and a solo-pool worker
consuming only ``crm.events.urgent``, on a broker database of their own, so that the session's
worker (which consumes every queue of the usual broker) cannot apply anything here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from config.celery import EVENTS_QUEUE, EVENTS_URGENT_QUEUE
from crmcache.keyspace import DataClass, TenantKeys
from tests.conftest import RunningSubscriber, wait_until
from tests.processes import Proc, running, worker_args

TENANT = "urgent"
KEYS = TenantKeys.of(TENANT)
BROKER_DB = 5


@pytest.fixture
def broker(redis_server: Any) -> Iterator[tuple[str, redis.Redis]]:
    url = f"redis://127.0.0.1:{redis_server.port}/{BROKER_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


@contextmanager
def subscribing(settings: Any, url: str, fast_path: bool) -> Iterator[Any]:
    """A subscriber with the urgent lane on, sending to the broker at ``url``."""
    from consumer.ingest.subscriber import Subscriber
    from tasks.producer import CeleryEnqueuer

    update = {"celery_broker_url": url, "urgent_lane": True, "revoke_fast_path": fast_path}
    ours = settings.model_copy(update=update)
    enqueuer = CeleryEnqueuer(ours)
    subscriber = RunningSubscriber(Subscriber(ours, enqueuer)).start()
    try:
        wait_until(lambda: subscriber.subscriber.stats["subscribes"] >= 1, what="subscription")
        yield subscriber
    finally:
        subscriber.stop()
        enqueuer.close()


def urgent_worker(env: dict[str, str], url: str, tmp_path: Any) -> Proc:
    """A worker serving only the urgent lane."""
    args = [*worker_args("solo", 1), "-Q", EVENTS_URGENT_QUEUE]
    return Proc(args, {**env, "CELERY_BROKER_URL": url}, tmp_path / "worker.log")


@pytest.fixture
def urgent_pipeline(
    settings: Any, env: dict[str, str], broker: tuple[str, redis.Redis], tmp_path: Any
) -> Iterator[Any]:
    """The subscriber (fast path off) and a worker serving only the urgent lane."""
    url, _ = broker
    with running(urgent_worker(env, url, tmp_path)), subscribing(settings, url, False) as sub:
        yield sub


def publish(r: redis.Redis, stream: str, event_type: str, data: dict[str, Any]) -> None:
    body = json.dumps({"eventType": event_type, "data": data})
    assert r.publish(KEYS.channel(stream), body) >= 1, "the subscriber is not listening"


def test_a_suspension_takes_the_urgent_lane_and_a_cost_change_does_not(
    r: redis.Redis, broker: tuple[str, redis.Redis], urgent_pipeline: Any
) -> None:
    # Given a cost change and a suspension published together
    publish(r, "credit-configs", "credit-config-changed", {"operationCode": "op", "newValue": 3})
    publish(r, "users", "user-changed", {"userId": "u1", "status": "suspended"})
    # Then the worker that serves only the urgent lane applies the suspension
    status = KEYS.values(DataClass.USER_STATUS)
    wait_until(lambda: r.hget(status, "u1") == b"suspended", timeout=20, what="suspension")
    # And the cost change waits on the interactive lane, for the other workers
    _, client = broker
    assert client.llen(EVENTS_QUEUE) == 1
    assert r.hget(KEYS.values(DataClass.CREDIT_COSTS), "op") is None
    assert urgent_pipeline.subscriber.stats["urgent_batches"] == 1


def test_the_fast_path_applies_a_suspension_before_any_worker_and_the_task_changes_nothing(
    r: redis.Redis,
    settings: Any,
    env: dict[str, str],
    broker: tuple[str, redis.Redis],
    tmp_path: Any,
) -> None:
    url, client = broker
    status = KEYS.values(DataClass.USER_STATUS)
    with subscribing(settings, url, fast_path=True) as sub:
        # Given no worker at all: when a suspension is published
        publish(r, "users", "user-changed", {"userId": "u2", "status": "suspended"})
        # Then the subscriber applies it itself, and still sends its task (the durable path)
        wait_until(lambda: r.hget(status, "u2") == b"suspended", what="the fast path")
        wait_until(lambda: client.llen(EVENTS_URGENT_QUEUE) == 1, what="the urgent task")
        assert sub.subscriber.stats["fast_path_events"] == 1
        stamps = r.hgetall(KEYS.stamps(DataClass.USER_STATUS))
        # When a worker then runs the task
        with running(urgent_worker(env, url, tmp_path)):
            wait_until(lambda: client.llen(EVENTS_URGENT_QUEUE) == 0, timeout=20, what="task")
            wait_until(lambda: not client.hlen("unacked"), timeout=20, what="task done")
        # Then applying it again changed no critical field (its stamp included)
        assert r.hget(status, "u2") == b"suspended"
        assert r.hgetall(KEYS.stamps(DataClass.USER_STATUS)) == stamps


def test_a_revoke_applied_by_the_fast_path_never_outlives_a_later_grant(
    r: redis.Redis,
    settings: Any,
    env: dict[str, str],
    broker: tuple[str, redis.Redis],
    tmp_path: Any,
) -> None:
    url, client = broker
    status = KEYS.values(DataClass.USER_STATUS)
    with subscribing(settings, url, fast_path=True):
        # Given a suspension (applied at once by the subscriber) and then a re-activation
        publish(r, "users", "user-changed", {"userId": "u3", "status": "suspended"})
        wait_until(lambda: r.hget(status, "u3") == b"suspended", what="the fast path")
        publish(r, "users", "user-changed", {"userId": "u3", "status": "active"})
        wait_until(lambda: client.llen(EVENTS_QUEUE) == 1, what="the re-activation's task")
        # When the workers apply the re-activation first, and the suspension's task after it
        events_worker = Proc(
            [*worker_args("solo", 1), "-Q", EVENTS_QUEUE],
            {**env, "CELERY_BROKER_URL": url},
            tmp_path / "events-worker.log",
        )
        with running(events_worker):
            wait_until(lambda: r.hget(status, "u3") == b"active", timeout=20, what="re-activation")
        assert client.llen(EVENTS_URGENT_QUEUE) == 1
        with running(urgent_worker(env, url, tmp_path)):
            wait_until(lambda: client.llen(EVENTS_URGENT_QUEUE) == 0, timeout=20, what="task")
            wait_until(lambda: not client.hlen("unacked"), timeout=20, what="task done")
        # Then the later grant stands: the suspension applied again is older than it
        assert r.hget(status, "u3") == b"active"
