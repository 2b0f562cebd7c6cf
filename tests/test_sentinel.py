"""crmcache behind Redis Sentinel: a master, a replica and a Sentinel started by the harness;
the cache and the Celery broker both named by ``redis+sentinel://``. The master is killed: the
subscriber, the worker and a reader carry on against the promoted replica, and the resync that
follows the subscriber's reconnect repairs what the failover lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.settings import load_settings
from consumer.read.client import SmartCRMConsumer
from crmcache.keyspace import DataClass, TenantKeys
from crmcache.redis_client import make_redis
from tests.conftest import wait_until
from tests.processes import Proc, running, subscriber_args, worker_args
from tests.redis_topologies import SentinelHarness

ACME = TenantKeys.of("acme")


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelHarness]:
    harness = SentinelHarness()
    try:
        harness.start()
    except Exception as exc:  # noqa: BLE001 - the reason goes into the failure
        pytest.fail(f"cannot start Redis with a Sentinel for the tests: {exc}")
    yield harness
    harness.stop()


def cost(client: redis.Redis, op: str) -> bytes | None:
    """The cached cost; None while the test's own client finds no master (mid-failover)."""
    try:
        return client.hget(ACME.values(DataClass.CREDIT_COSTS), op)
    except redis.RedisError:
        return None


def publish_cost(client: redis.Redis, op: str, value: int) -> int:
    body = {"eventType": "credit-config-changed", "data": {"operationCode": op, "newValue": value}}
    try:
        return int(client.publish(ACME.channel("credit-configs"), json.dumps(body)))
    except redis.RedisError:
        return 0


@pytest.mark.slow
def test_after_a_failover_everything_carries_on_and_the_resync_repairs_the_loss(
    env: dict[str, str], wrapper: Any, sentinel_setup: SentinelHarness, tmp_path: Path
) -> None:
    harness = sentinel_setup
    urls = {"REDIS_URL": harness.url(0), "CELERY_BROKER_URL": harness.url(1)}
    proc_env = {**os.environ, **urls, "CRM_LOG_LEVEL": "INFO"}
    worker = Proc(worker_args(concurrency=2), proc_env, tmp_path / "worker.log")
    subscriber = Proc(subscriber_args(), proc_env, tmp_path / "subscriber.log")
    cache = make_redis(harness.url(0), socket_timeout=2)
    reader = SmartCRMConsumer("acme", load_settings(**urls))

    def logs() -> str:
        return f"\nsubscriber:\n{subscriber.output()[-2000:]}\nworker:\n{worker.output()[-2000:]}"

    try:
        with running(worker, subscriber):
            # Given the pipeline running through the Sentinel's master, acme preloaded
            wait_until(
                lambda: cache.hget(ACME.meta, "ready") == b"1",
                timeout=40,
                what=lambda: f"the first preload{logs()}",
            )
            reader.initialize()
            assert reader.get_credit_cost("crm.leads.create") == 1
            wait_until(lambda: publish_cost(cache, "crm.before", 2) >= 1, what="listening")
            wait_until(lambda: cost(cache, "crm.before") == b"2", what="an event applied")
            # When the Wrapper changes a cost whose event is lost, and the master dies
            wrapper.set_credit_cost("acme", "crm.leads.create", 9, publish=False)
            harness.kill_master()
            wait_until(
                lambda: harness.master_port() == harness.replica.port,
                timeout=30,
                what="the Sentinel to promote the replica",
            )
            # Then the subscriber reconnects to the new master and its resync repairs the loss
            wait_until(
                lambda: cost(cache, "crm.leads.create") == b"9",
                timeout=60,
                what=lambda: f"the resync after the failover{logs()}",
            )
            # And events flow again end to end, through the new master and the new broker
            wait_until(lambda: publish_cost(cache, "crm.after", 3) >= 1, what="listening again")
            wait_until(
                lambda: cost(cache, "crm.after") == b"3",
                timeout=30,
                what=lambda: f"an event after the failover{logs()}",
            )
            # And the reader answers from the new master
            wait_until(
                lambda: reader.get_credit_cost("crm.leads.create") == 9,
                timeout=20,
                what="the reader seeing the repaired cost",
            )
            assert reader.check_permission("user-456", "crm.leads.create")
            assert harness.replica.port == int(cache.connection_pool.get_master_address()[1])  # type: ignore[attr-defined]
    finally:
        reader.shutdown()
        cache.close()
