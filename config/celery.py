"""Celery's configuration, derived from the one Settings object."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from config.redis_urls import kombu_broker
from config.settings import Settings

EVENTS_QUEUE = "crm.events"
EVENTS_BULK_QUEUE = "crm.events.bulk"
"""The bulk lane: batches of tenants that flood (consumer/ingest/lanes.py). Workers consume both."""
EVENTS_URGENT_QUEUE = "crm.events.urgent"
"""The urgent lane: batches of events that may revoke access (consumer/ingest/lanes.py). Every
worker consumes it; a dedicated solo-pool worker (``-P solo -Q crm.events.urgent``) takes them
without the prefork hop or a wait behind other batches."""
PRELOAD_QUEUE = "crm.preload"
CREDITS_QUEUE = "crm.credits"
METRICS_QUEUE = "crm.metrics"
QUEUES = (
    EVENTS_URGENT_QUEUE,
    EVENTS_QUEUE,
    EVENTS_BULK_QUEUE,
    PRELOAD_QUEUE,
    CREDITS_QUEUE,
    METRICS_QUEUE,
)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Lowercase Celery settings: JSON only, late acks, no result backend, bounded publishing."""
    # redis+sentinel:// becomes kombu's sentinel:// form plus master_name (redis_urls.py).
    broker_url, broker_extras = kombu_broker(settings.broker_url)
    return {
        "broker_url": broker_url,
        # Celery prefers CELERY_BROKER_URL from the environment over broker_url; the read and
        # write URLs win over both, so the Settings object (which reads that variable too)
        # stays the one source: a producer built from other Settings uses their broker.
        "broker_read_url": broker_url,
        "broker_write_url": broker_url,
        **_SERIALISATION,
        **_delivery(settings),
        # Redis transport: an unacknowledged message is redelivered after this many seconds; it
        # must exceed every task's time limit or a running task would be delivered twice.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "socket_timeout": settings.redis_socket_timeout,
            "socket_connect_timeout": settings.redis_socket_timeout,
            "health_check_interval": 10,
            **broker_extras,
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": settings.publish_max_retries,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 1.0,
        },
        **_routing(),
        # Task events cost a PUBLISH per task state; Flower switches workers' events on while it
        # watches (its --enable-events default), so nobody pays for them unobserved.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "beat_schedule": _beat_schedule(settings),
        "timezone": "UTC",
    }


_SERIALISATION: dict[str, Any] = {
    "result_backend": None,
    "task_ignore_result": True,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "event_serializer": "json",
}


def _delivery(settings: Settings) -> dict[str, Any]:
    """At-least-once delivery and the time limits that bound it."""
    return {
        # At-least-once: a task is acknowledged after it ran; a worker killed mid-task gets its
        # message back. The writes are idempotent, so running twice is safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 4,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": 10,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": max(settings.task_time_limit - 5, 1),
        # A batch takes milliseconds: a hung pool process must not hold it for the task-wide
        # limit. The soft limit raises inside the task (retried, tasks/events.py); past the hard
        # limit the process is killed and, instead of being acknowledged as failed, the batch
        # is requeued. tasks/pool_watchdog.py enforces it on a process that hangs before it
        # even reports the task started (Celery times a task only from then on).
        "task_annotations": {
            "crmcache.apply_events": {
                "soft_time_limit": settings.apply_soft_time_limit,
                "time_limit": settings.apply_time_limit,
                "acks_on_timeout": False,
            }
        },
    }


def _routing() -> dict[str, Any]:
    """One direct exchange, one queue per kind of work, routes by task name."""
    exchange = Exchange("crm", type="direct")

    def to(queue: str) -> dict[str, str]:
        return {"queue": queue, "routing_key": queue}

    return {
        "task_queues": tuple(Queue(name, exchange, routing_key=name) for name in QUEUES),
        "task_default_queue": EVENTS_QUEUE,
        "task_default_exchange": "crm",
        "task_default_routing_key": EVENTS_QUEUE,
        "task_routes": {
            "crmcache.apply_events": to(EVENTS_QUEUE),
            "crmcache.preload_*": to(PRELOAD_QUEUE),
            "crmcache.settle_*": to(CREDITS_QUEUE),
            "crmcache.reconcile_*": to(CREDITS_QUEUE),
            "crmcache.publish_metrics": to(METRICS_QUEUE),
        },
    }


def _beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The periodic tasks beat sends."""

    def every(task: str, seconds: float) -> dict[str, Any]:
        return {"task": task, "schedule": seconds}

    return {
        "preload-all-tenants": every("crmcache.preload_all", settings.preload_interval),
        "publish-metrics": every("crmcache.publish_metrics", settings.metrics_publish_interval),
        # A killed worker's half-sent deductions and lost settle tasks: see settlement.py.
        "settle-credits-sweep": every("crmcache.settle_all", settings.settle_sweep_interval),
        # Holds nobody finished, leads whose charge is not confirmed: crmcache/reconcile.py.
        "reconcile-credits": every("crmcache.reconcile_credits", settings.reconcile_interval),
    }
