"""The event pipeline with RabbitMQ as Celery's broker (the cache stays in Redis).

The end-to-end tests of ``test_pipeline`` run again here, unchanged, against a real
``celery -A tasks worker`` process consuming from a private RabbitMQ vhost and an in-process
subscriber publishing to it. Skipped, with the reason, when no RabbitMQ answers (see
``tests/rabbitmq.py``); ``.ci/run`` prints whether this run happened.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import EVENTS_QUEUE, celery_config
from consumer.ingest.subscriber import Subscriber
from crmcache import keyspace
from crmcache.keyspace import DataClass, TenantKeys
from ops.dev.redis_server import RedisServer
from tasks.producer import CeleryEnqueuer
from tests import test_pipeline as pipeline
from tests.conftest import RunningSubscriber, wait_until
from tests.processes import Proc, worker_args
from tests.rabbitmq import PrivateVhost, RabbitMQUnavailable, report, required
from tests.tcp_proxy import TcpProxy
from tests.test_chaos import cost_json, stamped_bodies


@pytest.fixture(scope="module")
def rabbitmq() -> Iterator[PrivateVhost]:
    try:
        vhost = PrivateVhost()
    except RabbitMQUnavailable as exc:
        report(f"RabbitMQ run: SKIPPED ({exc})")
        if required():
            pytest.fail(f"CRM_REQUIRE_RABBITMQ is set but {exc}")
        pytest.skip(f"RabbitMQ run skipped: {exc}")
    report(f"RabbitMQ run: happened (vhost {vhost.name} on {vhost.host}:{vhost.port})")
    yield vhost
    vhost.delete()


def ping_app(settings: Any, broker_url: str) -> Celery:
    app = Celery("rabbitmq-test")
    app.conf.update(celery_config(settings.model_copy(update={"celery_broker_url": broker_url})))
    return app


@pytest.fixture(scope="module")
def amqp_worker(
    rabbitmq: PrivateVhost, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """A real worker process consuming every crmcache queue from the private vhost."""
    from config.settings import get_settings

    log = tmp_path_factory.mktemp("rabbitmq") / "worker.log"
    worker = Proc(
        worker_args(concurrency=4),
        {**os.environ, "CELERY_BROKER_URL": rabbitmq.url, "CRM_LOG_LEVEL": "INFO"},
        log,
    )
    app = ping_app(get_settings(), rabbitmq.url)
    try:
        wait_until(
            lambda: app.control.ping(timeout=0.5),
            timeout=40,
            what=lambda: f"the worker answering over RabbitMQ\n{worker.output()[-3000:]}",
        )
        yield worker
    finally:
        app.close()
        worker.stop()


@pytest.fixture
def subscriber(
    settings: Any, rabbitmq: PrivateVhost, amqp_worker: Proc, r: redis.Redis
) -> Iterator[RunningSubscriber]:
    """Overrides conftest's: the subscriber publishes its tasks to RabbitMQ."""
    amqp_settings = settings.model_copy(update={"celery_broker_url": rabbitmq.url})
    enqueuer = CeleryEnqueuer(amqp_settings)
    running = RunningSubscriber(Subscriber(amqp_settings, enqueuer)).start()
    try:
        wait_until(lambda: running.subscriber.stats["subscribes"] >= 1, what="subscription")
        yield running
    finally:
        running.stop()
        enqueuer.close()


def test_the_subscriber_really_publishes_to_rabbitmq(
    r: redis.Redis, subscriber: RunningSubscriber, amqp_worker: Proc
) -> None:
    # When an event is published
    pipeline.publish(
        r, "credit-configs", "credit-config-changed", {"operationCode": "q", "newValue": 3}
    )
    # Then it is applied by a task that the worker process (which consumes only from RabbitMQ)
    # received
    wait_until(pipeline.visible(r, pipeline.DataClass.CREDIT_COSTS, "q", b"3"), what="cost 3")
    wait_until(
        lambda: "crmcache.apply_events[" in amqp_worker.output(),
        what=lambda: f"the worker's task log\n{amqp_worker.output()[-2000:]}",
    )


