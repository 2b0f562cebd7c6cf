"""The event pipeline with RabbitMQ as Celery's broker (the cache stays in Redis).

The end-to-end tests of ``test_pipeline`` run again here, unchanged, against a real
``celery -A tasks worker`` process consuming from a private RabbitMQ vhost and an in-process
subscriber publishing to it. Skipped, with the reason, when no RabbitMQ answers (see
``tests/rabbitmq.py``); ``.ci/run`` prints whether this run happened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from config.celery import celery_config
from consumer.enqueue import CeleryEnqueuer
from consumer.subscriber import Subscriber
from tests import test_pipeline as pipeline
from tests.conftest import RunningSubscriber, wait_until
from tests.processes import Proc, worker_args
from tests.rabbitmq import PrivateVhost, RabbitMQUnavailable, report, required


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
