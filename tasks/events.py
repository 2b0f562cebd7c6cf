"""apply_events: one tenant's micro-batch of stamped events, applied in one Redis round trip."""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from crmcache.errors import InvalidEvent, InvalidTenant, StoreUnavailable
from crmcache.events import Event
from crmcache.tenancy import validate_tenant
from tasks import resources
from tasks.app import app

logger = logging.getLogger(__name__)


def decode_batch(tenant: str, bodies: list[Any]) -> tuple[list[Event], list[tuple[str, Any]]]:
    """Split a task's events into valid ones and (reason, body) pairs to dead-letter."""
    events: list[Event] = []
    rejected: list[tuple[str, Any]] = []
    for body in bodies if isinstance(bodies, list) else [bodies]:
        try:
            events.append(Event.from_task(tenant, body))
        except InvalidEvent as exc:
            rejected.append((exc.reason, body))
    return events, rejected


@app.task(
    name="crmcache.apply_events",
    # Past its soft time limit (config/celery.py) a batch runs again: its writes are idempotent.
    autoretry_for=(StoreUnavailable, SoftTimeLimitExceeded),
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=100,
)
def apply_events(tenant: str, events: list[dict[str, Any]]) -> dict[str, int]:
    """Apply the batch; invalid entries are dead-lettered, the rest applied idempotently."""
    store = resources.store()
    try:
        validate_tenant(tenant)
    except InvalidTenant as exc:
        store.dead_letter(str(exc), json.dumps(events)[:65536], tenant=None)
        return {"rejected": len(events) if isinstance(events, list) else 1}
    valid, rejected = decode_batch(tenant, events)
    for reason, body in rejected:
        logger.warning("tenant=%s dead-lettering task event: %s", tenant, reason)
        store.dead_letter(reason, json.dumps(body, default=str), tenant=tenant)
    if not valid:
        return {"rejected": len(rejected)}
    result = store.apply_events(tenant, valid, dedupe_window_s=resources.settings().dedupe_window)
    logger.debug("tenant=%s applied %d events: %s", tenant, len(valid), result)
    return {
        "events": len(valid),
        "written": result.written,
        "stale": result.stale,
        "duplicates": result.duplicates,
        "rejected": len(rejected),
        "version": result.version,
    }