# The pipeline's end-to-end tests, collected again here with this module's fixtures.
test_credit_config_changed_and_deleted = pipeline.test_credit_config_changed_and_deleted
test_credit_cost_of_zero_is_a_configured_cost = (
    pipeline.test_credit_cost_of_zero_is_a_configured_cost
)
test_role_changed_and_deleted = pipeline.test_role_changed_and_deleted
test_user_changed_and_deleted_update_access_and_invalidate_profile = (
    pipeline.test_user_changed_and_deleted_update_access_and_invalidate_profile
)
test_hierarchy_changed_invalidates_named_entries = (
    pipeline.test_hierarchy_changed_invalidates_named_entries
)
test_config_changed_and_deleted = pipeline.test_config_changed_and_deleted
test_credit_top_up_is_added_once_to_a_cached_balance = (
    pipeline.test_credit_top_up_is_added_once_to_a_cached_balance
)
test_events_of_one_burst_are_batched_into_few_tasks = (
    pipeline.test_events_of_one_burst_are_batched_into_few_tasks
)


@pytest.mark.slow
def test_a_killed_worker_host_gets_its_batch_redelivered_at_once_and_applied_once(
    r: redis.Redis,
    env: dict[str, str],
    settings: Any,
    rabbitmq: PrivateVhost,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a worker (its own vhost) whose replies from the cache can be held in flight
    vhost = PrivateVhost()
    proxy = TcpProxy(redis_server.port)
    app = ping_app(settings, vhost.url)
    keys = TenantKeys.of("amqp-kill")
    r.set(keys.balance("u1"), "10")
    r.script_load(keyspace.lua_source("apply_events"))  # so the batch is one EVALSHA
    proc_env = {**os.environ, "CELERY_BROKER_URL": vhost.url, "CRM_LOG_LEVEL": "INFO"}
    first = Proc(
        worker_args(pool="prefork", concurrency=1),
        {**proc_env, "REDIS_URL": proxy.url},
        tmp_path / "first.log",
    )
    second: Proc | None = None
    try:
        wait_until(lambda: app.control.ping(timeout=0.5), timeout=40, what="the first worker")
        # When a batch (a top-up and a cost) is applied in Redis but its reply is held, and the
        # worker's whole host dies (main process and child, no goodbye)
        proxy.hold("down")
        batch = stamped_bodies(
            "amqp-kill",
            1,
            [
                '{"eventType": "user-credits-changed", "data": {"userId": "u1", "delta": 5}}',
                cost_json("c", 2),
            ],
        )
        task_id = app.send_task(
            "crmcache.apply_events", args=("amqp-kill", batch), queue=EVENTS_QUEUE
        ).id
        wait_until(lambda: proxy.held_bytes > 0, timeout=20, what="the reply held in flight")
        os.killpg(first.pid, signal.SIGKILL)
        first.stop()
        proxy.release()
        # Then RabbitMQ hands the unacknowledged batch to the next worker at once (no
        # visibility timeout to wait for: CRM_VISIBILITY_TIMEOUT is 60 s here), applied once
        second = Proc(
            worker_args(), {**proc_env, "REDIS_URL": env["REDIS_URL"]}, tmp_path / "second.log"
        )
        started = time.monotonic()
        wait_until(
            lambda: f"apply_events[{task_id}] succeeded" in second.output(),  # type: ignore[union-attr]
            timeout=40,
            what=lambda: f"the redelivery\n{second.output()[-3000:]}",  # type: ignore[union-attr]
        )
        assert time.monotonic() - started < settings.visibility_timeout / 2
        assert r.get(keys.balance("u1")) == b"15"
        assert r.hget(keys.values(DataClass.CREDIT_COSTS), "c") == b"2"
    finally:
        if second is not None:
            second.stop()
        first.stop()
        app.close()
        proxy.close()
        vhost.delete()
