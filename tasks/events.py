"""apply_events: one tenant's micro-batch of stamped events, applied in one Redis round trip."""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from crmcache.errors import InvalidEvent, InvalidTenant, StoreUnavailable
from crmcache.event_validation import EventLimits
from crmcache.events import Event, unexpected
from crmcache.log_once import ReasonLog
from crmcache.tenancy import validate_tenant
from tasks import resources
from tasks.celery import app

logger = logging.getLogger(__name__)


_logged = ReasonLog()


def decode_batch(
    tenant: str, bodies: list[Any], limits: EventLimits
) -> tuple[list[Event], list[tuple[str, Any]]]:
    """Split a task's events into valid ones and (reason, body) pairs to dead-letter."""
    events: list[Event] = []
    rejected: list[tuple[str, Any]] = []
    for body in bodies if isinstance(bodies, list) else [bodies]:
        try:
            events.append(Event.from_task(tenant, body, limits))
        except InvalidEvent as exc:
            rejected.append((exc.reason, body))
            _log_once(tenant, exc.reason, exc.__cause__)
    return events, rejected


def _log_once(tenant: str, reason: str, cause: BaseException | None) -> None:
    """Each reason once per process (with the traceback of an unexpected exception)."""
    if _logged.first(reason):
        level = logging.WARNING if cause is None else logging.ERROR
        msg = "tenant=%s dead-lettering task event: %s (logged once per reason)"
        logger.log(level, msg, tenant, reason, exc_info=cause)


def _raw(body: Any) -> str:
    """A rejected body as JSON for the dead-letter stream, whatever it holds."""
    try:
        return json.dumps(body, default=str)[: 1024 * 1024]
    except (TypeError, ValueError, RecursionError):
        return repr(body)[: 1024 * 1024]


@app.task(
    name="crmcache.apply_events",
    # Past its soft time limit (config/celery.py) a batch runs again: its writes are idempotent.
    autoretry_for=(StoreUnavailable, SoftTimeLimitExceeded),
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=100,
)
def apply_events(tenant: str, events: list[dict[str, Any]]) -> dict[str, int | str]:
    """Apply the batch; invalid entries are dead-lettered, the rest applied idempotently."""
    store = resources.store()
    settings = resources.settings()
    try:
        validate_tenant(tenant)
    except InvalidTenant as exc:
        store.dead_letter(str(exc), _raw(events)[:65536], tenant=None)
        return {"rejected": len(events) if isinstance(events, list) else 1}
    valid, rejected = decode_batch(tenant, events, EventLimits.of(settings))
    for reason, body in rejected:
        store.dead_letter(reason, _raw(body), tenant=tenant)
    if not valid:
        return {"rejected": len(rejected)}
    result = store.apply_events(tenant, valid, dedupe_window_s=settings.dedupe_window)
    for event, error in result.rejected:
        reason = unexpected("planning its writes", error)
        _log_once(tenant, reason, error)
        store.dead_letter(reason, _raw(event.to_task()), tenant=tenant)
    logger.debug("tenant=%s applied %d events: %s", tenant, len(valid), result)
    return {
        "events": len(valid) - len(result.rejected),
        "written": result.written,
        "stale": result.stale,
        "duplicates": result.duplicates,
        "rejected": len(rejected) + len(result.rejected),
        "version": result.version,
        "token": result.token,
    }
