"""The urgent lane: events that may revoke access reach the worker serving crm.events.urgent.

Real processes: the subscriber (in a thread, with its Celery producer) and a solo-pool worker
consuming only ``crm.events.urgent``, on a broker database of their own, so that the session's
worker (which consumes every queue of the usual broker) cannot apply anything here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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


@pytest.fixture
def urgent_pipeline(
    settings: Any, env: dict[str, str], broker: tuple[str, redis.Redis], tmp_path: Any
) -> Iterator[Any]:
    """A subscriber with the urgent lane on, and a worker serving only the urgent lane."""
    from consumer.ingest.subscriber import Subscriber
    from tasks.producer import CeleryEnqueuer

    url, _ = broker
    ours = settings.model_copy(update={"celery_broker_url": url, "urgent_lane": True})
    worker = Proc(
        [*worker_args("solo", 1), "-Q", EVENTS_URGENT_QUEUE],
        {**env, "CELERY_BROKER_URL": url},
        tmp_path / "worker.log",
    )
    enqueuer = CeleryEnqueuer(ours)
    subscriber = RunningSubscriber(Subscriber(ours, enqueuer)).start()
    with running(worker):
        wait_until(lambda: subscriber.subscriber.stats["subscribes"] >= 1, what="subscription")
        yield subscriber
        subscriber.stop()
        enqueuer.close()


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
