"""Sending work to Celery from the subscriber, by task name (no task code imported)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from config.amqp import TruncatingAMQP
from config.celery import (
    EVENTS_BULK_QUEUE,
    EVENTS_QUEUE,
    EVENTS_URGENT_QUEUE,
    PRELOAD_QUEUE,
    celery_config,
)
from config.settings import Settings


class CeleryEnqueuer:
    """Publishes apply_events and preload tasks with bounded publish retries."""

    def __init__(self, settings: Settings) -> None:
        self.app = Celery("crmcache-subscriber", amqp=TruncatingAMQP)
        self.app.conf.update(celery_config(settings))

    def apply_events(
        self, tenant: str, events: list[dict[str, Any]], bulk: bool = False, urgent: bool = False
    ) -> None:
        """One batch; `bulk` sends it to the bulk lane (a tenant that floods), `urgent` to the
        urgent lane (events that may revoke access)."""
        queue = EVENTS_URGENT_QUEUE if urgent else EVENTS_BULK_QUEUE if bulk else EVENTS_QUEUE
        self.app.send_task(
            "crmcache.apply_events", args=(tenant, events), queue=queue, routing_key=queue
        )

    def preload(self, tenant: str | None, reason: str) -> None:
        """Resync one tenant, or (tenant None) every tenant served."""
        if tenant is None:
            self.app.send_task(
                "crmcache.preload_all",
                kwargs={"reason": reason, "guard": False},
                queue=PRELOAD_QUEUE,
                routing_key=PRELOAD_QUEUE,
            )
        else:
            self.app.send_task(
                "crmcache.preload_tenant",
                args=(tenant,),
                kwargs={"reason": reason},
                queue=PRELOAD_QUEUE,
                routing_key=PRELOAD_QUEUE,
            )

    def close(self) -> None:
        self.app.close()
