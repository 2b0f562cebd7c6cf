"""Asking for a preload of a tenant that was never loaded: its misses mean "unknown", not
"absent", until a preload marks it ready.

A reader that meets a not-ready tenant does not guess: it raises ``TenantNotReady`` (or answers
from its last-known-good copy, flagged stale) and asks the workers for a preload. Across every
reader process at most one request per ``CRM_PRELOAD_REQUEST_INTERVAL`` is enqueued (a
``SET NX PX`` guard in Redis).
"""

from __future__ import annotations

import logging
import time

from config.settings import Settings
from consumer.read.connection import ReaderConnection
from crmcache.errors import StoreUnavailable
from crmcache.keyspace import TenantKeys

logger = logging.getLogger(__name__)

PRELOAD_TASK = "crmcache.preload_tenant"
SETTLE_TASK = "crmcache.settle_credits"


def enqueue_preload(tenant: str) -> None:
    """Send ``crmcache.preload_tenant`` to the workers (Celery is imported only here, so a
    reader that never meets a not-ready tenant never loads it)."""
    from tasks.celery import app

    app.send_task(PRELOAD_TASK, args=[tenant], kwargs={"reason": "reader"})


def enqueue_settlement(tenant: str) -> bool:
    """Ask the workers to report the tenant's new deductions to the Wrapper. Best effort: the
    deduction is committed already and the beat sweep settles what a lost enqueue leaves."""
    try:
        from tasks.celery import app

        app.send_task(SETTLE_TASK, args=(tenant,), retry=False)
    except Exception as exc:  # kombu raises many types; none may fail a committed charge
        logger.warning("tenant=%s could not enqueue settle_credits: %r", tenant, exc)
        return False
    return True


class PreloadRequests:
    """Rate-limited preload requests for one tenant."""

    def __init__(self, tenant: str, settings: Settings, conn: ReaderConnection) -> None:
        self.tenant = tenant
        self.enabled = settings.reader_requests_preload
        self.interval = settings.preload_request_interval
        self.conn = conn
        self.key = TenantKeys.of(tenant).preload_request
        self._next = 0.0
        self.sent = 0

    def request(self) -> bool:
        """Ask for a preload unless one was asked for recently; True when this call asked."""
        now = time.monotonic()
        if not self.enabled or now < self._next:
            return False
        self._next = now + self.interval
        px = int(self.interval * 1000)
        try:
            claimed = self.conn.claim(self.key, int(time.time() * 1000), px)
        except StoreUnavailable:
            return False
        if not claimed:
            return False
        try:
            enqueue_preload(self.tenant)
        except Exception:  # a boundary: a broker problem must not turn a read into a crash
            logger.exception("tenant=%s could not enqueue a preload", self.tenant)
            return False
        self.sent += 1
        logger.warning("tenant=%s is not loaded: preload requested", self.tenant)
        return True
